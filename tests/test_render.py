"""`sftmask.render(ids, tokenizer, labels)`, `MaskView` (HTML, ANSI, plain) and `collator.render`.

Truth: ground-truth labels (tests/ground_truth.py), the tokenizer's own per-token decode and
offsets, TRL 0.19.1's labels, and the DOM that a real browser (headless Chromium) builds from the
HTML."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

import sftmask
from build_tokenizers import tokenizer_path
from chat_formats import CHATML, LLAMA3, render
from conftest import load_hf_tokenizer, load_tokenizer
from ground_truth import truth_for

CHAT = [
    {"role": "system", "content": "Be <terse> & 'exact'."},
    {"role": "user", "content": "What is\t2 + 2?  "},
    {"role": "assistant", "content": "\n4 <b>bold</b> &amp; done "},
    {"role": "user", "content": "An emoji?"},
    {"role": "assistant", "content": "Sure: 🦀\n\nok"},
]
MARKERS = {"\u00b7": " ", "\u21b5": "\n", "\u2192": "\t", "\u240d": "\r"}


def _truth_runs(tok, text, fmt):
    """Ids, ground-truth labels, and the trained runs as (start, end) spans of the original text."""
    ids, labels = truth_for(tok, text, fmt)
    offsets = tok.encode(text, add_special_tokens=False).offsets
    spans, start, end = [], None, None
    for (s, e), label in zip(offsets, labels):
        if label != -100:
            start = s if start is None else start
            end = e
        elif start is not None:
            spans.append((start, end))
            start = None
    if start is not None:
        spans.append((start, end))
    return ids, labels, spans


def _runs(text, spans):
    return [text[s:e] for s, e in spans]


@pytest.mark.parametrize(("family", "fmt"), [("llama3", LLAMA3), ("qwen2", CHATML)])
def test_render_given_labels_matches_ground_truth(family, fmt):
    tok = load_tokenizer(family)
    text = render(fmt, CHAT)
    ids, labels, spans = _truth_runs(tok, text, fmt)
    view = sftmask.render(ids, tok, labels)
    assert [t.id for t in view.tokens] == ids
    assert [t.trained for t in view.tokens] == [lab != -100 for lab in labels]
    assert view.trained_text() == _runs(text, spans)
    # Every token shows what the tokenizer itself decodes it to (complete characters).
    for t in view.tokens:
        decoded = tok.decode([t.id], skip_special_tokens=False)
        if "\ufffd" not in decoded:
            assert t.text == decoded
    # Special tokens are the tokenizer's added tokens.
    added = {a["id"] for a in json.loads(tokenizer_path(family).read_text())["added_tokens"]}
    assert {t.id for t in view.tokens if t.special} == added & set(ids)


@pytest.mark.filterwarnings("ignore:This class is deprecated", "ignore:Could not find response key")
def test_render_accepts_any_labels_from_trl():
    trl = pytest.importorskip("trl")
    tok = load_hf_tokenizer("qwen2")
    rows = [load_tokenizer("qwen2").encode(render(CHATML, CHAT[:k])).ids for k in (3, 5)]
    collator = trl.DataCollatorForCompletionOnlyLM(CHATML.response, tokenizer=tok)
    batch = collator([{"input_ids": r} for r in rows])
    for i, row in enumerate(rows):
        keep = batch["attention_mask"][i].bool()
        view = sftmask.render(batch["input_ids"][i], tok, batch["labels"][i])
        # No attention mask given: padding is found by position and left out, as TRL's mask says.
        assert [t.id for t in view.tokens] == row
        assert [t.trained for t in view.tokens] == (batch["labels"][i][keep] != -100).tolist()
        # With the attention mask, padding is left out too.
        example = {k: batch[k][i] for k in ("input_ids", "labels", "attention_mask")}
        row_view = sftmask.render(example, tok)
        assert [t.id for t in row_view.tokens] == row


def test_render_marks_labels_that_are_not_the_ids():
    tok = load_tokenizer("gpt2")
    ids = tok.encode("Hello world and more").ids
    shifted = [*ids[1:], -100]  # labels shifted by one, as some pipelines store them
    view = sftmask.render(ids, tok, shifted)
    assert "label \u2260 input id" in view.html()
    assert "label \u2260 input id" not in sftmask.render(ids, tok, ids).html()


def test_render_errors():
    tok = load_tokenizer("gpt2")
    with pytest.raises(ValueError, match="2 entries for 3 tokens"):
        sftmask.render([1, 2, 3], tok, [1, 2])
    with pytest.raises(ValueError, match="no labels"):
        sftmask.render([1, 2, 3], tok)
    with pytest.raises(ValueError, match="one row"):
        sftmask.render([[1, 2]], tok, [[1, 2]])
    with pytest.raises(ValueError, match="not in the vocabulary"):
        sftmask.render([10**7], tok, [-100])


class _Tokens(HTMLParser):
    """The token boxes of a MaskView's HTML: (classes, title, shown text)."""

    def __init__(self):
        super().__init__()
        self.tokens, self.depth, self.in_body = [], 0, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if "sm-body" in classes:
            self.in_body = True
        if self.in_body and "sm-tok" in classes:
            self.tokens.append([classes, a.get("title"), ""])
            self.depth = 1
        elif self.depth and tag == "span":
            self.depth += 1

    def handle_endtag(self, tag):
        if self.depth and tag == "span":
            self.depth -= 1

    def handle_data(self, data):
        if self.depth:
            self.tokens[-1][2] += data


