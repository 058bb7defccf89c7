"""Hostile inputs (issue 6): each gets a clear Python exception naming the row and the problem,
or a documented result — never a panic, an abort or silent garbage.

Every case here is a row of ``docs/hostile-inputs.md``. Cases that ``tests/test_collator_api.py``
already covers (``test_call_errors_name_the_row``, ``test_template_errors``, …) are extended,
not repeated. Most tests use the small synthetic byte-level tokenizer of ``tests/synthetic.py``
(ids: ``User:``=6, ``Bot:``=7, `` a``=8, `` b``=9, ``<pad>``=18; size 19) so they run in
milliseconds; real tokenizers are used where the point is a real vocabulary.
"""

from __future__ import annotations

import array
import decimal
import fractions
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import sftmask
import synthetic
from build_tokenizers import tokenizer_path
from conftest import load_tokenizer
from sftmask import DataCollatorForCompletionOnlyLM, TokenizerError

PAD = synthetic.pad_id("byte_level")
SIZE = synthetic.vocab_size("byte_level")
ROW = [6, 8, 3, 7, 9]  # "User: a\nBot: b"
ROW_LABELS = [-100, -100, -100, -100, 9]


@pytest.fixture(scope="module")
def collator(tok_path):
    return DataCollatorForCompletionOnlyLM("Bot:", tokenizer=tok_path, pad_token_id=PAD, return_tensors="np")


def quiet(collator, examples, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return collator(examples, **kw)


# -- ids outside the vocabulary ---------------------------------------------------------------------

AS_FORMS = {
    "list": lambda ids: list(ids),
    "tuple": lambda ids: tuple(ids),
    "int64 array": lambda ids: np.asarray(ids, dtype=np.int64),
    "int32 array": lambda ids: np.asarray(ids, dtype=np.int32),
    "torch tensor": lambda ids: torch.tensor(ids),
    "dict of torch": lambda ids: {"input_ids": torch.tensor(ids)},
}


@pytest.mark.parametrize("form", AS_FORMS)
def test_id_equal_to_vocab_size_names_row_position_and_cause(collator, form):
    bad = AS_FORMS[form]([6, 8, SIZE])
    with pytest.raises(
        ValueError, match=rf"row 1: token id {SIZE} at position 2 is not in the vocabulary \(size {SIZE}\)"
    ):
        collator([ROW, bad])
    with pytest.raises(ValueError, match="different tokenizer"):
        collator([ROW, bad])


def test_last_id_of_the_vocabulary_is_accepted(collator):
    out = quiet(collator, [[SIZE - 1, 7, 9]])
    assert out["labels"].tolist() == [[-100, -100, 9]]


def test_unknown_id_inside_the_range_is_refused(tmp_path):
    """A gap in the ids (an id below the size that no token has) is as unknown as one past the end."""
    data = json.loads(synthetic.tokenizer_json("byte_level"))
    data["added_tokens"].append({"id": 40, "content": "<|far|>", "special": True, "normalized": False})
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data))
    c = DataCollatorForCompletionOnlyLM("Bot:", tokenizer=str(path), pad_token_id=PAD)
    c([[40, 7, 9]])  # the far id itself is known
    with pytest.raises(ValueError, match=r"row 0: token id 25 at position 1 is not in the vocabulary \(size 41\)"):
        c([[7, 25]])


@pytest.mark.parametrize("form", AS_FORMS)
@pytest.mark.parametrize("bad", [-1, -100, -(2**31)])
def test_negative_ids_name_row_and_position(collator, form, bad):
    with pytest.raises(ValueError, match=rf"row 2: token id {bad} at position 1 is negative"):
        collator([ROW, ROW, AS_FORMS[form]([7, bad, 9])])


def test_most_negative_int64(collator):
    with pytest.raises(ValueError, match="row 0: token id -9223372036854775808 at position 0 is negative"):
        collator([np.array([-(2**63)], dtype=np.int64)])


@pytest.mark.parametrize("padding_free", [False, True])
def test_bad_id_in_a_parallel_batch_names_the_first_bad_row(tok_path, padding_free):
    """Rows are masked on several threads; the error is still the first bad row's, in row order."""
    c = DataCollatorForCompletionOnlyLM(
        "Bot:", tokenizer=tok_path, pad_token_id=PAD, padding_free=padding_free, num_threads=2
    )
    rows = [ROW * 20 for _ in range(400)]  # 40k tokens: above PARALLEL_MIN_TOKENS
    assert sum(map(len, rows)) >= sftmask._core.PARALLEL_MIN_TOKENS
    rows[350] = [*ROW, SIZE + 5]
    rows[123] = [*ROW, -7]
    with pytest.raises(ValueError, match="row 123: token id -7 at position 5 is negative"):
        c(rows)
    assert c.stats.examples == 0, "a refused batch counts nothing"


# -- ids that are not integers ----------------------------------------------------------------------


class _Index:
    """An object with __index__ (like operator.index accepts)."""

    def __index__(self):
        return 9


