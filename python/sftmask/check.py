"""``sftmask check``: scan a dataset file and report how its rows would be masked.

Reads JSONL, Parquet or a saved ``datasets`` folder; tokenizes a ``text`` column (or renders a
``messages`` column with the tokenizer's chat template, or reads an ``input_ids`` column);
masks every row as the collator would; and reports rows without a response template, the
trained-token fraction, straddling tokens, truncation by ``--max-length``, and the rows TRL's
token matching would lose. ``--format json`` is for CI; ``--fail-if-missing-above`` sets the exit
code so the command can guard a data pipeline.

    sftmask check data.jsonl --tokenizer ./tokenizer --response-template '<|im_start|>assistant\\n'
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

#: Exit codes: 0 fine, 1 ``--fail-if-missing-above`` exceeded, 2 bad input (file, column, tokenizer).
EXIT_OK, EXIT_FAILED_CHECK, EXIT_BAD_INPUT = 0, 1, 2

#: Columns read when ``--column`` is not given, in this order.
DEFAULT_COLUMNS = ("input_ids", "messages", "text")

#: How many row indices the report lists for each kind of problem.
SAMPLE_ROWS = 20


class CheckError(Exception):
    """A problem with the user's input, reported as one line (exit code 2)."""


# ---------------------------------------------------------------------------------------------
# Reading the data.


@dataclass
class Source:
    """A dataset to scan: its size, columns, and its rows in chunks of one column."""

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

    with open(path, "rb") as f:
        head = f.read(1 << 16).lstrip()
    if path.suffix.lower() == ".json" and head.startswith(b"["):
        # A .json file holding one array of objects.
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckError(f"{path}: not valid JSON ({e})") from None
        if not all(isinstance(r, dict) for r in rows):
            raise CheckError(f"{path}: expected an array of JSON objects")
        columns = list(rows[0]) if rows else []

        def array_chunks(column: str, size: int) -> Iterator[list[Any]]:
            for start in range(0, len(rows), size):
                chunk = rows[start : start + size]
                for i, r in enumerate(chunk):
                    if column not in r:
                        raise CheckError(f"{path}: row {start + i} has no {column!r} key")
                yield [r[column] for r in chunk]

        return Source(str(path), "json", len(rows), columns, array_chunks)

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


def _parquet_source(path: Path) -> Source:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise CheckError("reading Parquet needs pyarrow: pip install pyarrow") from None
    try:
        file = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid and friends
        raise CheckError(f"{path}: not a readable Parquet file ({_first_line(e)})") from None

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
        raise CheckError(f"{path}: cannot load the saved dataset ({_first_line(e)})") from None
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
    """The dataset at ``data``: a .jsonl/.json/.parquet file or a ``save_to_disk`` folder."""
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
        return _jsonl_source(path)
    if suffix in (".parquet", ".pq"):
        return _parquet_source(path)
    raise CheckError(f"cannot tell the format of {data}: expected .jsonl, .json, .parquet or a saved datasets folder")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


# ---------------------------------------------------------------------------------------------
# The tokenizer.


class Tokenizer:
    """The ``--tokenizer`` argument: a folder, a tokenizer.json, or a transformers name."""

    def __init__(self, spec: str):
        self.spec = spec
        path = Path(spec)
        self.path: Path | None = path if path.exists() else None
        self._hf: Any = None
        if self.path is not None:
            file = self.path / "tokenizer.json" if self.path.is_dir() else self.path
            if not file.is_file():
                raise CheckError(f"no tokenizer.json in {spec}")
            self.target: Any = self.path
        elif spec.startswith(("/", ".", "~")) or spec.endswith(".json") or spec.count("/") > 1:
            raise CheckError(f"no such tokenizer file or folder: {spec}")
        else:
            self.target = self.transformers()  # a hub name (from the local cache, or downloaded)
        from sftmask import _tokenizer

        try:
            self.info = _tokenizer.resolve(self.target)
        except (ValueError, TypeError, OSError) as e:
            raise CheckError(f"cannot read the tokenizer {spec}: {_first_line(e)}") from None

    def transformers(self) -> Any:
        """The transformers tokenizer (for the chat template), loaded on first use."""
        if self._hf is None:
            try:
                from transformers import AutoTokenizer, PreTrainedTokenizerFast
                from transformers.utils import logging as hf_logging
            except ImportError:
                raise CheckError("rendering messages needs transformers: pip install transformers") from None
            where = self.spec if self.path is None or self.path.is_dir() else str(self.path.parent)
            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()  # our own message says what went wrong
            try:
                try:
                    self._hf = AutoTokenizer.from_pretrained(where)
                except Exception:
                    if self.path is None:
                        raise
                    # A local folder without a model config: tokenizer.json, plus tokenizer_config.json
                    # or chat_template.jinja for the chat template when there is one.
                    self._hf = PreTrainedTokenizerFast.from_pretrained(where)
            except Exception as e:
                raise CheckError(f"cannot load the tokenizer {self.spec} with transformers: {_first_line(e)}") from None
            finally:
                hf_logging.set_verbosity(verbosity)
        return self._hf

    def chat_template_renderer(self) -> Callable[[list[Any]], list[str]]:
        tok = self.transformers()
        if not getattr(tok, "chat_template", None):
            raise CheckError(
                f"the tokenizer {self.spec} has no chat template (tokenizer_config.json 'chat_template' or "
                "chat_template.jinja), so the 'messages' column cannot be rendered: render it into a 'text' "
                "column, or use a tokenizer that has one"
            )

        def render(conversations: list[Any]) -> list[str]:
            return list(tok.apply_chat_template(conversations, tokenize=False))

        return render


