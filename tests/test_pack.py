"""sftmask.pack and the collator on packed rows (docs/packing.md).

Truth here is independent of src/: token identity (every token of the input carries a unique id,
so where it lands can be traced without the packer's own bookkeeping), a best-fit decreasing
packer written here from its textbook definition, the collator's own behaviour on the unpacked
sequences, and a tiny Llama run sequence by sequence. The comparison with TRL 1.x's
``pack_dataset`` runs in the TRL 1.x environment (tests/test_trl_latest.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sftmask
from conftest import load_hf_tokenizer, tiny_llama
from sftmask.pack import PACKED_COLUMNS  # the module (sftmask.pack itself is the function)

IGNORE = -100


def unique_rows(lengths: list[int], trained_every: int = 3) -> list[dict]:
    """Rows whose ids are globally unique (1, 2, 3, …); every `trained_every`-th label trained."""
    rows, next_id = [], 1
    for n in lengths:
        ids = list(range(next_id, next_id + n))
        next_id += n
        labels = [i if i % trained_every else IGNORE for i in ids]
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def best_fit_decreasing_bins(lengths: list[int], max_length: int) -> int:
    """Bins used by best-fit decreasing, by scanning every bin (the textbook rule)."""
    room: list[int] = []
    for n in sorted((min(n, max_length) for n in lengths if n > 0), reverse=True):
        fits = [(r, b) for b, r in enumerate(room) if r >= n]
        if fits:
            room[min(fits)[1]] -= n
        else:
            room.append(max_length - n)
    return len(room)


@settings(max_examples=150, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 60), max_size=40),
    max_length=st.integers(1, 48),
    truncation=st.sampled_from(["right", "split"]),
)
def test_every_token_lands_once(lengths, max_length, truncation):
    rows = unique_rows(lengths)
    bins, stats = sftmask.pack(rows, max_length, truncation=truncation, return_stats=True)
    where: dict[int, int] = {}  # token id -> bin
    pieces: dict[int, list[list[int]]] = {}  # row -> its sequences' ids, in the order found
    row_of = {i: r for r, row in enumerate(rows) for i in row["input_ids"]}
    label_of = {i: lab for row in rows for i, lab in zip(row["input_ids"], row["labels"])}
    for b, packed in enumerate(bins):
        ids = packed["input_ids"].tolist()
        assert 0 < len(ids) <= max_length
        assert packed["labels"].tolist() == [label_of[i] for i in ids]  # labels travel with their token
        assert sum(packed["seq_lengths"].tolist()) == len(ids)
        start = 0
        for n in packed["seq_lengths"].tolist():
            seq = ids[start : start + n]
            assert packed["position_ids"][start : start + n].tolist() == list(range(n))
            # A sequence is a contiguous run of one row, in the row's order.
            assert len({row_of[i] for i in seq}) == 1 and seq == list(range(seq[0], seq[0] + n))
            pieces.setdefault(row_of[seq[0]], []).append(seq)
            start += n
        for i in ids:
            assert i not in where, "a token was packed twice"
            where[i] = b
    for r, row in enumerate(rows):
        ids = row["input_ids"]
        kept = sorted(pieces.get(r, []))
        flat = [i for seq in kept for i in seq]
        if truncation == "split":
            assert flat == ids
            assert all(len(seq) == max_length for seq in kept[:-1])
        else:
            assert flat == ids[:max_length]
    assert stats.tokens == len(where)
    assert stats.bins == len(bins)
    assert stats.rows_empty == lengths.count(0)
    assert stats.trained_tokens == sum(label_of[i] != IGNORE for i in where)
    long_rows = sum(n > max_length for n in lengths)
    assert (stats.rows_truncated, stats.rows_split) == ((long_rows, 0) if truncation == "right" else (0, long_rows))
    if truncation == "right":
        assert stats.bins == best_fit_decreasing_bins(lengths, max_length)
        assert stats.tokens_dropped == sum(max(0, n - max_length) for n in lengths)
    if bins:
        assert stats.fill_ratio == pytest.approx(stats.tokens / (stats.bins * max_length))


def test_input_forms_agree():
    import pyarrow as pa

    rows = unique_rows([5, 9, 2, 7, 3, 1])
    as_list = sftmask.pack(rows, 10)
    columns = {k: [r[k] for r in rows] for k in ("input_ids", "labels")}
    as_columns = sftmask.pack(columns, 10)
    as_numpy = sftmask.pack([{k: np.asarray(v, dtype=np.int32) for k, v in r.items()} for r in rows], 10)
    table = pa.table({"input_ids": columns["input_ids"], "labels": columns["labels"], "other": list(range(6))})
    as_table = sftmask.pack(table.slice(0), 10).to_pydict()
    for key in PACKED_COLUMNS:
        expected = [b[key].tolist() for b in as_list]
        assert [v.tolist() for v in as_columns[key]] == expected
        assert [b[key].tolist() for b in as_numpy] == expected
        assert as_table[key] == expected
    # A slice of a table (what datasets hands a batched map after the first batch).
    assert sftmask.pack(table.slice(2), 10).to_pydict()["input_ids"] == [
        b["input_ids"].tolist() for b in sftmask.pack(rows[2:], 10)
    ]


def test_datasets_map():
    datasets = pytest.importorskip("datasets")
    rows = unique_rows([5, 9, 2, 7, 3, 1, 8])
    ds = datasets.Dataset.from_list([{**r, "text": "x"} for r in rows])
    packed = ds.map(sftmask.pack, batched=True, remove_columns=ds.column_names, fn_kwargs={"max_length": 10})
    assert packed.column_names == ["input_ids", "labels", "position_ids", "seq_lengths"]
    assert packed["input_ids"] == [b["input_ids"].tolist() for b in sftmask.pack(rows, 10)]
    arrow = ds.with_format("arrow").map(
        sftmask.pack, batched=True, remove_columns=ds.column_names, fn_kwargs={"max_length": 10}
    )
    assert arrow["seq_lengths"].to_pylist() == packed["seq_lengths"]


def test_errors():
    with pytest.raises(sftmask.OptionError, match="max_length"):
        sftmask.pack(unique_rows([3]), 0)
    with pytest.raises(sftmask.OptionError, match="truncation"):
        sftmask.pack(unique_rows([3]), 4, truncation="left")
    with pytest.raises(sftmask.RowError) as e:
        sftmask.pack([{"input_ids": [1, 2], "labels": [1, 2]}, {"input_ids": [1, 2], "labels": [1]}], 4)
    assert e.value.row == 1
    with pytest.raises(sftmask.RowError) as e:
        sftmask.pack([{"input_ids": [1, 2], "labels": [1, 2]}, {"input_ids": [3]}], 4)
    assert e.value.row == 1
    with pytest.raises(sftmask.OptionError, match="labels"):
        sftmask.pack({"input_ids": [[1]]}, 4)
    assert sftmask.pack([], 4) == []
    import pyarrow as pa

    table = pa.table({"input_ids": [[1, 2], [3, 4, 5]], "labels": [[1, 2], [3, 4]]})
    with pytest.raises(sftmask.RowError) as e:
        sftmask.pack(table, 4)
    assert e.value.row == 1
    with pytest.raises(sftmask.OptionError, match="offsets"):
        sftmask._core.pack(np.arange(5), np.arange(5), 4, offsets=[0, 3, 2, 5])
    with pytest.raises(sftmask.OptionError, match="offsets"):
        sftmask._core.pack(np.arange(5), np.arange(5), 4, offsets=[0, 3])


# -- the collator on packed rows (docs/packing.md#collating-packed-rows) -----------------------


@pytest.fixture(scope="module")
def tok():
    return load_hf_tokenizer("qwen2")


def _collator(tok, padding_free):
    return sftmask.DataCollatorForCompletionOnlyLM(
        tokenizer=tok, labels="keep", padding_free=padding_free, return_tensors="np"
    )


def _small_vocab_rows(lengths, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for n in lengths:
        ids = rng.integers(1, 1000, n)
        labels = np.where(rng.random(n) < 0.6, ids, IGNORE)
        rows.append({"input_ids": ids.tolist(), "labels": labels.tolist()})
    return rows


@pytest.mark.parametrize("boundaries", ["seq_lengths", "position_ids", "both"])
def test_flat_batch_follows_sequences(tok, boundaries):
    rows = _small_vocab_rows([7, 3, 12, 5, 9, 1, 4])
    bins = sftmask.pack(rows, 16)
    drop = {"seq_lengths": "position_ids", "position_ids": "seq_lengths", "both": None}[boundaries]
    examples = [{k: v for k, v in b.items() if k != drop} for b in bins]
    collator = _collator(tok, padding_free=True)
    got = collator(examples)
    # Truth: the same sequences, unpacked, collated as separate examples.
    sequences = []
    for b in bins:
        start = 0
        for n in b["seq_lengths"].tolist():
            sequences.append({k: b[k][start : start + n].tolist() for k in ("input_ids", "labels")})
            start += n
    want = _collator(tok, padding_free=True)(sequences)
    for key in ("input_ids", "labels", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k"):
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert got["max_length_q"] == want["max_length_q"] == max(len(s["input_ids"]) for s in sequences)
    starts = want["cu_seq_lens_q"][:-1]
    assert (got["labels"][0, starts] == IGNORE).all()
    assert collator.stats.trained_tokens == int((got["labels"] != IGNORE).sum())


def test_padded_bins_keep_positions(tok):
    rows = _small_vocab_rows([7, 3, 12, 5, 9])
    bins = sftmask.pack(rows, 16)
    collator = _collator(tok, padding_free=False)
    got = collator(bins)
    width = max(len(b["input_ids"]) for b in bins)
    assert got["input_ids"].shape == got["position_ids"].shape == (len(bins), width)
    for r, b in enumerate(bins):
        n = len(b["input_ids"])
        np.testing.assert_array_equal(got["position_ids"][r, :n], b["position_ids"])
        assert (got["position_ids"][r, n:] == 0).all()
        labels = b["labels"].copy()
        starts = np.cumsum(b["seq_lengths"])[:-1]  # every sequence after the first
        labels[starts] = IGNORE
        np.testing.assert_array_equal(got["labels"][r, :n], labels)
        assert (got["attention_mask"][r, :n] == 1).all()
    # Unpacked rows are untouched: no position_ids in a padded batch.
    assert "position_ids" not in collator([{k: r[k] for k in ("input_ids", "labels")} for r in rows])


def test_bad_seq_lengths(tok):
    collator = _collator(tok, padding_free=True)
    with pytest.raises(sftmask.RowError) as e:
        collator(
            [{"input_ids": [1, 2], "labels": [1, 2]}, {"input_ids": [1, 2, 3], "labels": [1, 2, 3], "seq_lengths": [2]}]
        )
    assert e.value.row == 1


# -- a tiny Llama: no attention or loss crosses a sequence ---------------------------------------


def block_diagonal_mask(cu_seq_lens, total):
    """The additive [1, 1, T, T] mask of causal attention within each sequence: what a varlen
    (flash) kernel computes from ``cu_seq_lens``. transformers' eager and sdpa attention on CPU
    (4.57 and 5.x) do not isolate sequences from ``position_ids`` alone, so the CPU test hands them
    this mask; it is built from the collator's ``cu_seq_lens_q``, so a wrong boundary shows."""
    import torch

    seg = torch.zeros(total, dtype=torch.long)
    for i, (a, b) in enumerate(zip(cu_seq_lens[:-1], cu_seq_lens[1:])):
        seg[int(a) : int(b)] = i
    allowed = (seg[:, None] == seg[None, :]) & torch.ones(total, total, dtype=torch.bool).tril()
    return torch.zeros(total, total).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]