@pytest.mark.parametrize(
    ("item", "match"),
    [
        (1.5, "must be an int, got float"),
        (2.0, "must be an int, got float"),
        ("3", "must be an int, got str"),
        (None, "must be an int, got NoneType"),
        (True, "is a bool, not an int"),
        (np.True_, "must be an int, got bool"),
        (np.float64(2), "must be an int, got float64"),
        (1j, "must be an int, got complex"),
        (decimal.Decimal(2), "must be an int, got Decimal"),
        (fractions.Fraction(2), "must be an int, got Fraction"),
        ([2], "must be an int, got list"),
        ((2,), "must be an int, got tuple"),
    ],
    ids=repr,
)
def test_non_integer_items_name_row_and_position(collator, item, match):
    with pytest.raises(TypeError, match=rf"row 1: token id at position 1 {match}"):
        collator([ROW, [7, item, 9]])


def test_integer_like_items_are_accepted(collator):
    """numpy integer scalars and objects with __index__ are ids (as operator.index says)."""
    out = collator([[6, np.int64(8), np.uint16(3), np.int8(7), _Index()]])
    assert out["labels"].tolist() == [ROW_LABELS]


_SELF_REMOVING_ITEM_CHILD = """
import sys
from sftmask import DataCollatorForCompletionOnlyLM

collator = DataCollatorForCompletionOnlyLM("Bot:", tokenizer=sys.argv[1], pad_token_id=18, return_tensors="np")

def make_row():
    row = [6, None, 9]

    class Evil:
        def __index__(self):
            row[1] = 0  # the list drops its (only) reference to this object
            return "not an int"  # a C-level TypeError: no traceback frame keeps `self` alive

    row[1] = Evil()
    return row

for _ in range(200):
    try:
        collator([make_row()])
    except TypeError as e:
        message = str(e)
print(message)
"""


def test_item_whose_index_removes_itself_from_the_list(tok_path):
    out = subprocess.run(
        [sys.executable, "-c", _SELF_REMOVING_ITEM_CHILD, tok_path],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONMALLOC": "debug"},  # freed memory is poisoned: a use after free shows
    )
    assert out.returncode == 0, f"the process died (rc {out.returncode}): {out.stderr[-300:]}"
    assert out.stdout.strip() == "row 0: token id at position 1 must be an int, got Evil"


@pytest.mark.parametrize(
    "arr",
    [
        np.zeros(3, dtype=np.float64),
        np.zeros(3, dtype=np.float16),
        np.zeros(3, dtype=bool),
        np.zeros(3, dtype=object),
        np.array(["a", "b"]),
        np.zeros(3, dtype=complex),
        np.zeros(3, dtype="datetime64[s]"),
        torch.zeros(3),
        torch.zeros(3, dtype=torch.bool),
        torch.zeros(3, dtype=torch.bfloat16),
    ],
    ids=lambda a: str(a.dtype),
)
def test_non_integer_arrays_name_the_dtype(collator, arr):
    with pytest.raises(TypeError, match=r"row 1: (input_ids must hold integers, got an array of dtype|cannot read)"):
        collator([ROW, arr])


# -- nested, ragged, wrongly shaped ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("example", "error", "match"),
    [
        ([6, [7, 9]], TypeError, "row 0: token id at position 1 must be an int, got list"),
        (np.array([[6, 7], [9]], dtype=object), TypeError, "row 0: input_ids must hold integers.*object"),
        (np.zeros((2, 3), dtype=np.int64, order="F"), ValueError, r"row 0: input_ids must be 1-D.*\[2, 3\]"),
        ({"input_ids": [[6, 7, 9]]}, TypeError, "row 0: token id at position 0 must be an int, got list"),
        ({"input_ids": np.array([[6, 7, 9]])}, ValueError, "row 0: input_ids must be 1-D"),
        ({"input_ids": 7}, ValueError, r"row 0: input_ids must be 1-D, got an array of shape \[\]"),
        (7, ValueError, r"row 0: input_ids must be 1-D, got an array of shape \[\]"),
        ({6, 7}, ValueError, "row 0: input_ids must be 1-D"),
        (None, TypeError, "row 0: input_ids must be a sequence of ints, got NoneType"),
        (b"\x06\x07", TypeError, "row 0: input_ids must be a sequence of ints, got bytes"),
        ({"input_ids": "Bot: b"}, TypeError, "row 0: input_ids must be a sequence of ints, got str"),
        ({"labels": [1]}, ValueError, "row 0: the example has no 'input_ids' key"),
    ],
    ids=repr,
)
def test_nested_and_misshapen_examples(collator, example, error, match):
    with pytest.raises(error, match=match):
        collator([example])


def test_ragged_rows_are_padded(collator):
    """Rows of different lengths are the normal case: padded to the longest, masks by position."""
    out = quiet(collator, [ROW, [7, 9], []], return_tensors="np")
    assert out["input_ids"].tolist() == [ROW, [7, 9, PAD, PAD, PAD], [PAD] * 5]
    assert out["labels"].tolist() == [ROW_LABELS, [-100, 9, -100, -100, -100], [-100] * 5]
    assert out["attention_mask"].tolist() == [[1] * 5, [1, 1, 0, 0, 0], [0] * 5]


@pytest.mark.parametrize("order", ["C", "F"])
def test_two_dimensional_batch_array_is_a_batch_of_rows(collator, order):
    """A 2-D integer array (or tensor) passed as the batch: each row is an example."""
    batch = np.array([ROW, ROW[::-1]], order=order)
    out = quiet(collator, batch)
    assert out["input_ids"].tolist() == batch.tolist()
    assert out["labels"][0].tolist() == ROW_LABELS
    out = quiet(collator, torch.tensor([ROW, ROW]).T.contiguous().T)  # a Fortran-ordered tensor
    assert out["labels"].tolist() == [ROW_LABELS, ROW_LABELS]
    with pytest.raises(ValueError, match="row 0: input_ids must be 1-D"):
        collator(np.zeros((2, 2, 2), dtype=np.int64))


