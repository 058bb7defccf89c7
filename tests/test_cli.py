"""`sftmask demo` and `python -m sftmask demo` run offline on the embedded data."""

from __future__ import annotations

import re
import subprocess
import sys

import sftmask
from sftmask._data import CHATML_INSTRUCTIONS, CHATML_RESPONSE, demo_tokenizer_dir, render_chatml, sample_chats


def test_demo_output():
    out = subprocess.run(
        [sys.executable, "-m", "sftmask", "demo"], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    found = re.search(r"sftmask \(exact byte spans\)\s+(\d+)/(\d+)", out)
    trl = re.search(r"TRL 0.19.1 \(compat='trl'\)\s+(\d+)/(\d+)", out)
    assert found and trl
    assert found.group(1) == found.group(2) == str(len(sample_chats()))
    assert int(trl.group(1)) < int(trl.group(2)), "the sample set shows rows TRL-style matching loses"
    assert "M tokens/s" in out and "trained text:" in out and "[[" in out


def test_demo_tokenizer_is_real_qwen():
    folder = demo_tokenizer_dir()
    enc = sftmask.Encoder.from_json((folder / "tokenizer.json").read_text())
    # Published Qwen2 ids (docs/test-tokenizers.md).
    ids = enc.encode_batch(["<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"], add_special_tokens=False)
    assert ids == [[151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198]]


def test_sample_chats_every_assistant_turn_is_trained():
    folder = demo_tokenizer_dir()
    collator = sftmask.DataCollatorForCompletionOnlyLM(CHATML_RESPONSE, CHATML_INSTRUCTIONS, tokenizer=folder)
    enc = sftmask.Encoder.from_json((folder / "tokenizer.json").read_text())
    for chat in sample_chats():
        text = render_chatml(chat["messages"])
        ids = enc.encode_batch([text], add_special_tokens=False)[0]
        trained = collator.trained_text(ids)
        answers = [m["content"] for m in chat["messages"] if m["role"] == "assistant"]
        assert len(trained) == len(answers)
        for got, answer in zip(trained, answers):
            # A straddling token may carry the header's last newline along.
            assert got.endswith(answer + "<|im_end|>\n")
            assert got[: -len(answer + "<|im_end|>\n")] in ("", "\n")
