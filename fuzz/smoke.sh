#!/usr/bin/env bash
# Short fuzz run for CI (about 50 s of fuzzing, plus the build the first time).
#
# With a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`): libFuzzer with coverage
# guidance on both targets, `collate` starting from the committed seed corpus
# (fuzz/corpus-seed/collate/, read only; a big local corpus in fuzz/corpus/ would take longer
# than the budget just to load; long runs use it, see docs/fuzzing.md). Without them: the stable
# fallback (tests/stable_fuzz.rs), which replays the seed corpus (failing if it is missing or
# empty) and then runs seeded pseudo-random inputs through the same checks.
# Either way a crash, panic or violated invariant fails the script, and libFuzzer leaves the input
# in fuzz/artifacts/<target>/ (reproduce: cargo +nightly fuzz run <target> <file>).
#
#   bash fuzz/smoke.sh                  # auto
#   SFTMASK_FUZZ_SECONDS=20 bash fuzz/smoke.sh
#   SFTMASK_FUZZ_MODE=stable bash fuzz/smoke.sh
set -euo pipefail
cd "$(dirname "$0")"
budget=${SFTMASK_FUZZ_SECONDS:-50}
mode=${SFTMASK_FUZZ_MODE:-auto}
if [ "$mode" = auto ]; then
    if command -v cargo-fuzz >/dev/null 2>&1 && rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
        mode=libfuzzer
    else
        mode=stable
    fi
fi
echo "fuzz smoke: $mode, ${budget}s"
if [ "$mode" = libfuzzer ]; then
    # -a: debug assertions and overflow checks on, as in the recorded runs (docs/fuzzing.md).
    cargo +nightly fuzz build -a collate
    cargo +nightly fuzz build -a vocab_json
    structured=$((budget * 4 / 5))
    raw=$((budget - structured))
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    mkdir -p "$scratch/collate" "$scratch/vocab_json"
    cargo +nightly fuzz run -a collate "$scratch/collate" corpus-seed/collate -- \
        -max_total_time="$structured" -max_len=2048 -len_control=0 -rss_limit_mb=4096 -timeout=60 -print_final_stats=1
    cargo +nightly fuzz run -a vocab_json "$scratch/vocab_json" -- \
        -max_total_time="$raw" -dict=tokenizer.dict -max_len=4096 -rss_limit_mb=4096 -timeout=60 -print_final_stats=1
else
    cargo test --no-default-features --no-run
    SFTMASK_FUZZ_SECONDS=$budget SFTMASK_FUZZ_ITERS=100000000 \
        cargo test --no-default-features -- --nocapture
fi
