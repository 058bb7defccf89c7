"""Writes the HTML view of one masked example (docs/render_example.html) for the screenshot.

Run by docs/render_screenshot.sh. Uses the Qwen2.5 tokenizer embedded in the package and a
two-turn ChatML chat with HTML-looking text, a tab, a trailing space and an emoji (so escaping,
whitespace markers and split UTF-8 bytes all show), labelled by the collator and rendered from
the batch with ``sftmask.render(input_ids, tokenizer, labels)``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import sftmask
from sftmask._data import CHATML_INSTRUCTIONS, CHATML_RESPONSE, demo_tokenizer_dir, render_chatml

out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/render_example.html")
folder = demo_tokenizer_dir()
chat = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": 'Escape <b>bold</b> & "quotes" in HTML?'},
    {"role": "assistant", "content": "Use &lt;b&gt; for <b>.\n\tIndented line, trailing space "},
    {"role": "user", "content": "And an emoji?"},
    {"role": "assistant", "content": "\nSure: 🦀 (a crab)."},
]
text = render_chatml(chat)
encoder = sftmask.Encoder.from_json((folder / "tokenizer.json").read_text())
ids = encoder.encode_batch([text], add_special_tokens=False)[0]
collator = sftmask.DataCollatorForCompletionOnlyLM(
    CHATML_RESPONSE, CHATML_INSTRUCTIONS, tokenizer=folder, return_tensors="np"
)
batch = collator([ids])
view = sftmask.render(batch["input_ids"][0], folder, batch["labels"][0])
page = (
    "<!doctype html><html><head><meta charset='utf-8'><title>sftmask render</title></head>"
    "<body style='margin:16px;max-width:900px'>"
    f"<h3 style='font-family:sans-serif'>sftmask.render: {view!r}</h3>{view.html()}</body></html>"
)
out.write_text(page, encoding="utf-8")
print(out)