# -- integer widths, uint64, layouts --------------------------------------------------------------


@pytest.mark.parametrize("value", [2**63, 2**64 - 1])
def test_uint64_beyond_int64_is_refused(collator, value):
    with pytest.raises(ValueError, match="row 1: input_ids holds a uint64 value beyond int64"):
        collator([ROW, np.array([7, value], dtype=np.uint64)])
    with pytest.raises(ValueError, match="row 1: token id at position 1 does not fit in int64"):
        collator([ROW, [7, value]])


def test_uint64_scalar_beyond_int64_says_it_does_not_fit(collator):
    with pytest.raises(ValueError, match="row 0: token id at position 1 does not fit in int64"):
        collator([[7, np.uint64(2**63)]])


LAYOUTS = {
    "uint64 in range": lambda r: np.array(r, dtype=np.uint64),
    "int8": lambda r: np.array(r, dtype=np.int8),
    "uint8": lambda r: np.array(r, dtype=np.uint8),
    "int16": lambda r: np.array(r, dtype=np.int16),
    "uint16": lambda r: np.array(r, dtype=np.uint16),
    "uint32": lambda r: np.array(r, dtype=np.uint32),
    "big-endian int64": lambda r: np.array(r, dtype=">i8"),
    "big-endian int32": lambda r: np.array(r, dtype=">i4"),
    "reversed view": lambda r: np.array(r[::-1], dtype=np.int64)[::-1],
    "strided view": lambda r: np.repeat(np.array(r, dtype=np.int64), 3)[::3],
    "column of a C array": lambda r: np.array([r, r], dtype=np.int64).T[:, 1],
    "row of a Fortran array": lambda r: np.asfortranarray(np.array([r, r], dtype=np.int64))[1],
    "read-only": lambda r: _read_only(np.array(r)),
    "unaligned int64": lambda r: _unaligned(r, np.int64),
    "unaligned int32": lambda r: _unaligned(r, np.int32),
    "field of a packed record array": lambda r: _record_field(r),
    "torch strided": lambda r: torch.tensor(r).repeat_interleave(2)[::2],
    "torch column": lambda r: torch.tensor([r, r]).T[:, 0],
    "torch int32": lambda r: torch.tensor(r, dtype=torch.int32),
    "torch uint8": lambda r: torch.tensor(r, dtype=torch.uint8),
    "array.array": lambda r: array.array("q", r),
    "memoryview": lambda r: memoryview(np.array(r, dtype=np.int64)),
    "range": lambda r: r,  # see below
}


def _read_only(a):
    a.flags.writeable = False
    return a


def _unaligned(r, dtype):
    """An int array at an odd address (np.frombuffer at an offset, packed binary formats)."""
    size = np.dtype(dtype).itemsize
    a = np.zeros(len(r) * size + 1, dtype=np.uint8)[1:].view(dtype)
    a[:] = r
    assert not a.flags.aligned and a.flags.c_contiguous
    return a


def _record_field(r):
    rec = np.zeros(len(r), dtype=[("flag", "u1"), ("id", "i8")])
    rec["id"] = r
    return rec["id"]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_integer_widths_and_memory_layouts_agree_with_lists(collator, layout):
    """Non-contiguous, Fortran-ordered, byte-swapped, unaligned, read-only: one converting copy."""
    row = ROW if layout != "range" else [0, 1, 2, 3, 4]
    ids = LAYOUTS[layout](row) if layout != "range" else range(5)
    out = quiet(collator, [ids, row])
    assert out["input_ids"].tolist() == [row, row]
    assert out["labels"][0].tolist() == out["labels"][1].tolist()
    if layout != "range":
        assert out["labels"][0].tolist() == ROW_LABELS


def test_unaligned_arrays_in_inspect_and_templates(tok_path, collator):
    ids = _unaligned(ROW, np.int64)
    assert collator._masker.inspect(ids)["labels"].tolist() == ROW_LABELS
    DataCollatorForCompletionOnlyLM(ids[3:4], tokenizer=tok_path, pad_token_id=PAD)


def test_bytes_like_objects(collator):
    """`bytes` is refused (it is usually text); a bytearray is read by numpy as uint8 ids."""
    with pytest.raises(TypeError, match="got bytes"):
        collator([bytes(ROW)])
    assert quiet(collator, [bytearray(ROW)])["input_ids"].tolist() == [ROW]


# -- torch tensors on another device --------------------------------------------------------------


def test_meta_device_tensor(collator):
    with pytest.raises(TypeError, match="row 1: cannot read input_ids of type Tensor: can't convert meta"):
        collator([torch.tensor(ROW), torch.empty(3, dtype=torch.long, device="meta")])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensor(collator):
    with pytest.raises(TypeError, match=r"row 0: cannot read input_ids of type Tensor.*cuda"):
        collator([torch.tensor(ROW, device="cuda")])


def test_sparse_tensor(collator):
    with pytest.raises(TypeError, match=r"row 0: cannot read input_ids of type Tensor.*Sparse"):
        collator([torch.tensor(ROW).to_sparse()])


# -- empty batches and sequences ------------------------------------------------------------------


