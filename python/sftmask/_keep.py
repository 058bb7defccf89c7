"""``labels="keep"``: pad (or flatten) a batch whose labels were computed beforehand.

The examples carry their own ``labels`` (from ``sftmask.tokenize_and_mask``, TRL's
``completion_mask`` pipeline, or anything else); nothing is searched. Padding gets
``ignore_index`` by position, and in a flattened batch the first label of each sequence does too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _row_array(value: Any, row: int, key: str) -> np.ndarray:
    try:
        if hasattr(value, "numpy") and hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu().numpy()
        arr = np.asarray(value)
    except (ValueError, TypeError, RuntimeError, NotImplementedError) as e:
        # ragged/nested lists, tensors on the meta device, …: say which row and which key
        raise ValueError(f"row {row}: cannot read {key}: {e}") from None
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError(f"row {row}: {key} must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"row {row}: {key} must hold ints, got {arr.dtype}")
    if arr.dtype == np.uint64 and int(arr.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"row {row}: {key} holds a uint64 value beyond int64")
    return arr.astype(np.int64, copy=False)


def collate_kept(
    examples: Sequence[Any],
    *,
    pad_token_id: int | None,
    padding_side: str,
    pad_to_multiple_of: int | None,
    padding_free: bool,
    ignore_index: int,
    vocab_size: int,
) -> tuple[dict[str, Any], tuple[int, int, int, int]]:
    """Returns ``(arrays, (rows, rows_without_trained_tokens, tokens, trained))``."""
    if len(examples) == 0:
        raise ValueError("the batch is empty: pass at least one example")
    ids_rows, label_rows = [], []
    for r, example in enumerate(examples):
        if not isinstance(example, Mapping) or "labels" not in example or "input_ids" not in example:
            raise ValueError(f"row {r}: with labels='keep' every example must be a dict with 'input_ids' and 'labels'")
        ids = _row_array(example["input_ids"], r, "input_ids")
        labels = _row_array(example["labels"], r, "labels")
        if len(ids) != len(labels):
            raise ValueError(f"row {r}: {len(labels)} labels for {len(ids)} input_ids")
        ids_rows.append(ids)
        label_rows.append(labels)
    lengths = np.fromiter((len(a) for a in ids_rows), dtype=np.int64, count=len(ids_rows))
    flat_ids = np.concatenate(ids_rows)
    flat_labels = np.concatenate(label_rows)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    bad = np.flatnonzero((flat_ids < 0) | (flat_ids >= vocab_size))
    if bad.size:
        at = int(bad[0])
        # The last row starting at or before `at` (empty rows share their start with the next row).
        row = int(np.searchsorted(starts, at, side="right") - 1)
        value = int(flat_ids[at])
        why = "is negative" if value < 0 else f"is not in the vocabulary (size {vocab_size})"
        raise ValueError(f"row {row}: token id {value} at position {at - int(starts[row])} {why}")

    # A kept label must be ignore_index or a token id: anything else fails much later, in the loss.
    bad = np.flatnonzero((flat_labels != ignore_index) & ((flat_labels < 0) | (flat_labels >= vocab_size)))
    if bad.size:
        at = int(bad[0])
        row = int(np.searchsorted(starts, at, side="right") - 1)
        raise ValueError(
            f"row {row}: label {int(flat_labels[at])} at position {at - int(starts[row])} is neither "
            f"ignore_index ({ignore_index}) nor a token id (vocabulary size {vocab_size})"
        )

    if padding_free:
        labels = flat_labels.copy()
        labels[starts[lengths > 0]] = ignore_index  # no previous token in its own sequence
        positions = np.arange(flat_ids.size, dtype=np.int64) - np.repeat(starts, lengths)
        cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        longest = int(lengths.max())
        arrays: dict[str, Any] = {
            "input_ids": flat_ids.reshape(1, -1).copy(),
            "labels": labels.reshape(1, -1),
            "position_ids": positions.reshape(1, -1),
            "cu_seq_lens_q": cu,
            "cu_seq_lens_k": cu,
            "max_length_q": longest,
            "max_length_k": longest,
        }
        trained_labels = labels
    else:
        if pad_token_id is None:
            raise ValueError("padding needs a pad token: pass pad_token_id=… or use padding_free=True")
        width = int(lengths.max())
        if pad_to_multiple_of:
            width = (width + pad_to_multiple_of - 1) // pad_to_multiple_of * pad_to_multiple_of
        columns = np.arange(width)[None, :]
        if padding_side == "left":
            real = columns >= (width - lengths)[:, None]
        else:
            real = columns < lengths[:, None]
        input_ids = np.full((len(examples), width), pad_token_id, dtype=np.int64)
        input_ids[real] = flat_ids
        labels = np.full((len(examples), width), ignore_index, dtype=np.int64)
        labels[real] = flat_labels
        arrays = {"input_ids": input_ids, "attention_mask": real.astype(np.int64), "labels": labels}
        trained_labels = flat_labels
    trained_mask = trained_labels != ignore_index
    row_of_token = np.repeat(np.arange(len(examples)), lengths)
    per_row = np.bincount(row_of_token, weights=trained_mask, minlength=len(examples))
    untrained_rows = int((per_row == 0).sum())
    return arrays, (len(examples), untrained_rows, int(flat_ids.size), int(trained_mask.sum()))
