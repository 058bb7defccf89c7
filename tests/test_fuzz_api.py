"""Property-based fuzzing of the Python API (issue 6): random batches, ids, templates and options
never crash the process and uphold the documented invariants.

Vocabularies are the small synthetic ones of ``tests/synthetic.py`` (every decoder family), so
templates occur often; labels are checked against a re-implementation of docs/masking.md's rule
on the searchable text (``synthetic.reference_labels``). A real tokenizer (GPT-2) gets random ids too.
``HYPOTHESIS_PROFILE=thorough`` runs 1,000 examples per test.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
from hypothesis import assume, event, given, note
from hypothesis import strategies as st

import synthetic
from sftmask import DataCollatorForCompletionOnlyLM, Vocab

TEXT_TEMPLATES = ["Bot:", " Bot:", "Bot", ":\n", "<|a|>", "<|a|>Bot:", "a", " ", "\n\n", "é", "b:", "User:\n"]
INSTRUCTION_TEMPLATES = ["User:", " User:", "<|u|>", "<|u|>User:", "\n", "ab", "é:"]


@functools.cache
def vocab(family: str) -> Vocab:
    return Vocab.from_json(synthetic.tokenizer_json(family))


@functools.cache
def tok_path(family: str) -> str:
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp(prefix=f"sftmask-{family}-"))
    (folder / "tokenizer.json").write_text(synthetic.tokenizer_json(family))
    return str(folder / "tokenizer.json")


families = st.sampled_from(synthetic.FAMILIES)


@st.composite
def templates(draw, family: str, choices: list[str]):
    """A text template, or token ids standing for some text."""
    if draw(st.booleans()):
        return draw(st.sampled_from(choices))
    size = synthetic.vocab_size(family)
    return draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=3))


@functools.cache
def template_like_ids(family: str) -> list[int]:
    """Ids of tokens that spell (parts of) the templates, drawn often so that templates occur."""
    v = vocab(family)
    parts = {b"User:", b"Bot:", b"<|u|>", b"<|a|>", b":", b"\n", b":\n", b"Bot", b"\n\n"}
    return [i for i in range(len(v)) if (v.token_bytes(i) or b"").strip(b" ") in parts]


def greedy_ids(family: str, text: bytes) -> list[int]:
    """Longest-match tokenization over the table (bytes no token starts are skipped)."""
    v = vocab(family)
    known = sorted(((v.token_bytes(i), i) for i in range(len(v))), key=lambda t: -len(t[0]))
    out, pos = [], 0
    while pos < len(text):
        hit = next(((b, i) for b, i in known if b and text.startswith(b, pos)), None)
        if hit is None:
            pos += 1
        else:
            out.append(hit[1])
            pos += len(hit[0])
    return out


@st.composite
def rows(draw, family: str, collator=None, max_rows: int = 6):
    """Random rows; with a collator, rows are mostly made of its templates and random tokens."""
    size = synthetic.vocab_size(family)
    token = st.integers(0, size - 1) | st.sampled_from(template_like_ids(family))
    if collator is None:
        return draw(st.lists(st.lists(token, max_size=40), min_size=1, max_size=max_rows))
    pieces = [
        greedy_ids(family, t) for t in [collator._masker.response_template, *collator._masker.instruction_templates]
    ]
    segment = st.lists(token, max_size=6) | st.sampled_from(pieces)
    row = st.lists(segment, max_size=8).map(lambda segs: [i for seg in segs for i in seg])
    return draw(st.lists(row, min_size=1, max_size=max_rows))


@st.composite
def setups(draw):
    family = draw(families)
    response = draw(templates(family, TEXT_TEMPLATES))
    instructions = draw(st.lists(templates(family, INSTRUCTION_TEMPLATES), max_size=3))
    options = {
        "ignore_index": draw(st.sampled_from([-100, -1, -7])),
        "padding_free": draw(st.booleans()),
        "padding_side": draw(st.sampled_from(["left", "right"])),
        "pad_to_multiple_of": draw(st.sampled_from([None, 1, 3, 8])),
        "train_on": draw(st.sampled_from(["all", "last"])),
        "num_threads": draw(st.sampled_from([None, 1, 2])),
        "return_tensors": draw(st.sampled_from(["np", "pt"])),
    }
    return family, response, instructions, options


def as_form(batch: list[list[int]], form: str):
    import torch

    if form == "lists":
        return batch
    if form == "dicts":
        return [{"input_ids": r, "labels": [0]} for r in batch]
    if form == "int32 arrays":
        return [np.asarray(r, dtype=np.int32) for r in batch]
    if form == "strided arrays":
        return [np.repeat(np.asarray(r, dtype=np.int64), 2)[::2] for r in batch]
    return [{"input_ids": torch.tensor(r, dtype=torch.long)} for r in batch]


def to_np(x):
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def build(family, response, instructions, options, on_missing="ignore"):
    try:
        return DataCollatorForCompletionOnlyLM(
            response,
            instructions or None,
            tokenizer=tok_path(family),
            pad_token_id=synthetic.pad_id(family),
            on_missing=on_missing,
            **options,
        )
    except ValueError as e:
        # Clean refusals: a template that stands for no text (a phantom space alone), or an
        # instruction template equal to the response template.
        assert "is empty" in str(e) or "is the response template" in str(e), e
        assume(False)


def expected_labels(collator, family, ids):
    text, ends = vocab(family).text(ids)
    masker = collator._masker
    response = masker.response_template
    instructions = list(masker.instruction_templates)
    occ = synthetic.occurrences(text, response, instructions)
    regs = synthetic.regions(occ, len(text), bool(instructions), collator.train_on == "last")
    found = any(o[2] for o in occ)
    return synthetic.reference_labels(ids, text, ends, regs, collator.ignore_index), found


@given(setup=setups(), data=st.data())
def test_random_batches_uphold_the_invariants(setup, data):
    family, response, instructions, options = setup
    collator = build(family, response, instructions, options)
    batch = data.draw(rows(family, collator))
    form = data.draw(st.sampled_from(["lists", "dicts", "int32 arrays", "strided arrays", "torch"]))
    note(f"{family=} {response=} {instructions=} {options=} {form=}")
    out = collator(as_form(batch, form))

    ignore, pad = options["ignore_index"], synthetic.pad_id(family)
    lengths = [len(r) for r in batch]
    expected = [expected_labels(collator, family, r) for r in batch]
    if options["padding_free"]:
        assert set(out) == {
            "input_ids",
            "labels",
            "position_ids",
            "cu_seq_lens_q",
            "cu_seq_lens_k",
            "max_length_q",
            "max_length_k",
        }
        ids, labels, pos = (to_np(out[k]) for k in ("input_ids", "labels", "position_ids"))
        assert ids.shape == labels.shape == pos.shape == (1, sum(lengths))
        assert ids.dtype == labels.dtype == pos.dtype == np.int64
        cu = to_np(out["cu_seq_lens_q"])
        assert cu.dtype == np.int32 and cu.tolist() == np.cumsum([0, *lengths]).tolist()
        assert out["max_length_q"] == out["max_length_k"] == max(lengths)
        for r, (row, (want, _)) in enumerate(zip(batch, expected)):
            s = slice(cu[r], cu[r + 1])
            assert ids[0, s].tolist() == row
            assert pos[0, s].tolist() == list(range(len(row)))
            if row:
                want = [ignore, *want[1:]]  # the first token of a packed sequence is never a target
            assert labels[0, s].tolist() == want, f"row {r}"
    else:
        assert set(out) == {"input_ids", "attention_mask", "labels"}
        ids, att, labels = (to_np(out[k]) for k in ("input_ids", "attention_mask", "labels"))
        m = options["pad_to_multiple_of"] or 1
        width = -(-max(lengths) // m) * m
        assert ids.shape == att.shape == labels.shape == (len(batch), width)
        assert ids.dtype == att.dtype == labels.dtype == np.int64
        for r, (row, (want, _)) in enumerate(zip(batch, expected)):
            n = len(row)
            tokens = slice(width - n, width) if options["padding_side"] == "left" else slice(0, n)
            mask = np.zeros(width, dtype=bool)
            mask[tokens] = True
            assert ids[r, tokens].tolist() == row
            assert labels[r, tokens].tolist() == want, f"row {r}"
            assert (att[r] == mask).all()
            assert (ids[r, ~mask] == pad).all() and (labels[r, ~mask] == ignore).all()
        # Labels are the id or ignore_index, everywhere.
        assert ((labels == ids) | (labels == ignore)).all()

    event(f"rows with a template: {sum(found for _, found in expected)}/{len(batch)}")
    s = collator.stats
    assert s.examples == len(batch) and s.tokens == sum(lengths)
    assert s.rows_without_template == sum(not found for _, found in expected)
    trained = sum(sum(lab != ignore for lab in want) for want, _ in expected)
    if options["padding_free"]:
        trained -= sum(bool(row) and want[0] != ignore for row, (want, _) in zip(batch, expected))
    assert s.trained_tokens == trained


@given(setup=setups(), data=st.data())
def test_inspect_and_collate_agree(setup, data):
    family, response, instructions, options = setup
    options = {**options, "padding_free": False, "return_tensors": "np"}
    collator = build(family, response, instructions, options)
    batch = data.draw(rows(family, collator))
    out = collator(batch)
    for r, row in enumerate(batch):
        seen = collator._masker.inspect(row)
        n = len(row)
        got = out["labels"][r, -n:] if options["padding_side"] == "left" and n else out["labels"][r, :n]
        assert seen["labels"].tolist() == got.tolist()
        assert len(seen["ends"]) == n and (not n or seen["ends"][-1] == len(seen["text"]))


_ids = st.one_of(
    st.integers(-5, synthetic.vocab_size("byte_level") + 5),
    st.sampled_from([-(2**63), 2**63 - 1, 2**31, -(2**31)]),
)


@given(batch=st.lists(st.lists(_ids, max_size=12), min_size=1, max_size=6), padding_free=st.booleans())
def test_invalid_ids_are_refused_naming_the_first_bad_row(batch, padding_free):
    collator = build("byte_level", "Bot:", [], {"padding_free": padding_free, "return_tensors": "np"})
    size = synthetic.vocab_size("byte_level")
    bad = [(r, p, i) for r, row in enumerate(batch) for p, i in enumerate(row) if not 0 <= i < size]
    if not bad:
        collator(batch)
        return
    r, p, i = bad[0]
    with pytest.raises(ValueError) as e:
        collator(batch)
    assert str(e.value).startswith(f"row {r}: token id {i} at position {p} is "), e.value


_junk = st.one_of(
    st.integers(0, 18),
    st.floats(allow_nan=True),
    st.none(),
    st.booleans(),
    st.text(max_size=3),
    st.binary(max_size=3),
    st.lists(st.integers(0, 18), max_size=2),
    st.integers(2**63, 2**80),
    st.complex_numbers(),
)


@given(batch=st.lists(st.one_of(st.lists(_junk, max_size=6), _junk), min_size=0, max_size=5))
def test_junk_rows_raise_clean_errors(batch):
    """Anything that is not a batch of id sequences is a ValueError or TypeError naming a row."""
    collator = build("byte_level", "Bot:", [], {"return_tensors": "np"})
    try:
        collator(batch)
    except (ValueError, TypeError) as e:
        msg = str(e)
        assert msg.startswith("row ") or "the batch is empty" in msg, msg


@given(
    family=st.sampled_from(["byte_level", "llama2", "metaspace_first"]),
    data=st.data(),
)
def test_compat_trl_random_batches(family, data):
    """compat='trl' (token-level search) on random ids: no crash, labels are ids or -100/ignore."""
    size = synthetic.vocab_size(family)
    response = data.draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=3))
    instruction = data.draw(st.none() | st.lists(st.integers(0, size - 1), min_size=1, max_size=3))
    options = {
        "padding_free": data.draw(st.booleans()),
        "ignore_index": data.draw(st.sampled_from([-100, -3])),
        "return_tensors": "np",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            collator = DataCollatorForCompletionOnlyLM(
                response,
                instruction,
                tokenizer=tok_path(family),
                pad_token_id=synthetic.pad_id(family),
                compat="trl",
                **options,
            )
        except ValueError as e:
            assert "is empty" in str(e) or "is the response template" in str(e), e
            assume(False)
        batch = data.draw(rows(family))
        out = collator(batch)
    labels, ids = out["labels"], out["input_ids"]
    assert ((labels == ids) | (labels == -100) | (labels == options["ignore_index"])).all()


@functools.cache
def gpt2():
    from conftest import load_tokenizer

    return load_tokenizer("gpt2")  # a tokenizers.Tokenizer: its table is cached per object


@given(
    batch=st.lists(st.lists(st.integers(0, 50256), max_size=64), min_size=1, max_size=8),
    response=st.text(min_size=1, max_size=6) | st.lists(st.integers(0, 50256), min_size=1, max_size=3),
    padding_free=st.booleans(),
)
def test_real_tokenizer_random_ids(batch, response, padding_free):
    """GPT-2's real table: random ids and templates (any Unicode) never crash; labels are ids or -100."""
    collator = DataCollatorForCompletionOnlyLM(
        response,
        tokenizer=gpt2(),
        pad_token_id=50256,
        padding_free=padding_free,
        on_missing="ignore",
        return_tensors="np",
    )
    out = collator(batch)
    labels, ids = out["labels"], out["input_ids"]
    assert ((labels == ids) | (labels == -100)).all()
    assert collator.stats.tokens == sum(map(len, batch))