def _unescape(template: str) -> str:
    """``\\n``, ``\\t``, ``\\r`` and ``\\\\`` typed on a command line, as the characters they name."""
    out, i = [], 0
    while i < len(template):
        ch = template[i]
        if ch == "\\" and i + 1 < len(template) and template[i + 1] in "ntr\\":
            out.append({"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}[template[i + 1]])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# Progress.


class _SimpleBar:
    """A progress bar on stderr for when tqdm is not installed."""

    def __init__(self, total: int):
        self.total, self.done, self.start, self.shown = total, 0, time.monotonic(), 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.shown >= 0.1 or self.done >= self.total:
            self.shown = now
            frac = self.done / self.total if self.total else 1.0
            bar = "#" * int(frac * 30)
            rate = self.done / max(now - self.start, 1e-9)
            sys.stderr.write(f"\rchecking |{bar:<30}| {self.done}/{self.total} rows ({frac:.0%}, {rate:,.0f} rows/s)")
            sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _SimpleBar(total)
    return tqdm(total=total, unit=" rows", desc="checking", file=sys.stderr, dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------
# The scan.


@dataclass
class Report:
    """What ``sftmask check`` found; ``--format json`` prints it (fields in README.md)."""

    data: str
    format: str
    column: str | None
    column_kind: str | None
    tokenizer: str
    response_template: str
    instruction_templates: list[str]
    train_on: str
    max_length: int | None
    rows: int = 0
    rows_without_template: int = 0
    rows_without_template_cut_by_max_length: int = 0
    rows_truncated: int = 0
    responses_cut_by_max_length: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    straddling_tokens: int = 0
    trl_rows_lost: int = 0
    trl_rows_with_different_labels: int = 0
    rows_without_template_sample: list[int] = field(default_factory=list)
    trl_rows_lost_sample: list[int] = field(default_factory=list)
    fail_if_missing_above: float | None = None
    shown: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rows_without_template_fraction(self) -> float:
        return self.rows_without_template / self.rows if self.rows else 0.0

    @property
    def trained_fraction(self) -> float:
        return self.trained_tokens / self.tokens if self.tokens else 0.0

    @property
    def trl_rows_lost_fraction(self) -> float:
        return self.trl_rows_lost / self.rows if self.rows else 0.0

    @property
    def failed(self) -> bool:
        limit = self.fail_if_missing_above
        return limit is not None and self.rows_without_template_fraction > limit

    def as_json(self) -> dict[str, Any]:
        from sftmask import __version__

        out = {"sftmask_version": __version__}
        out.update({k: v for k, v in self.__dict__.items() if k != "shown"})
        out["rows_without_template_fraction"] = self.rows_without_template_fraction
        out["trained_fraction"] = self.trained_fraction
        out["trl_rows_lost_fraction"] = self.trl_rows_lost_fraction
        out["failed"] = self.failed
        out["shown"] = self.shown
        return out


def _column_kind(value: Any, column: str) -> str:
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


def _pick_column(source: Source, wanted: str | None) -> str:
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


def _first_value(source: Source, column: str) -> Any:
    for chunk in source.chunks(column, 64):
        for value in chunk:
            if value is not None:
                return value
    raise CheckError(f"column {column!r} of {source.path} holds no values")


def scan(args: argparse.Namespace) -> tuple[Report, list[tuple[int, str, list[int]]], Any]:
    """Reads, tokenizes and masks every row; returns the report, the rows to show, and what renders them."""
    from sftmask import Masker
    from sftmask.preprocess import _encoder

    source = open_source(args.data, args.split)
    tok = Tokenizer(args.tokenizer)
    response = _unescape(args.response_template)
    instructions = [_unescape(t) for t in args.instruction_template or []]
    if not response:
        raise CheckError("--response-template is empty")
    report = Report(
        data=source.path,
        format=source.format,
        column=None,
        column_kind=None,
        tokenizer=args.tokenizer,
        response_template=response,
        instruction_templates=instructions,
        train_on=args.train_on,
        max_length=args.max_length,
        fail_if_missing_above=args.fail_if_missing_above,
    )
    if source.num_rows == 0:
        return report, [], None
    column = _pick_column(source, args.column)
    kind = _column_kind(_first_value(source, column), column)
    report.column, report.column_kind = column, kind

    vocab = tok.info.vocab
    encoder = _encoder(tok.target)

    def encode_template(text: str) -> list[int]:
        return encoder.encode_batch([text], add_special_tokens=False)[0]

    try:
        # Exact masks padding by position: any id will do when the tokenizer has no pad token.
        fill = tok.info.pad_token_id if tok.info.pad_token_id is not None else 0
        exact = Masker(
            vocab,
            response,
            instructions,
            train_on=args.train_on,
            on_missing="ignore",
            pad_token_id=fill,
            num_threads=args.num_threads,
        )
        # TRL tokenizes each template alone and takes one instruction template (the first here).
        trl_instruction = [encode_template(instructions[0])] if instructions else None
        trl = Masker(
            vocab,
            encode_template(response),
            trl_instruction,
            compat="trl",
            on_missing="ignore",
            pad_token_id=fill,
            num_threads=args.num_threads,
        )
    except (ValueError, TypeError) as e:
        raise CheckError(_first_line(e)) from None

    render_messages = tok.chat_template_renderer() if kind == "messages" else None

    want_show = max(args.show, 0)
    candidates: dict[str, list[tuple[int, list[int]]]] = {"no response template": [], "TRL would lose it": [], "": []}
    max_length = args.max_length
    bar = _progress(source.num_rows, args.progress if args.progress is not None else sys.stderr.isatty())
    offset = 0
    try:
        for chunk in source.chunks(column, args.batch_size):
            if kind == "input_ids":
                rows = [_ids_row(v, offset + i, column) for i, v in enumerate(chunk)]
            else:
                texts = chunk
                if render_messages is not None:
                    texts = _render_chunk(render_messages, chunk, offset, column)
                bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
                if bad is not None:
                    raise CheckError(f"row {offset + bad}: {column!r} is {type(texts[bad]).__name__}, not text")
                rows = encoder.encode_batch(texts, add_special_tokens=kind == "text", num_threads=args.num_threads)
            _scan_chunk(report, rows, offset, exact, trl, fill, max_length, args.num_threads, candidates, want_show)
            offset += len(chunk)
            bar.update(len(chunk))
    finally:
        bar.close()

    shown: list[tuple[int, str, list[int]]] = []
    for reason, items in candidates.items():
        for row, ids in items:
            if len(shown) < want_show and all(row != s[0] for s in shown):
                shown.append((row, reason, ids))
    return report, shown, (exact, vocab)


def _ids_row(value: Any, row: int, column: str) -> list[int]:
    items = value.tolist() if hasattr(value, "tolist") else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
        raise CheckError(f"row {row}: {column!r} is not a list of ints")
    return list(items)


def _render_chunk(render: Callable[[list[Any]], list[str]], chunk: list[Any], offset: int, column: str) -> list[str]:
    for i, conversation in enumerate(chunk):
        if not isinstance(conversation, list) or not all(isinstance(m, dict) for m in conversation):
            raise CheckError(f"row {offset + i}: {column!r} is not a list of {{'role', 'content'}} objects")
    try:
        return render(chunk)
    except Exception as e:
        # Find the row the template chokes on, for a message that names it.
        for i, conversation in enumerate(chunk):
            try:
                render([conversation])
            except Exception as row_error:
                raise CheckError(
                    f"row {offset + i}: the chat template cannot render it ({_first_line(row_error)})"
                ) from None
        raise CheckError(f"the chat template failed: {_first_line(e)}") from None


def _collate(masker: Any, rows: list[list[int]], offset: int = 0) -> tuple[np.ndarray, Any]:
    from sftmask import RowError

    try:
        arrays, stats = masker.collate(rows)
    except RowError as e:
        # `row` counts from this chunk's start: name the row of the file instead.
        raise CheckError(f"row {offset + e.row}: {_first_line(e.reason)}") from None
    except (ValueError, TypeError) as e:
        raise CheckError(_first_line(e)) from None
    return arrays["labels"], stats


def _scan_chunk(
    report: Report,
    rows: list[list[int]],
    offset: int,
    exact: Any,
    trl: Any,
    fill: int,
    max_length: int | None,
    threads: int | None,
    candidates: dict[str, list[tuple[int, list[int]]]],
    want_show: int,
) -> None:
    lengths = [len(r) for r in rows]
    cut = [i for i, n in enumerate(lengths) if max_length is not None and n > max_length]
    seen = [r[:max_length] for r in rows] if cut else rows
    labels, stats = _collate(exact, seen, offset)
    trl_labels, _ = _collate(trl, seen, offset)
    missing = stats.missing_rows
    report.rows += stats.rows
    report.tokens += stats.tokens
    report.trained_tokens += stats.trained_tokens
    report.straddling_tokens += stats.straddling_tokens
    report.rows_without_template += stats.rows_without_template
    report.rows_truncated += len(cut)
    missing_set = set(missing)
    # Rows sftmask trains and TRL's token matching leaves entirely untrained (template not
    # found, instruction template not found, or its turn pairing masking everything).
    trains = np.any(labels != -100, axis=1)
    trl_trains = np.any(trl_labels != -100, axis=1)
    lost = np.flatnonzero(trains & ~trl_trains).tolist()
    report.trl_rows_lost += len(lost)
    report.trl_rows_with_different_labels += int(np.any(labels != trl_labels, axis=1).sum())
    for i in missing:
        if len(report.rows_without_template_sample) < SAMPLE_ROWS:
            report.rows_without_template_sample.append(offset + i)
    for i in lost:
        if len(report.trl_rows_lost_sample) < SAMPLE_ROWS:
            report.trl_rows_lost_sample.append(offset + i)
    if cut:
        # What truncation took away: templates (the row trains nothing now) or response tokens.
        full_labels, full_stats = _collate(exact, [rows[i] for i in cut])
        full_missing_set = set(full_stats.missing_rows)
        for k, i in enumerate(cut):
            if k in full_missing_set:
                continue
            if i in missing_set:
                report.rows_without_template_cut_by_max_length += 1
            elif np.any(full_labels[k, max_length : lengths[i]] != -100):
                report.responses_cut_by_max_length += 1
    for reason, picked in (("no response template", missing), ("TRL would lose it", lost), ("", range(len(rows)))):
        for i in picked:
            if len(candidates[reason]) >= want_show:
                break
            candidates[reason].append((offset + i, seen[i]))


# ---------------------------------------------------------------------------------------------
# Output.


def _text_report(report: Report) -> str:
    def pct(x: float) -> str:
        return f"{x:.2%}"

    what = f"column {report.column!r} as {report.column_kind}" if report.column else "no rows"
    lines = [
        f"sftmask check: {report.data} ({report.format}, {what})",
        f"tokenizer {report.tokenizer}; response template {report.response_template!r}"
        + (f"; instruction templates {report.instruction_templates!r}" if report.instruction_templates else ""),
        "",
    ]
    rows = [
        ("rows", f"{report.rows}"),
        (
            "rows without a response template",
            f"{report.rows_without_template} ({pct(report.rows_without_template_fraction)})",
        ),
    ]
    if report.max_length is not None:
        rows += [
            ("  of which cut by --max-length", str(report.rows_without_template_cut_by_max_length)),
            (f"rows longer than --max-length {report.max_length}", f"{report.rows_truncated}"),
            ("  of which with a response cut short", f"{report.responses_cut_by_max_length}"),
        ]
    rows += [
        ("tokens", f"{report.tokens}"),
        ("trained tokens", f"{report.trained_tokens} ({pct(report.trained_fraction)})"),
        ("tokens straddling a template boundary", f"{report.straddling_tokens}"),
        ("rows TRL's token matching would lose", f"{report.trl_rows_lost} ({pct(report.trl_rows_lost_fraction)})"),
        ("rows whose labels differ from TRL's", f"{report.trl_rows_with_different_labels}"),
    ]
    width = max(len(k) for k, _ in rows)
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    if report.rows_without_template_sample:
        lines.append(f"rows without a template: {', '.join(map(str, report.rows_without_template_sample))}")
    if report.trl_rows_lost_sample:
        lines.append(f"rows TRL would lose: {', '.join(map(str, report.trl_rows_lost_sample))}")
    if report.fail_if_missing_above is not None:
        verdict = "FAILED" if report.failed else "passed"
        lines.append(
            f"{verdict}: {pct(report.rows_without_template_fraction)} of rows without a template "
            f"(limit {pct(report.fail_if_missing_above)})"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """``sftmask check``: returns the exit code; input errors are one line on stderr (exit 2)."""
    try:
        return _run(args)
    except CheckError as e:
        print(f"sftmask check: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("sftmask check: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `sftmask check … | head`: the reader has seen enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as e:  # never a traceback for bad input; SFTMASK_DEBUG=1 shows it
        if os.environ.get("SFTMASK_DEBUG"):
            raise
        print(f"sftmask check: error: {type(e).__name__}: {_first_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _run(args: argparse.Namespace) -> int:
    from sftmask.render import render_masked

    if args.fail_if_missing_above is not None and not 0.0 <= args.fail_if_missing_above <= 1.0:
        raise CheckError("--fail-if-missing-above takes a fraction between 0 and 1, e.g. 0.01")
    report, shown, renderer = scan(args)
    views = []
    for row, reason, ids in shown:
        exact, vocab = renderer
        view = render_masked(exact, vocab, ids, -100)
        views.append((row, reason, view))
        report.shown.append(
            {"row": row, "reason": reason or None, "text": view.plain(), "trained_text": view.trained_text()}
        )
    if args.format == "json":
        print(json.dumps(report.as_json(), ensure_ascii=False, indent=2))
    else:
        print(_text_report(report))
        for row, reason, view in views:
            trained = sum(t.trained for t in view.tokens)
            why = f"{reason}; " if reason else ""
            print(f"\nrow {row} ({why}{len(view.tokens)} tokens, {trained} trained; [[…]] = trained):")
            print(view)
    return EXIT_FAILED_CHECK if report.failed else EXIT_OK


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_parser(sub: Any) -> None:
    """Registers ``sftmask check`` on the CLI's subcommands."""
    p = sub.add_parser(
        "check",
        help="scan a JSONL / Parquet / datasets file and report how its rows are masked",
        description=(
            "Scan a dataset and report rows without a response template, the trained-token fraction, "
            "straddling tokens, truncation by --max-length and the rows TRL's token matching would lose. "
            "Templates may use \\n, \\t, \\r and \\\\ escapes. Exit code: 0 fine, 1 --fail-if-missing-above "
            "exceeded, 2 bad input."
        ),
    )
    p.add_argument("data", help="a .jsonl / .json / .parquet file, or a folder written by datasets' save_to_disk")
    p.add_argument(
        "--tokenizer", required=True, help="a folder with tokenizer.json, a tokenizer.json, or a transformers name"
    )
    p.add_argument("--response-template", required=True, help="the text that starts every assistant turn")
    p.add_argument(
        "--instruction-template",
        action="append",
        help="text that starts a user (or system, tool) turn; repeat for several",
    )
    p.add_argument(
        "--column",
        help="the column to read (default: the first of input_ids, messages, text); its values' type decides how",
    )
    p.add_argument("--split", help="the split of a saved DatasetDict (default: train)")
    p.add_argument("--max-length", type=_positive_int, help="truncate rows to this many tokens, as the trainer would")
    p.add_argument("--train-on", choices=("all", "last"), default="all", help="train all assistant turns or the last")
    p.add_argument("--show", type=int, default=0, metavar="N", help="render N rows (rows with problems first)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="report format (json: for CI)")
    p.add_argument(
        "--fail-if-missing-above",
        type=float,
        metavar="FRACTION",
        help="exit with code 1 when more than this fraction of rows has no response template",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    p.add_argument("--batch-size", type=_positive_int, default=1024, help="rows per batch (default 1024)")
    p.add_argument("--num-threads", type=_positive_int, default=None, help="threads (default: all CPUs)")
    p.set_defaults(func=run)