def _shown_text(shown: str) -> str:
    out = "".join(MARKERS.get(ch, ch) for ch in shown)
    return "" if out == "\u2205" else out


def test_html_shows_every_token_escaped_with_visible_whitespace():
    tok = load_tokenizer("llama3")
    text = render(LLAMA3, CHAT)
    ids, labels, _ = _truth_runs(tok, text, LLAMA3)
    view = sftmask.render(ids, tok, labels)
    page = view.html()
    parser = _Tokens()
    parser.feed(page)
    assert len(parser.tokens) == len(ids), "one box per token: nothing leaked out of the escaping"
    for (classes, title, shown), token_id, label in zip(parser.tokens, ids, labels):
        assert title == f"id {token_id}, label {label}"
        assert ("sm-t" in classes) == (label != -100) and ("sm-m" in classes) == (label == -100)
        decoded = tok.decode([token_id], skip_special_tokens=False)
        if "\ufffd" not in decoded:
            assert _shown_text(shown) == decoded
    legend = page.split('class="sm-legend"', 1)[1].split('class="sm-body"', 1)[0]
    for word in ("trained", "masked", "special", "space", "newline", "tab"):
        assert word in legend
    assert "F0" in legend, "the emoji is split across byte-level tokens, and the legend says so"
    body = page.split("</style>", 1)[1]
    assert "<terse" not in body and "<b>" not in body and "&amp;" in body


def test_plain_and_ansi(monkeypatch):
    tok = load_tokenizer("qwen2")
    text = render(CHATML, CHAT[:3])
    ids, labels, spans = _truth_runs(tok, text, CHATML)
    view = sftmask.render(ids, tok, labels)
    expected = text
    for s, e in reversed(spans):
        expected = f"{expected[:s]}[[{expected[s:e]}]]{expected[e:]}"
    assert view.plain() == expected

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdout", Tty())
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert str(view) == view.ansi() and "\x1b[1;32m" in str(view) and "\x1b[2m" in str(view)
    monkeypatch.setenv("NO_COLOR", "1")
    assert str(view) == view.plain()
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    monkeypatch.delenv("NO_COLOR")
    assert str(view) == view.plain() and "\x1b" not in str(view)