@pytest.mark.parametrize(
    "batch", [[], (), iter([]), np.zeros((0, 4), dtype=np.int64), torch.zeros((0, 4), dtype=torch.long)], ids=repr
)
@pytest.mark.parametrize("padding_free", [False, True])
def test_empty_batch(tok_path, batch, padding_free):
    c = DataCollatorForCompletionOnlyLM("Bot:", tokenizer=tok_path, pad_token_id=PAD, padding_free=padding_free)
    with pytest.raises(ValueError, match="the batch is empty: pass at least one example"):
        c(batch)


def test_empty_sequences(tok_path):
    c = DataCollatorForCompletionOnlyLM("Bot:", tokenizer=tok_path, pad_token_id=PAD, return_tensors="np")
    with pytest.warns(UserWarning, match="2 of 2 examples"):
        out = c([[], []])
    assert out["input_ids"].shape == out["labels"].shape == out["attention_mask"].shape == (2, 0)
    with pytest.warns(UserWarning, match="1 of 2 examples"):
        out = c([[], ROW])
    assert out["labels"].tolist() == [[-100] * 5, ROW_LABELS]
    flat = DataCollatorForCompletionOnlyLM("Bot:", tokenizer=tok_path, padding_free=True, return_tensors="np")
    with pytest.warns(UserWarning, match="1 of 3"):
        out = flat([ROW, [], ROW])
    assert out["cu_seq_lens_q"].tolist() == [0, 5, 5, 10]
    assert out["position_ids"].tolist() == [[0, 1, 2, 3, 4] * 2]
    assert out["max_length_q"] == 5
    with pytest.warns(UserWarning):
        out = flat([[]])
    assert out["input_ids"].shape == (1, 0) and out["cu_seq_lens_q"].tolist() == [0, 0] and out["max_length_q"] == 0