def test_packed_loss_equals_sequence_losses(tok):
    import torch

    rows = _small_vocab_rows([9, 4, 13, 6, 11, 3, 7], seed=3)
    bins = sftmask.pack(rows, 16)
    collator = sftmask.DataCollatorForCompletionOnlyLM(tokenizer=tok, labels="keep", padding_free=True)
    batch = collator(bins)
    model = tiny_llama(1000, attn_implementation="eager").eval()
    total = batch["input_ids"].shape[1]
    mask = block_diagonal_mask(batch["cu_seq_lens_q"], total)
    with torch.no_grad():
        packed = model(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            attention_mask=mask,
            labels=batch["labels"],
        ).loss
        # Truth: each original row alone, its own labels (the model's shift drops the first).
        loss_sum, count = 0.0, 0
        for row in rows:
            ids = torch.tensor([row["input_ids"]])
            labels = torch.tensor([row["labels"]])
            n = int((labels[0, 1:] != IGNORE).sum())
            if n:
                loss_sum += model(input_ids=ids, labels=labels).loss.item() * n
                count += n
        # The control: the same flat batch without the mask lets attention cross sequences.
        leaky = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"]).loss
    assert packed.item() == pytest.approx(loss_sum / count, rel=1e-5)
    assert leaky.item() != pytest.approx(loss_sum / count, rel=1e-5)
