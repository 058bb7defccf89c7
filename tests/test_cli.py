"""`sftmask demo` and `python -m sftmask demo` run offline on the embedded data."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import warnings

import pytest

import sftmask
from sftmask._data import CHATML_INSTRUCTIONS, CHATML_RESPONSE, demo_tokenizer_dir, render_chatml, sample_chats
from sftmask.cli import main


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


# ---------------------------------------------------------------------------------------------
# What a new user hit (issue 9). Truth: TRL 0.19.1 itself, the sample chats, and the numbers the
# demo prints next to each other.


@pytest.fixture(scope="module")
def demo_out():
    return subprocess.run(
        [sys.executable, "-m", "sftmask", "demo"], capture_output=True, text=True, check=True, timeout=120
    ).stdout


def _trl_untrained_and_warnings():
    """Rows TRL 0.19.1 leaves wholly untrained, rows it warns about, and its warnings in all."""
    trl = pytest.importorskip("trl")
    from transformers import PreTrainedTokenizerFast

    folder = demo_tokenizer_dir()
    tok = PreTrainedTokenizerFast.from_pretrained(str(folder))
    collator = trl.DataCollatorForCompletionOnlyLM(CHATML_RESPONSE, CHATML_INSTRUCTIONS[0], tokenizer=tok)
    enc = sftmask.Encoder.from_json((folder / "tokenizer.json").read_text())
    untrained, warned, total = set(), set(), 0
    for i, chat in enumerate(sample_chats()):
        ids = enc.encode_batch([render_chatml(chat["messages"])], add_special_tokens=False)[0]
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            labels = collator([{"input_ids": ids}])["labels"][0]
        ours = [w for w in seen if "This class is deprecated" not in str(w.message)]
        if not (labels != -100).any():
            untrained.add(i)
        if ours:
            warned.add(i)
        total += len(ours)
    return untrained, warned, total


def test_demo_reports_the_rows_trl_leaves_untrained_and_its_warnings(demo_out):
    untrained, warned, total = _trl_untrained_and_warnings()
    n = len(sample_chats())
    line = re.search(
        r"TRL 0.19.1 \(compat='trl'\)\s+(\d+)/(\d+)\s+\((\d+) rows wholly untrained; "
        r"TRL warns on (\d+) of them, (\d+) warnings in all\)",
        demo_out,
    )
    assert line, demo_out
    assert [int(g) for g in line.groups()] == [n - len(untrained), n, len(untrained), len(warned & untrained), total]
    assert len(untrained) > len(warned & untrained) > 0, "the sample set has rows TRL loses without a warning"
    assert "silently" not in demo_out


def test_demo_ratio_says_what_it_is(demo_out):
    m = re.search(
        r"throughput \(batch 8\): ([\d.]+) M tokens/s; copying .* alone: ([\d.]+) M tokens/s; "
        r"collating takes ([\d.]+)x the copy's time",
        demo_out,
    )
    assert m, demo_out
    collate, copy, ratio = map(float, m.groups())
    # Time ratio = inverse rate ratio (rates are rounded to 0.1 M tokens/s).
    assert ratio == pytest.approx(copy / collate, rel=0.1, abs=0.05)


def test_demo_row_out_of_range_is_one_line_and_exit_code_2():
    n = len(sample_chats())
    for row in ("99", "0", "-1"):
        done = subprocess.run(
            [sys.executable, "-m", "sftmask", "demo", "--row", row], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 2 and done.stdout == "" and "Traceback" not in done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sftmask demo: error: ") and f"1 to {n}" in lines[0]


def test_demo_row_counts_from_1(capsys):
    assert main(["demo", "--row", "1"]) == 0
    out = capsys.readouterr().out
    shown = out.split("\nrow 1 (", 1)[1].split("\n", 1)[1].rsplit("\ntrained text:", 1)[0]
    assert shown.replace("[[", "").replace("]]", "") == render_chatml(sample_chats()[0]["messages"])


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_demo_legend_matches_what_is_shown(monkeypatch, capsys):
    assert main(["demo"]) == 0
    header = re.search(r"^row \d+ \((.*)\):$", capsys.readouterr().out, re.M).group(1)
    assert "[[…]] = trained" in header
    monkeypatch.delenv("NO_COLOR", raising=False)
    tty = _Tty()
    monkeypatch.setattr(sys, "stdout", tty)
    assert main(["demo"]) == 0
    out = tty.getvalue()
    header = re.search(r"^row \d+ \((.*)\):$", out, re.M).group(1)
    assert "\x1b[1;32m" in out.split(header, 1)[1], "the row is shown in colour"
    assert "[[" not in header and "green\x1b[0m = trained" in header and "dim\x1b[0m = masked" in header