# -- big inputs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["list", "int64 array", "int32 array"])
def test_one_million_token_row(tok_path, form):
    c = DataCollatorForCompletionOnlyLM("Bot:", tokenizer=tok_path, pad_token_id=PAD, return_tensors="np")
    n = 1_000_000
    ids = np.tile(np.array([6, 8, 3], dtype=np.int64), n // 3 + 1)[: n - 3]
    ids = np.concatenate([ids, [7, 9, 9]])
    assert len(ids) == n
    example = AS_FORMS[form](ids.tolist() if form == "list" else ids)
    out = c([example, [7, 9]])
    labels = out["labels"]
    assert labels.shape == (2, n)
    assert (labels[0, :-2] == -100).all() and labels[0, -2:].tolist() == [9, 9]
    assert labels[1].tolist()[:3] == [-100, 9, -100]
    assert c.stats.tokens == n + 2 and c.stats.trained_tokens == 3
    flat = DataCollatorForCompletionOnlyLM("Bot:", tokenizer=tok_path, padding_free=True, return_tensors="np")
    out = flat([example])
    assert out["position_ids"][0, -1] == n - 1 and out["cu_seq_lens_q"].tolist() == [0, n]


@pytest.mark.parametrize("num_threads", [1, 2])
def test_ten_thousand_row_batch(tok_path, num_threads):
    c = DataCollatorForCompletionOnlyLM(
        "Bot:", tokenizer=tok_path, pad_token_id=PAD, return_tensors="np", num_threads=num_threads
    )
    # Rows 0 mod 3 have no template; 1 mod 3 end with it (an empty response); 2 mod 3 end "…Bot: b".
    rows = [ROW[: 3 + i % 3] for i in range(10_000)]
    with pytest.warns(UserWarning, match="3334 of 10000 examples"):
        out = c(rows)
    assert out["labels"].shape == (10_000, 5)
    assert (out["labels"][2::3] == ROW_LABELS).all()
    assert (out["labels"][0::3] == -100).all() and (out["labels"][1::3] == -100).all()
    assert c.stats.examples == 10_000 and c.stats.rows_without_template == 3334
    rows[9_999] = [7, SIZE]
    with pytest.raises(ValueError, match="row 9999: token id 19"):
        c(rows)


# -- ignore_index colliding with real ids ---------------------------------------------------------


def test_ignore_index_equal_to_a_real_id(tok_path):
    """Documented: labels are `id` or `ignore_index`, so a trained token whose id *is* ignore_index
    cannot be told from a masked one (TRL behaves the same). Masking itself is unchanged."""
    c = DataCollatorForCompletionOnlyLM("Bot:", tokenizer=tok_path, pad_token_id=PAD, ignore_index=9)
    out = c([ROW, [7, 8]], return_tensors="np")
    assert out["labels"].tolist() == [[9, 9, 9, 9, 9], [9, 8, 9, 9, 9]]
    assert c.stats.trained_tokens == 2, "the stats count by the rule, not by label value"
    c = DataCollatorForCompletionOnlyLM("Bot:", tokenizer=tok_path, pad_token_id=PAD, ignore_index=PAD)
    out = c([ROW, [7, 8]], return_tensors="np")
    assert out["labels"].tolist() == [[PAD] * 4 + [9], [PAD, 8, PAD, PAD, PAD]]


def test_trained_count_agrees_between_layouts_when_ignore_index_is_an_id(tok_path):
    kw = {"tokenizer": tok_path, "pad_token_id": PAD, "ignore_index": 9}
    padded = DataCollatorForCompletionOnlyLM("Bot:", **kw)
    flat = DataCollatorForCompletionOnlyLM("Bot:", padding_free=True, **kw)
    rows = [[8, *ROW], [8, 7, 8]]  # first tokens are never trained, so both layouts train the same
    padded(rows)
    flat(rows)
    assert flat.stats.trained_tokens == padded.stats.trained_tokens == 2


# -- templates ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("template", "expected"), [(" ", [-100, -100, -100, 7, 9]), ("\n", [-100, -100, -100, 7, 9])])
def test_whitespace_only_template_is_a_template(tok_path, template, expected):
    """Documented: whitespace is text like any other; the region starts after its last occurrence."""
    c = DataCollatorForCompletionOnlyLM(template, tokenizer=tok_path, pad_token_id=PAD, return_tensors="np")
    # "User: a\nBot: b": the last " " is inside " b" (token 9), which straddles it: trained.
    labels = c([ROW])["labels"][0].tolist()
    assert labels == ([-100, -100, -100, -100, 9] if template == " " else expected)


def test_template_longer_than_every_row(tok_path):
    long_template = "Bot: " + "b" * 100
    c = DataCollatorForCompletionOnlyLM(long_template, tokenizer=tok_path, pad_token_id=PAD, return_tensors="np")
    with pytest.warns(UserWarning, match="2 of 2 examples"):
        out = c([ROW, [7]])
    assert (out["labels"] == -100).all()
    strict = DataCollatorForCompletionOnlyLM(long_template, tokenizer=tok_path, pad_token_id=PAD, on_missing="error")
    with pytest.raises(ValueError, match=r"row 0: response template .* not found"):
        strict([ROW])


@pytest.mark.parametrize(
    ("template", "error", "match"),
    [
        ([SIZE], ValueError, f"response template holds token id {SIZE}, which is not in the vocabulary"),
        ([7, -1], ValueError, "response template holds token id -1"),
        ([7, 25.0], TypeError, "response_template must be a str or a sequence of token ids"),
        ([True], TypeError, "response_template must be a str or a sequence of token ids"),
        ([10**30], TypeError, "response_template must be a str or a sequence of token ids"),
        (np.array([7.0]), TypeError, "response_template must be a str or a sequence of token ids"),
        (np.array([[7]]), TypeError, "response_template must be a str or a sequence of token ids"),
        (None, ValueError, r"response_template is required: this tokenizer has no chat template"),
        (7, TypeError, "response_template must be a str or a sequence of token ids, got int"),
        (b"Bot:", TypeError, "got bytes"),
    ],
    ids=repr,
)
def test_bad_response_templates(tok_path, template, error, match):
    with pytest.raises(error, match=match):
        DataCollatorForCompletionOnlyLM(template, tokenizer=tok_path, pad_token_id=PAD)


@pytest.mark.parametrize(
    ("instruction", "error", "match"),
    [
        ([SIZE + 3], ValueError, f"instruction template holds token id {SIZE + 3}"),
        (["User:", [SIZE]], ValueError, "instruction template holds token id"),
        (["User:", ""], ValueError, 'instruction template "" is empty'),
        (["User:", None], TypeError, "got an item of type NoneType"),
        (["User:", "Bot:"], ValueError, "is the response template"),
        (42, TypeError, "instruction_template must be a str or a list"),
    ],
    ids=repr,
)
def test_bad_instruction_templates(tok_path, instruction, error, match):
    with pytest.raises(error, match=match):
        DataCollatorForCompletionOnlyLM("Bot:", instruction, tokenizer=tok_path, pad_token_id=PAD)


@pytest.mark.parametrize("template", ["\x00", "\x01\x02", "\x7f"])
def test_template_that_normalizes_to_nothing(template):
    """BERT's normalizer deletes control characters: such a template stands for no text."""
    with pytest.raises(ValueError, match=r"response template .* is empty: it stands for no text"):
        DataCollatorForCompletionOnlyLM(template, tokenizer=str(tokenizer_path("bert")), pad_token_id=0)


# -- corrupt, truncated, unsupported tokenizer.json -----------------------------------------------

GOOD = json.loads(synthetic.tokenizer_json("byte_level"))


def _variant(**changes):
    data = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        if value is KeyError:
            del data[key]
        else:
            data[key] = value
    return json.dumps(data)


CORRUPT = {
    "truncated": synthetic.tokenizer_json("byte_level")[:300],
    "empty file": "",
    "not JSON": "hello, I am not a tokenizer",
    "JSON array": "[]",
    "JSON null": "null",
    "deeply nested": "[" * 100_000 + "]" * 100_000,
    "no model": _variant(model=KeyError),
    "empty vocabulary": _variant(model={"type": "BPE", "vocab": {}, "merges": []}, added_tokens=[]),
    "negative id": _variant(model={"type": "BPE", "vocab": {"a": -1}, "merges": []}),
    "id beyond u32": _variant(model={"type": "BPE", "vocab": {"a": 2**40}, "merges": []}),
    "implausible id": _variant(model={"type": "BPE", "vocab": {"a": 2**32 - 1}, "merges": []}),
    "vocab not a map": _variant(model={"type": "BPE", "vocab": "abc"}),
    "bad unigram score": _variant(model={"type": "Unigram", "vocab": [["a", "high"]]}),
    "added token without id": _variant(added_tokens=[{"content": "x"}]),
    "unknown decoder": _variant(decoder={"type": "CTC", "pad_token": "<pad>"}),
    "unknown decoder in a sequence": _variant(decoder={"type": "Sequence", "decoders": [{"type": "Fuse"}]}),
    "decoder is a number": _variant(decoder=5),
    "no decoder, BPE model": _variant(decoder=None, pre_tokenizer=None),
    "bad BertNormalizer": _variant(normalizer={"type": "BertNormalizer", "lowercase": "yes"}),
}


@pytest.mark.parametrize("case", CORRUPT)
def test_corrupt_tokenizer_json_raises_tokenizer_error(tmp_path, case):
    text = CORRUPT[case]
    with pytest.raises(TokenizerError, match=r"could not read tokenizer.json|unsupported tokenizer"):
        sftmask.Vocab.from_json(text)
    path = tmp_path / "tokenizer.json"
    path.write_text(text)
    with pytest.raises(TokenizerError):
        DataCollatorForCompletionOnlyLM("Bot:", tokenizer=str(path), pad_token_id=0)
    with pytest.raises(TokenizerError):
        DataCollatorForCompletionOnlyLM("Bot:", tokenizer=tmp_path, pad_token_id=0)


def test_truncated_real_tokenizer_json(tmp_path):
    text = tokenizer_path("gpt2").read_text(encoding="utf-8")
    for cut in (1, len(text) // 2, len(text) - 1):
        path = tmp_path / f"cut{cut}.json"
        path.write_text(text[:cut], encoding="utf-8")
        with pytest.raises(TokenizerError, match=r"could not read tokenizer.json"):
            DataCollatorForCompletionOnlyLM("Bot:", tokenizer=str(path), pad_token_id=0)


def test_tokenizer_error_is_a_value_error():
    assert issubclass(TokenizerError, ValueError)
    assert issubclass(sftmask.InternalError, RuntimeError)


def test_unreadable_tokenizer_file():
    with pytest.raises(TokenizerError, match="cannot read"):
        sftmask.Vocab.from_file("/nonexistent/tokenizer.json")
    with pytest.raises(FileNotFoundError, match=r"no tokenizer.json"):
        DataCollatorForCompletionOnlyLM("Bot:", tokenizer="/nonexistent/tokenizer.json", pad_token_id=0)


@pytest.mark.parametrize("model_type", ["Foo", "CharBPE"])
def test_unknown_model_type_is_refused(model_type):
    model = {"type": model_type, "vocab": {"a": 0, "b": 1}, "merges": []}
    with pytest.raises(TokenizerError, match="model"):
        sftmask.Vocab.from_json(_variant(model=model))


def test_legacy_model_without_type_is_read():
    """tokenizers itself still loads files written before models had a "type" (it infers it)."""
    vocab = sftmask.Vocab.from_json(_variant(model={"vocab": {"a": 0, "Ġb": 1}, "merges": []}, added_tokens=[]))
    assert vocab.text([0, 1])[0] == b"a b"


PRECOMPILED = {
    # base64 of b"\0\0\0\0": an empty trie; spm_precompiled indexes it and panics.
    "empty trie": "AAAAAA==",
    # a 2-entry trie pointing far outside itself.
    "trie pointing outside": "CAAAAP////8BAgMEYWJj",
    "null": None,
    "not base64": "!!!",
    # a trie size of 2**32 - 1: spm_precompiled reserves 2**30 words (8 GB) before reading it.
    "huge trie size": "/////w==",
}


@pytest.mark.parametrize("charsmap", PRECOMPILED)
def test_corrupt_precompiled_normalizer_raises_tokenizer_error(tok_path, charsmap):
    text = _variant(normalizer={"type": "Precompiled", "precompiled_charsmap": PRECOMPILED[charsmap]})
    try:
        sftmask.Masker(sftmask.Vocab.from_json(text), "Bot:")
    except TokenizerError:
        return
    except BaseException as e:
        pytest.fail(f"{type(e).__name__}: {e}")
    pytest.fail("accepted")


def test_real_precompiled_normalizer_is_applied_to_templates(tmp_path):
    """A genuine SentencePiece charsmap (nmt_nfkc, as ALBERT/T5 ship) is read and applied to templates,
    so a fix for corrupt charsmaps must keep accepting it."""
    spm = pytest.importorskip("sentencepiece")
    from transformers import AlbertTokenizer
    from transformers.convert_slow_tokenizer import convert_slow_tokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(("Hello world. Ｆｕｌｌｗｉｄｔｈ text, café, naïve.\n" * 40) * 5)
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(tmp_path / "tiny"),
        vocab_size=40,
        hard_vocab_limit=False,
        model_type="unigram",
        normalization_rule_name="nmt_nfkc",
        minloglevel=2,
    )
    text = convert_slow_tokenizer(AlbertTokenizer(str(tmp_path / "tiny.model"))).to_str()
    assert '"Precompiled"' in text
    masker = sftmask.Masker(sftmask.Vocab.from_json(text), "Ｆｕｌｌ")
    assert masker.response_template == b"full"


_MEMORY_LIMITED_CHILD = """
import base64, json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))  # a worker with a memory limit
import sftmask
text = json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "decoder": {"type": "ByteLevel"},
                   "normalizer": {"type": "Precompiled", "precompiled_charsmap": sys.argv[1]}})
try:
    sftmask.Vocab.from_json(text)
    print("accepted")
except Exception as e:
    print(type(e).__name__)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS")
def test_precompiled_charsmap_claiming_a_huge_trie_does_not_abort_a_memory_limited_process():
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_LIMITED_CHILD, PRECOMPILED["huge trie size"]],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RUST_BACKTRACE": "0"},
    )
    assert out.returncode == 0, f"the process died (rc {out.returncode}): {out.stderr[-300:]}"
    assert out.stdout.strip() == "TokenizerError"


def _path_with(tmp_path, tokenizer_json=None, config=None, raw=None):
    folder = tmp_path / "tok"
    folder.mkdir()
    if raw is not None:
        (folder / "tokenizer.json").write_bytes(raw)
    else:
        (folder / "tokenizer.json").write_text(tokenizer_json or synthetic.tokenizer_json("byte_level"))
    if config is not None:
        (folder / "tokenizer_config.json").write_text(config)
    return folder


@pytest.mark.parametrize(
    "files",
    [
        {"raw": b"\xff\xfe{}"},
        {"raw": synthetic.tokenizer_json("byte_level").encode().replace(b'"<pad>"', b'"<\xe9pad>"')},
        {"config": "{"},
        {"config": "[]"},
        {"tokenizer_json": _variant(padding=5)},
    ],
    ids=["non-UTF-8", "latin-1 byte inside", "config not JSON", "config a list", "padding not an object"],
)
def test_bad_tokenizer_folder_raises_tokenizer_error(tmp_path, files):
    folder = _path_with(tmp_path, **files)
    with pytest.raises(TokenizerError):
        DataCollatorForCompletionOnlyLM("Bot:", tokenizer=folder, pad_token_id=0)


# -- ids from a different tokenizer ---------------------------------------------------------------


def test_ids_of_a_smaller_vocabulary_collate_and_show_in_stats():
    """Llama-3 ids are all valid Qwen2 ids: no error is possible, but the template is not found,
    so the rows are untrained and counted in ``stats.rows_without_template``."""
    from chat_formats import CHATML, LLAMA3, render

    text = render(LLAMA3, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
    llama_ids = load_tokenizer("llama3").encode(text, add_special_tokens=False).ids
    assert max(llama_ids) < 151_000
    c = DataCollatorForCompletionOnlyLM(CHATML.response, tokenizer=str(tokenizer_path("qwen2")), pad_token_id=0)
    with pytest.warns(UserWarning, match="2 of 2 examples"):
        out = c([llama_ids, llama_ids])
    assert (out["labels"] == -100).all()
    s = c.stats
    assert (s.examples, s.rows_without_template, s.trained_tokens) == (2, 2, 0)
    assert s.trained_fraction == 0.0


def test_ids_of_a_larger_vocabulary_are_refused_with_the_likely_cause():
    from chat_formats import CHATML, render

    text = render(CHATML, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
    qwen_ids = load_tokenizer("qwen2").encode(text, add_special_tokens=False).ids
    c = DataCollatorForCompletionOnlyLM("Hello", tokenizer=str(tokenizer_path("gpt2")), pad_token_id=0)
    with pytest.raises(ValueError, match=r"row 0: token id 151644 at position 0 .*size 50257.*different tokenizer"):
        c([qwen_ids])


# -- hostile options ------------------------------------------------------------------------------

_CHILD = """
import sys, json, warnings
warnings.simplefilter("ignore")
from sftmask import DataCollatorForCompletionOnlyLM
kw = json.loads(sys.argv[2])
try:
    DataCollatorForCompletionOnlyLM("Bot:", tokenizer=sys.argv[1], pad_token_id=18, **kw)([[6, 7, 9]])
    print("ok")
except Exception as e:
    print(type(e).__name__, e)
"""


@pytest.mark.parametrize("multiple", [2**40, 2**62])
def test_huge_pad_to_multiple_of_is_a_clean_error(tok_path, multiple):
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, tok_path, json.dumps({"pad_to_multiple_of": multiple})],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RUST_BACKTRACE": "0"},
    )
    assert out.returncode == 0, f"the process died (rc {out.returncode}): {out.stderr[-300:]}"
    assert out.stdout.split()[0] in ("MemoryError", "ValueError"), out.stdout


@pytest.mark.parametrize("option", ["pad_token_id", "ignore_index", "num_threads"])
def test_options_beyond_int64_name_the_option(tok_path, option):
    kw = {"pad_token_id": PAD, option: 2**70}
    with pytest.raises(ValueError, match=option):
        DataCollatorForCompletionOnlyLM("Bot:", tokenizer=tok_path, **kw)([ROW])


def test_low_level_api_hostile_arguments(collator):
    vocab, masker = collator._vocab, collator._masker
    assert vocab.token_bytes(-1) is None and vocab.token_bytes(SIZE) is None
    with pytest.raises(ValueError, match="row 0: token id 99 at position 1"):
        vocab.text([1, 99])
    with pytest.raises(ValueError, match="row 0: token id -1 at position 0 is negative"):
        masker.inspect([-1])
    with pytest.raises(ValueError, match="padding_side must be 'right' or 'left'"):
        sftmask.Masker(vocab, "Bot:", pad_token_id=PAD, padding_side="up")
    with pytest.raises(ValueError, match="padding needs a pad token id"):
        sftmask.Masker(vocab, "Bot:").collate([ROW])
    with pytest.raises(ValueError, match="train_on"):
        sftmask.Masker(vocab, "Bot:", train_on="first")
    with pytest.raises(TypeError, match="compat='trl' takes response_template as token ids"):
        sftmask.Masker(vocab, "Bot:", compat="trl")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        collator.trained_text([99])
    assert collator.render([]).plain() == ""


# -- labels="keep" (the examples' own labels are padded, not computed) ----------------------------


@pytest.fixture(scope="module")
def keep(tok_path):
    return DataCollatorForCompletionOnlyLM(tokenizer=tok_path, pad_token_id=PAD, labels="keep", return_tensors="np")


@pytest.mark.parametrize(
    ("example", "error", "match"),
    [
        ({"input_ids": [6, 7, 9], "labels": [1]}, ValueError, "row 0: 1 labels for 3 input_ids"),
        ([6, 7, 9], ValueError, "row 0: with labels='keep' every example must be a dict with 'input_ids' and 'labels'"),
        ({"input_ids": [6, 7, SIZE], "labels": [1, 2, 3]}, ValueError, "row 0: token id 19 at position 2 is not in"),
        ({"input_ids": [6, -2], "labels": [1, 2]}, ValueError, "row 0: token id -2 at position 1 is negative"),
        ({"input_ids": [6, 7], "labels": [1.0, 2.0]}, TypeError, "row 0: labels must hold ints, got float64"),
        ({"input_ids": [6, 7], "labels": [True, False]}, TypeError, "row 0: labels must hold ints, got bool"),
        ({"input_ids": [[6, 7]], "labels": [[6, 7]]}, ValueError, r"row 0: input_ids must be 1-D, got shape \(1, 2\)"),
        ({"input_ids": None, "labels": None}, ValueError, "row 0: input_ids must be 1-D"),
    ],
    ids=repr,
)
def test_kept_labels_bad_examples(keep, example, error, match):
    with pytest.raises(error, match=match):
        keep([{"input_ids": ROW, "labels": ROW_LABELS}, example][1:])


def test_kept_labels_documented_results(keep):
    """Empty rows pad; an empty batch is refused; a huge pad_to_multiple_of is numpy's MemoryError."""
    out = keep([{"input_ids": [], "labels": []}, {"input_ids": ROW, "labels": ROW_LABELS}])
    assert out["labels"].tolist() == [[-100] * 5, ROW_LABELS]
    with pytest.raises(ValueError, match="the batch is empty"):
        keep([])
    huge = DataCollatorForCompletionOnlyLM(
        tokenizer=keep.tokenizer, pad_token_id=PAD, labels="keep", pad_to_multiple_of=2**40
    )
    with pytest.raises(MemoryError):
        huge([{"input_ids": ROW, "labels": ROW_LABELS}])


@pytest.mark.parametrize(
    "labels",
    [[-1, -100, 9], [10**9, -100, 9], np.array([2**64 - 1, 0, 9], dtype=np.uint64)],
    ids=["-1", "1e9", "uint64 max"],
)
def test_kept_labels_outside_the_vocabulary_are_refused(keep, labels):
    with pytest.raises(ValueError, match=r"row 0: label(s holds a uint64 value| .* at position 0)"):
        keep([{"input_ids": [6, 7, 9], "labels": labels}])


@pytest.mark.parametrize(
    ("example", "match"),
    [
        ({"input_ids": [6, [7], 9], "labels": [1, 2, 3]}, "row 0: .*input_ids"),
        ({"input_ids": [6, 7], "labels": [[1], [2, 3]]}, "row 0: .*labels"),
        ({"input_ids": torch.empty(3, dtype=torch.long, device="meta"), "labels": [1, 2, 3]}, "row 0: .*meta"),
        ({"input_ids": np.array([2**64 - 1, 0], dtype=np.uint64), "labels": [1, 2]}, "row 0: .*beyond int64"),
    ],
    ids=["nested ids", "ragged labels", "meta tensor", "uint64 ids"],
)
def test_kept_labels_unreadable_rows_name_the_row(keep, example, match):
    with pytest.raises((ValueError, TypeError), match=match):
        keep([example])


# -- tokenize_and_mask (preprocessing entry point) -------------------------------------------------


def test_tokenize_and_mask_hostile_inputs():
    from sftmask import tokenize_and_mask

    gpt2 = str(tokenizer_path("gpt2"))
    out = tokenize_and_mask(["", "Q: \x00 A: yo"], gpt2, "A:", on_missing="ignore")
    assert out["input_ids"][0] == [] and out["labels"][1][-1] == out["input_ids"][1][-1]
    assert tokenize_and_mask([], gpt2, "A:") == {"input_ids": [], "labels": []}
    with pytest.raises(TypeError, match="row 1: expected a string or a conversation"):
        tokenize_and_mask(["a", 5], gpt2, "A:")
    with pytest.raises(TypeError, match=r"row 0: expected a string or a conversation .* got bytes"):
        tokenize_and_mask([b"a"], gpt2, "A:")
    with pytest.raises(TypeError, match="wrap a single one in a list"):
        tokenize_and_mask("Q: a", gpt2, "A:")
    with pytest.raises(ValueError, match="max_length must be a positive int"):
        tokenize_and_mask(["a"], gpt2, "A:", max_length=0)
    long = tokenize_and_mask(["A: " + "yo " * 300_000], gpt2, "A:")
    assert len(long["input_ids"][0]) == 300_003


def test_tokenize_and_mask_surrogate_names_the_row():
    from sftmask import tokenize_and_mask

    with pytest.raises(ValueError, match="row 1: "):
        tokenize_and_mask(["ok", "Q: hi\ud800 A: yo"], str(tokenizer_path("gpt2")), "A:")
