"""Property-based fuzzing of the Python API (issue 6): random batches, ids, templates and options
never crash the process and uphold the documented invariants.

Vocabularies are the small synthetic ones of ``tests/synthetic.py`` (every decoder family), so
templates occur often; labels are checked against the ground truth of docs/masking.md's rule on the
searchable text (``tests/ground_truth.py``). ``compat="trl"`` is checked against TRL 0.19.1
itself. A real tokenizer (GPT-2) gets random ids too, checked against the rule on the bytes its
own vocabulary gives each token. Templates are planted in the rows, so most rows train something
and an all-masked output fails.
``HYPOTHESIS_PROFILE=thorough`` runs 1,000 examples per test.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
from hypothesis import assume, event, example, given, note
from hypothesis import strategies as st

import ground_truth
import synthetic
from conftest import load_tokenizer, synthetic_tokenizer_path
from sftmask import DataCollatorForCompletionOnlyLM, Vocab

TEXT_TEMPLATES = ["Bot:", " Bot:", "Bot", ":\n", "<|a|>", "<|a|>Bot:", "a", " ", "\n\n", "é", "b:", "User:\n"]
INSTRUCTION_TEMPLATES = ["User:", " User:", "<|u|>", "<|u|>User:", "\n", "ab", "é:"]


@functools.cache
def vocab(family: str) -> Vocab:
    return Vocab.from_json(synthetic.tokenizer_json(family))


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
            tokenizer=synthetic_tokenizer_path(family),
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
    occ = ground_truth.occurrences(text, response, instructions)
    regs = ground_truth.regions(occ, len(text), bool(instructions), collator.train_on == "last")
    found = any(o[2] for o in occ)
    return ground_truth.labels(ids, ground_truth.spans_from_ends(ends), regs, collator.ignore_index), found


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


@functools.cache
def hf_tokenizer(family: str):
    """The synthetic family as a transformers fast tokenizer (what TRL takes)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=synthetic_tokenizer_path(family), pad_token="<pad>")


def planted_rows(token, pieces, max_rows: int = 6):
    """Rows of random tokens with whole templates (``pieces``) planted among them."""
    segment = st.lists(token, max_size=6) | st.sampled_from(pieces)
    row = st.lists(segment, max_size=8).map(lambda segs: [i for seg in segs for i in seg])
    return st.lists(row, min_size=1, max_size=max_rows)


@given(
    family=st.sampled_from(["byte_level", "llama2", "metaspace_first"]),
    data=st.data(),
)
def test_compat_trl_random_batches(family, data):
    """compat='trl' (token-level search) on random ids with its templates planted: the labels are
    TRL 0.19.1's own (TRL itself is the oracle), so a row TRL trains must be trained."""
    trl = pytest.importorskip("trl", reason="TRL 0.19.1 is the oracle; .ci/run installs it")
    size = synthetic.vocab_size(family)
    response = data.draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=3))
    instruction = data.draw(st.none() | st.lists(st.integers(0, size - 1), min_size=1, max_size=3))
    options = {
        "padding_free": data.draw(st.booleans()),
        "ignore_index": data.draw(st.sampled_from([-100, -3])),
    }
    token = st.integers(0, size - 1) | st.sampled_from(template_like_ids(family))
    batch = data.draw(planted_rows(token, [response] + ([instruction] if instruction else [])))
    if options["padding_free"]:
        assume(all(batch))  # TRL's padding-free path cannot flatten an empty row
    examples = [{"input_ids": r, "attention_mask": [1] * len(r)} for r in batch]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            collator = DataCollatorForCompletionOnlyLM(
                response,
                instruction,
                tokenizer=synthetic_tokenizer_path(family),
                pad_token_id=synthetic.pad_id(family),
                compat="trl",
                **options,
            )
        except ValueError as e:
            assert "is empty" in str(e) or "is the response template" in str(e), e
            assume(False)
        theirs = trl.DataCollatorForCompletionOnlyLM(response, instruction, tokenizer=hf_tokenizer(family), **options)(
            examples
        )
        ours = collator(examples)
    ignore = options["ignore_index"]
    trained = int(((theirs["labels"] != -100) & (theirs["labels"] != ignore)).sum())
    event(f"TRL trains {'some' if trained else 'no'} tokens")
    assert ours["input_ids"].tolist() == theirs["input_ids"].tolist()
    # Padding labels included: where TRL's masked range covers the padding, it is ignore_index.
    assert ours["labels"].tolist() == theirs["labels"].tolist()
    if not options["padding_free"]:
        assert ours["attention_mask"].tolist() == theirs["attention_mask"].tolist()
    assert collator.stats.trained_tokens == trained


