"""Reading a dataset for ``sftmask check``: JSON Lines, JSON, Parquet or a saved ``datasets`` folder,
as chunks of one column.

>>> from sftmask.check.readers import open_source
>>> source = open_source("train.jsonl")  # doctest: +SKIP
>>> source.format, source.num_rows, source.columns  # doctest: +SKIP
('jsonl', 64, ['messages'])
>>> next(source.chunks("messages", 2))  # the first two rows' values  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sftmask.check.errors import CheckError, first_line

#: Columns read when ``--column`` is not given, in this order.
DEFAULT_COLUMNS = ("input_ids", "messages", "text")

#: What a .json/.jsonl file may hold, for the message when it holds something else.
JSON_FORMATS = (
    "expected JSON Lines (one object per line), a JSON array of row objects, or a JSON object holding "
    'one such array (e.g. {"data": [...]}) or equal-length columns (e.g. {"text": [...]})'
)


@dataclass
class Source:
    """A dataset to scan: its size, columns, and its rows in chunks of one column.

    ``chunks(column, size)`` yields lists of at most ``size`` values of ``column``, in row order.
    """

    path: str
    format: str
    num_rows: int
    columns: list[str]
    chunks: Callable[[str, int], Iterator[list[Any]]]


def _jsonl_source(path: Path) -> Source:
    def lines() -> Iterator[tuple[int, str]]:
        try:
            with open(path, encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    if line.strip():
                        yield number, line
        except UnicodeDecodeError as e:
            raise CheckError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None

    def parse(number: int, line: str) -> dict[str, Any]:
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise CheckError(f"{path}:{number}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise CheckError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
        return row

    num_rows = sum(1 for _ in lines())
    first = next(lines(), None)
    columns = list(parse(*first)) if first else []

    def chunks(column: str, size: int) -> Iterator[list[Any]]:
        chunk: list[Any] = []
        for number, line in lines():
            row = parse(number, line)
            if column not in row:
                raise CheckError(f"{path}:{number}: no {column!r} key in this row")
            chunk.append(row[column])
            if len(chunk) == size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    return Source(str(path), "jsonl", num_rows, columns, chunks)


def _rows_source(path: Path, rows: list[Any], where: str) -> Source:
    """A JSON array of row objects (the whole file, or one value of its top-level object)."""
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise CheckError(f"{path}: item {i + 1} of {where} is {type(r).__name__}: expected a JSON object per row")
    columns = list(rows[0]) if rows else []

    def chunks(column: str, size: int) -> Iterator[list[Any]]:
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            for i, r in enumerate(chunk):
                if column not in r:
                    raise CheckError(f"{path}: row {start + i + 1} has no {column!r} key")
            yield [r[column] for r in chunk]

    return Source(str(path), "json", len(rows), columns, chunks)


def _columns_source(path: Path, table: dict[str, list[Any]]) -> Source:
    """A JSON object of equal-length columns, ``{"text": [...], "id": [...]}``."""

    def chunks(column: str, size: int) -> Iterator[list[Any]]:
        values = table[column]
        for start in range(0, len(values), size):
            yield values[start : start + size]

    num_rows = len(next(iter(table.values())))
    return Source(str(path), "json", num_rows, list(table), chunks)


def _object_source(path: Path, obj: dict[str, Any]) -> Source:
    row_lists = [k for k, v in obj.items() if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)]
    if len(row_lists) == 1:  # {"data": [{...}, …]}, other keys (a version, a name) are metadata
        return _rows_source(path, obj[row_lists[0]], f"the {row_lists[0]!r} array")
    lengths = {len(v) if isinstance(v, list) else -1 for v in obj.values()}
    if len(lengths) == 1 and -1 not in lengths:
        return _columns_source(path, obj)
    keys = ", ".join(map(repr, list(obj)[:8])) or "none"
    raise CheckError(f"{path}: a JSON object with keys {keys}, but not rows or columns: {JSON_FORMATS}")


def _json_source(path: Path) -> Source:
    """JSON Lines, or one JSON document (array or object), told apart by the first line."""
    first = None
    try:
        with open(path, encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), None)
    except UnicodeDecodeError:
        pass  # _jsonl_source names the byte
    if first is None:
        return _jsonl_source(path)
    try:
        head: Any = json.loads(first)
    except json.JSONDecodeError:
        head = None  # a document spread over lines (pretty-printed), or broken
    if isinstance(head, dict):
        return _jsonl_source(path)
    try:
        whole = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        if head is not None:  # lines of JSON, but not objects: let the line reader name the line
            return _jsonl_source(path)
        raise CheckError(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}): {JSON_FORMATS}"
        ) from None
    if isinstance(whole, list):
        return _rows_source(path, whole, "the JSON array")
    if isinstance(whole, dict):
        return _object_source(path, whole)
    raise CheckError(f"{path}: holds a JSON {type(whole).__name__}: {JSON_FORMATS}")


def _parquet_source(path: Path) -> Source:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise CheckError("reading Parquet needs pyarrow: pip install pyarrow") from None
    try:
        file = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid and friends
        raise CheckError(f"{path}: not a readable Parquet file ({first_line(e)})") from None

    def chunks(column: str, size: int) -> Iterator[list[Any]]:
        for batch in file.iter_batches(batch_size=size, columns=[column]):
            yield batch.column(0).to_pylist()

    return Source(str(path), "parquet", file.metadata.num_rows, list(file.schema_arrow.names), chunks)


def _datasets_source(path: Path, split: str | None) -> Source:
    try:
        import datasets
    except ImportError:
        raise CheckError("reading a saved datasets folder needs the datasets package: pip install datasets") from None
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise CheckError(f"{path}: cannot load the saved dataset ({first_line(e)})") from None
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds)
        if split is None:
            split = "train" if "train" in ds else splits[0] if len(splits) == 1 else None
            if split is None:
                raise CheckError(f"{path} holds several splits ({', '.join(splits)}): pick one with --split")
        if split not in ds:
            raise CheckError(f"{path} has no split {split!r} (splits: {', '.join(splits)})")
        ds = ds[split]
    elif split is not None:
        raise CheckError(f"{path} is a single dataset, not a DatasetDict: drop --split")

    def chunks(column: str, size: int) -> Iterator[list[Any]]:
        table = ds.select_columns([column])
        for start in range(0, len(table), size):
            yield table[start : start + size][column]

    return Source(str(path), "datasets", len(ds), list(ds.column_names), chunks)


def open_source(data: str, split: str | None = None) -> Source:
    """The dataset at ``data``: a .jsonl/.json/.parquet file or a ``save_to_disk`` folder.

    >>> open_source("no/such/file.jsonl")
    Traceback (most recent call last):
    ...
    sftmask.check.errors.CheckError: no such file or folder: no/such/file.jsonl
    """
    path = Path(data)
    if not path.exists():
        raise CheckError(f"no such file or folder: {data}")
    if path.is_dir():
        if any((path / n).is_file() for n in ("dataset_dict.json", "state.json", "dataset_info.json")):
            return _datasets_source(path, split)
        raise CheckError(f"{data} is a folder but not a saved datasets dataset (no state.json or dataset_dict.json)")
    if split is not None:
        raise CheckError("--split is for saved datasets folders")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return _json_source(path)
    if suffix in (".parquet", ".pq"):
        return _parquet_source(path)
    raise CheckError(f"cannot tell the format of {data}: expected .jsonl, .json, .parquet or a saved datasets folder")


def pick_column(source: Source, wanted: str | None) -> str:
    """``--column``, checked, or the first of :data:`DEFAULT_COLUMNS` the data has."""
    if wanted is not None:
        if source.columns and wanted not in source.columns:
            raise CheckError(f"no column {wanted!r} in {source.path} (columns: {', '.join(source.columns)})")
        return wanted
    for name in DEFAULT_COLUMNS:
        if name in source.columns:
            return name
    shown = ", ".join(source.columns) if source.columns else "none"
    raise CheckError(
        f"{source.path} has no 'text', 'messages' or 'input_ids' column (columns: {shown}); pick one with --column"
    )


def column_kind(source: Source, column: str) -> str:
    """``"text"``, ``"messages"`` or ``"input_ids"``: what the column's first non-null value is."""
    value = next((v for chunk in source.chunks(column, 64) for v in chunk if v is not None), None)
    if value is None:
        raise CheckError(f"column {column!r} of {source.path} holds no values")
    if isinstance(value, str):
        return "text"
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        items = value.tolist() if hasattr(value, "tolist") else value
        if all(isinstance(m, dict) for m in items):
            return "messages"
        if all(isinstance(i, int) and not isinstance(i, bool) for i in items):
            return "input_ids"
    raise CheckError(
        f"column {column!r} holds {type(value).__name__} values: expected text (str), messages "
        "(a list of {'role', 'content'} objects) or input_ids (a list of ints)"
    )
