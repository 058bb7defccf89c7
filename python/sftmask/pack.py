"""Packing: masked rows into bins of at most ``max_length`` tokens (best-fit decreasing, in Rust).

>>> from sftmask import pack
>>> bins = pack([{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]},
...              {"input_ids": [4, 5], "labels": [-100, 5]}], 4)
>>> [b["seq_lengths"].tolist() for b in bins]
[[3], [2]]

With ``datasets`` (the packed columns replace the rows, so drop the old columns):

>>> ds = ds.map(pack, batched=True, batch_size=10_000, remove_columns=ds.column_names,
...             fn_kwargs={"max_length": 2048})  # doctest: +SKIP

See ``docs/packing.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sftmask._core import OptionError, OptionTypeError, PackStats
from sftmask._core import pack as _pack
from sftmask._errors import row_error

#: The columns of a packed bin.
PACKED_COLUMNS = ("input_ids", "labels", "position_ids", "seq_lengths")


def _arrow_flat(column: Any) -> tuple[np.ndarray, np.ndarray]:
    """A pyarrow list column as its values and row offsets from 0 (no copy of the values)."""
    if hasattr(column, "combine_chunks"):
        column = column.combine_chunks()
    offsets = column.offsets.to_numpy()
    values = column.flatten().to_numpy(zero_copy_only=False)  # flatten() honours a slice's offset
    return values, offsets - offsets[0]


def _arrow_columns(ids: Any, labels: Any) -> tuple[Any, Any, np.ndarray | None]:
    """Flat values and shared offsets; per-row views when the two columns' rows differ in length
    (so that the core names the first such row)."""
    (id_values, id_offsets), (label_values, label_offsets) = _arrow_flat(ids), _arrow_flat(labels)
    if np.array_equal(id_offsets, label_offsets):
        return id_values, label_values, id_offsets
    return np.split(id_values, id_offsets[1:-1]), np.split(label_values, label_offsets[1:-1]), None


def _is_arrow(obj: Any) -> bool:
    return type(obj).__module__.startswith("pyarrow") and hasattr(obj, "column_names")


def _columns(rows: Any) -> tuple[Any, Any, np.ndarray | None, str]:
    """``(input_ids, labels, offsets, kind)`` of any accepted input: rows, or flat values with
    their offsets (Arrow input)."""
    if _is_arrow(rows):
        for key in ("input_ids", "labels"):
            if key not in rows.column_names:
                raise OptionError(f"the table has no {key!r} column")
        return (*_arrow_columns(rows.column("input_ids"), rows.column("labels")), "arrow")
    if isinstance(rows, Mapping):
        for key in ("input_ids", "labels"):
            if key not in rows:
                raise OptionError(f"the batch has no {key!r} column (pack takes masked rows: input_ids and labels)")
        ids, labels = rows["input_ids"], rows["labels"]
        if _is_arrow_array(ids) and _is_arrow_array(labels):
            return (*_arrow_columns(ids, labels), "columns")
        return ids, labels, None, "columns"
    if isinstance(rows, (str, bytes)) or not isinstance(rows, (Sequence, np.ndarray)):
        raise OptionTypeError(
            "rows must be a list of dicts with 'input_ids' and 'labels', a dict of those columns "
            f"(a datasets batch) or an Arrow table, got {type(rows).__name__}"
        )
    ids, labels = [], []
    for r, row in enumerate(rows):
        if not isinstance(row, Mapping) or "input_ids" not in row or "labels" not in row:
            raise row_error(r, "every row must be a dict with 'input_ids' and 'labels'")
        ids.append(row["input_ids"])
        labels.append(row["labels"])
    return ids, labels, None, "rows"


def _is_arrow_array(obj: Any) -> bool:
    return type(obj).__module__.startswith("pyarrow") and (hasattr(obj, "offsets") or hasattr(obj, "combine_chunks"))


def pack(
    rows: Any,
    max_length: int,
    *,
    truncation: str = "right",
    ignore_index: int = -100,
    return_stats: bool = False,
) -> Any:
    """Packs tokenized, masked rows into bins of at most ``max_length`` tokens.

    Best-fit decreasing: longest sequence first, each into the fullest bin it still fits
    (ties: the lower row, the older bin), so the result depends only on the rows' lengths and
    order. A row longer than ``max_length`` is cut to its first ``max_length`` tokens
    (``truncation="right"``) or into ``max_length`` pieces, each its own sequence (``"split"``);
    empty rows hold nothing and are left out (counted in ``PackStats.rows_empty``).

    Args:
        rows: a list of dicts with ``input_ids`` and ``labels`` (lists or 1-D int arrays), a dict
            of those two columns (a ``datasets`` batch, for ``ds.map(pack, batched=True)``), or a
            ``pyarrow`` table / record batch with them.
        max_length: the bin size, in tokens.
        truncation: ``"right"`` or ``"split"``.
        ignore_index: the label of untrained tokens (for ``PackStats.trained_tokens``).
        return_stats: return ``(packed, PackStats)`` instead of ``packed``.

    Returns:
        Bins, each with ``input_ids`` and ``labels`` (as given), ``position_ids`` (restarting at 0
        per sequence) and ``seq_lengths`` (int64 numpy arrays): a list of dicts for a list of rows,
        a dict of columns (one entry per bin) for a dict of columns, a ``pyarrow.Table`` for a
        table. Labels are not changed: the collator (``labels="keep"``) masks the first label of
        every sequence.

    >>> packed, stats = pack({"input_ids": [[1, 2, 3], [4, 5], [6]], "labels": [[1, 2, 3], [4, 5], [6]]},
    ...                      4, return_stats=True)
    >>> packed["seq_lengths"][0].tolist(), stats.bins, stats.fill_ratio
    ([3, 1], 2, 0.75)
    """
    if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length <= 0:
        raise OptionError(f"max_length must be a positive int, got {max_length!r}")
    ids, labels, offsets, kind = _columns(rows)
    arrays, stats = _pack(
        ids, labels, int(max_length), truncation=truncation, ignore_index=ignore_index, offsets=offsets
    )
    bounds = arrays["bin_offsets"][1:-1]
    seq_bounds = arrays["seq_offsets"][1:-1]
    bins = int(stats.bins)

    def split(values: np.ndarray, at: np.ndarray) -> list[np.ndarray]:
        return np.split(values, at) if bins else []

    columns = {
        "input_ids": split(arrays["input_ids"], bounds),
        "labels": split(arrays["labels"], bounds),
        "position_ids": split(arrays["position_ids"], bounds),
        "seq_lengths": split(arrays["seq_lengths"], seq_bounds),
    }
    out: Any
    if kind == "rows":
        out = [dict(zip(PACKED_COLUMNS, values)) for values in zip(*(columns[c] for c in PACKED_COLUMNS))]
    elif kind == "arrow":
        import pyarrow as pa

        def lists(values: np.ndarray, offsets: np.ndarray) -> Any:
            # int32 offsets (list<int64>) unless the column outgrows them.
            if offsets[-1] < 2**31:
                return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values))
            return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))

        out = pa.table(
            {
                "input_ids": lists(arrays["input_ids"], arrays["bin_offsets"]),
                "labels": lists(arrays["labels"], arrays["bin_offsets"]),
                "position_ids": lists(arrays["position_ids"], arrays["bin_offsets"]),
                "seq_lengths": lists(arrays["seq_lengths"], arrays["seq_offsets"]),
            }
        )
    else:
        out = columns
    return (out, stats) if return_stats else out


__all__ = ["PACKED_COLUMNS", "PackStats", "pack"]