def test_compat_trl_padding_label_when_ignore_index_is_not_minus_100():
    trl = pytest.importorskip("trl", reason="TRL 0.19.1 is the oracle; .ci/run installs it")
    examples = [{"input_ids": [7, 1, 6, 8, 2, 3]}, {"input_ids": [6, 8, 2]}]  # the second has no "\n" (7)
    kw = {"ignore_index": -3}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = trl.DataCollatorForCompletionOnlyLM([6, 8], [7], tokenizer=hf_tokenizer("byte_level"), **kw)(examples)
        ours = DataCollatorForCompletionOnlyLM(
            [6, 8],
            [7],
            tokenizer=synthetic_tokenizer_path("byte_level"),
            compat="trl",
            pad_token_id=hf_tokenizer("byte_level").pad_token_id,
            **kw,
        )(examples)
    assert theirs["labels"][1].tolist() == [-3] * 6
    assert ours["labels"].tolist() == theirs["labels"].tolist()


@functools.cache
def gpt2():
    return load_tokenizer("gpt2")  # a tokenizers.Tokenizer: its table is cached per object


@functools.cache
def gpt2_bytes(token_id: int) -> bytes:
    return ground_truth.byte_level_token_bytes(gpt2(), token_id)


@st.composite
def gpt2_cases(draw):
    """A response template (any Unicode text, or ids) and rows of random ids with the template's
    own ids planted among them."""
    gpt2_id = st.integers(0, 50256)
    response = draw(st.text(min_size=1, max_size=6) | st.lists(gpt2_id, min_size=1, max_size=3))
    planted = gpt2().encode(response, add_special_tokens=False).ids if isinstance(response, str) else response
    batch = draw(planted_rows(gpt2_id, [planted], max_rows=8).map(lambda rows: [r[:64] for r in rows]))
    return response, batch


def gpt2_truth(response, row: list[int]) -> list[int]:
    """docs/masking.md's rule on the bytes GPT-2's own vocabulary gives each token (no normalizer, no
    phantom space: the template's bytes are its UTF-8, or its tokens' bytes)."""
    template = response.encode() if isinstance(response, str) else b"".join(map(gpt2_bytes, response))
    text, spans = ground_truth.byte_spans([gpt2_bytes(i) for i in row])
    return ground_truth.labels(row, spans, ground_truth.text_regions(text, template, []))


@given(case=gpt2_cases(), padding_free=st.booleans())
@example(case=("### Assistant:", [[21017, 15286, 25, 15902, 13]]), padding_free=False)  # "### Assistant: Hi."
@example(case=([25], [[40, 25, 257, 25, 275, 13], [25]]), padding_free=True)  # "I: a: b." and ":"
def test_real_tokenizer_random_ids(case, padding_free):
    """GPT-2's real table: random ids and templates (any Unicode) never crash, and the labels are
    exactly the rule's on the bytes of GPT-2's own tokens."""
    response, batch = case
    collator = DataCollatorForCompletionOnlyLM(
        response,
        tokenizer=gpt2(),
        pad_token_id=50256,
        padding_free=padding_free,
        on_missing="ignore",
        return_tensors="np",
    )
    out = collator(batch)
    truths = [gpt2_truth(response, r) for r in batch]
    trained = sum(label != -100 for t in truths for label in t)
    event(f"rows trained: {sum(any(v != -100 for v in t) for t in truths)}/{len(batch)}")
    if padding_free:
        flat = [v for t in truths for v in ([-100, *t[1:]] if t else [])]
        assert out["labels"][0].tolist() == flat
        trained -= sum(bool(t) and t[0] != -100 for t in truths)
    else:
        for r, (row, truth) in enumerate(zip(batch, truths)):
            assert out["labels"][r, : len(row)].tolist() == truth, f"row {r}"
            assert (out["labels"][r, len(row) :] == -100).all()
    assert collator.stats.tokens == sum(map(len, batch))
    assert collator.stats.trained_tokens == trained
