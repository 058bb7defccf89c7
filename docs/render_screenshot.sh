#!/usr/bin/env bash
# Renders sftmask's HTML mask view in headless Chromium and saves a PNG screenshot.
#   bash docs/render_screenshot.sh [out.png]      (needs: apt-get install -y chromium)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
png="${1:-$here/render_example.png}"
html="$(mktemp --suffix=.html)"
trap 'rm -f "$html"' EXIT
python "$here/render_screenshot.py" "$html" >/dev/null
chrome="$(command -v chromium || command -v chromium-browser || command -v google-chrome)"
# --no-sandbox: root in a container has no user namespaces for Chromium's sandbox.
"$chrome" --headless --no-sandbox --disable-gpu --hide-scrollbars --force-device-scale-factor=1 \
  --window-size=940,520 --screenshot="$png" "file://$html" 2>/dev/null
echo "$png"