def test_collator_render_and_trained_text_match_truth():
    tok = load_tokenizer("qwen2")
    text = render(CHATML, CHAT)
    ids, labels, spans = _truth_runs(tok, text, CHATML)
    runs = _runs(text, spans)
    collator = sftmask.DataCollatorForCompletionOnlyLM(
        CHATML.response, list(CHATML.instructions), tokenizer=tok, pad_token_id=0
    )
    view = collator.render({"input_ids": ids})
    assert [t.trained for t in view.tokens] == [lab != -100 for lab in labels]
    assert collator.trained_text(ids) == runs == view.trained_text()
    keep = sftmask.DataCollatorForCompletionOnlyLM(tokenizer=tok, labels="keep", pad_token_id=0)
    assert keep.trained_text({"input_ids": ids, "labels": labels}) == runs
    assert keep.render({"input_ids": np.array(ids), "labels": np.array(labels)}).trained_text() == runs


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium (apt-get install chromium)")
def test_browser_builds_one_box_per_token(tmp_path):
    tok = load_tokenizer("qwen2")
    text = render(CHATML, CHAT)
    ids, labels, _ = _truth_runs(tok, text, CHATML)
    view = sftmask.render(ids, tok, labels)
    page = tmp_path / "view.html"
    page.write_text(f"<!doctype html><meta charset='utf-8'><body>{view.html()}</body>", encoding="utf-8")
    flags = ["--headless", "--no-sandbox", "--disable-gpu"]
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    parser = _Tokens()
    parser.feed(dom)
    assert len(parser.tokens) == len(ids)
    assert [("sm-t" in c) for c, _, _ in parser.tokens] == [lab != -100 for lab in labels]
    shot = tmp_path / "view.png"
    subprocess.run(
        [CHROMIUM, *flags, "--window-size=900,500", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000


# ---------------------------------------------------------------------------------------------
# Padding stays out of the view and its trained share (issue 9). Truth: the rows before padding.


def _chat_rows(k_values=(3, 5)):
    tok = load_tokenizer("qwen2")
    return [tok.encode(render(CHATML, CHAT[:k])).ids for k in k_values]


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batch_rows_render_without_padding(side):
    rows = _chat_rows()
    collator = sftmask.DataCollatorForCompletionOnlyLM(
        CHATML.response, list(CHATML.instructions), tokenizer=tokenizer_path("qwen2"), padding_side=side,
        pad_token_id=151643, return_tensors="np",
    )  # fmt: skip
    batch = collator([{"input_ids": r} for r in rows])
    width = batch["input_ids"].shape[1]
    for i, row in enumerate(rows):
        truth = collator.render({"input_ids": row})
        trained = sum(t.trained for t in truth.tokens)
        # By position (no attention mask), by the mask as an argument, and from the collator.
        views = [
            collator.render(batch["input_ids"][i]),
            sftmask.render(
                batch["input_ids"][i], tokenizer_path("qwen2"), batch["labels"][i],
                attention_mask=batch["attention_mask"][i],
            ),
        ]  # fmt: skip
        if side == "right":  # the tokenizer's own padding side
            views.append(sftmask.render(batch["input_ids"][i], load_hf_tokenizer("qwen2"), batch["labels"][i]))
        for view in views:
            assert [t.id for t in view.tokens] == row
            assert view.trained_fraction == pytest.approx(trained / len(row))
            assert view.padding == width - len(row)
            if width > len(row):
                assert f"{width - len(row)} padding positions left out" in repr(view)


def test_pad_equal_to_eos_keeps_the_rows_own_eos():
    from transformers import PreTrainedTokenizerFast

    eos_token = load_hf_tokenizer("qwen2").eos_token
    hf = PreTrainedTokenizerFast(tokenizer_object=load_tokenizer("qwen2"), eos_token=eos_token, pad_token=eos_token)
    eos = hf.eos_token_id
    assert eos is not None and hf.pad_token_id == eos
    rows = [[*r, eos] for r in _chat_rows()]  # each row ends with EOS, as pipelines append it
    collator = sftmask.DataCollatorForCompletionOnlyLM(
        CHATML.response, list(CHATML.instructions), tokenizer=hf, pad_token_id=eos, return_tensors="np"
    )
    batch = collator([{"input_ids": r} for r in rows])
    width = batch["input_ids"].shape[1]
    for i, row in enumerate(rows):
        for view in (
            collator.render(batch["input_ids"][i]),
            sftmask.render(batch["input_ids"][i], hf, batch["labels"][i]),
        ):
            assert [t.id for t in view.tokens] == row, "the row's final EOS is not padding"
            assert view.padding == width - len(row)
