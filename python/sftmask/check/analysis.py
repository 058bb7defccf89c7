"""The analysis of ``sftmask check``: tokenize every row, mask it as the collator would (and as
TRL 0.19.1's token matching would), and count what matters.

Every call into the Rust extension is in :func:`_make_maskers`, :func:`_encode` and
:func:`_collate`, one place each.

>>> from sftmask.check.analysis import scan
>>> report, shown, renderer = scan(args)  # args: what `sftmask check` parsed  # doctest: +SKIP
>>> report.rows_without_template, report.trained_fraction  # doctest: +SKIP
(0, 0.419)
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import numpy as np

from sftmask.check.errors import CheckError, first_line
from sftmask.check.readers import column_kind, open_source, pick_column
from sftmask.check.tokenizer import Tokenizer

#: How many rows the report lists for each kind of problem.
SAMPLE_ROWS = 20

IGNORE_INDEX = -100

#: A row to show: (0-based index, reason, ids, labels or None when the masker computes them).
Shown = tuple[int, str, list[int], "list[int] | None"]


@dataclass
class Report:
    """What ``sftmask check`` found; ``--format json`` prints it (fields in README.md).

    Row indices (``*_sample``, ``shown[].row``) count from 0, as ``dataset[i]`` does; the text
    report shows them as row numbers counting from 1.
    """

    data: str
    format: str
    column: str | None
    column_kind: str | None
    tokenizer: str
    response_template: str | None  # None: conversations labelled by their chat template
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
    trl_rows_lost: int | None = 0  # None: not measured (chat-template mode: TRL needs templates)
    trl_rows_with_different_labels: int | None = 0
    rows_without_template_sample: list[int] = field(default_factory=list)
    trl_rows_lost_sample: list[int] = field(default_factory=list)
    # Chat-template mode (a messages column, no --response-template): None otherwise.
    rows_not_located: int | None = None
    rows_not_located_sample: list[int] = field(default_factory=list)
    rows_without_trained_tokens: int | None = None
    rows_without_trained_tokens_sample: list[int] = field(default_factory=list)
    turns_without_end_marker: int | None = None
    turns_without_end_marker_sample: list[int] = field(default_factory=list)
    fail_if_missing_above: float | None = None
    shown: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rows_without_template_fraction(self) -> float:
        return self.rows_without_template / self.rows if self.rows else 0.0

    @property
    def chat_template_mode(self) -> bool:
        return self.response_template is None

    @property
    def missing_fraction(self) -> float:
        """What ``--fail-if-missing-above`` limits: rows without a response template, or, in
        chat-template mode, rows that train nothing (not located, or no trained token left)."""
        if self.chat_template_mode:
            return (self.rows_without_trained_tokens or 0) / self.rows if self.rows else 0.0
        return self.rows_without_template_fraction

    @property
    def trained_fraction(self) -> float:
        return self.trained_tokens / self.tokens if self.tokens else 0.0

    @property
    def trl_rows_lost_fraction(self) -> float | None:
        if self.trl_rows_lost is None:
            return None
        return self.trl_rows_lost / self.rows if self.rows else 0.0

    @property
    def failed(self) -> bool:
        limit = self.fail_if_missing_above
        return limit is not None and self.missing_fraction > limit


def unescape(template: str) -> str:
    """``\\n``, ``\\t``, ``\\r`` and ``\\\\`` typed on a command line, as the characters they name.

    >>> unescape("<|im_start|>assistant\\\\n")
    '<|im_start|>assistant\\n'
    """
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
# The calls into the extension, one function each.


def _encode(
    encoder: Any, texts: Sequence[str], add_special_tokens: bool, threads: int | None = None
) -> list[list[int]]:
    return encoder.encode_batch(list(texts), add_special_tokens=add_special_tokens, num_threads=threads)


def _make_maskers(
    tok: Tokenizer,
    encoder: Any,
    response: str,
    instructions: list[str],
    train_on: Literal["all", "last"],
    threads: int | None = None,
) -> tuple[Any, Any]:
    """The exact masker, and one following TRL 0.19.1's rule (rows without a template are
    counted, not warned about)."""
    from sftmask import Masker

    vocab = tok.info.vocab
    # Exact masks padding by position: any id will do when the tokenizer has no pad token.
    fill = tok.info.pad_token_id if tok.info.pad_token_id is not None else 0
    common = {"on_missing": "ignore", "pad_token_id": fill, "num_threads": threads}
    try:
        exact = Masker(vocab, response, instructions, train_on=train_on, **common)
        # TRL tokenizes each template alone and takes one instruction template (the first here).
        trl_instruction = [_encode(encoder, instructions[:1], False)[0]] if instructions else None
        trl = Masker(vocab, _encode(encoder, [response], False)[0], trl_instruction, compat="trl", **common)
    except (ValueError, TypeError) as e:
        raise CheckError(first_line(e)) from None
    return exact, trl


@dataclass
class Masked:
    """One chunk's labels (rows × width, padded) and counts, from :func:`_collate`."""

    labels: np.ndarray
    tokens: int
    trained: int
    straddling: int
    missing: list[int]  # rows of the chunk without a response template


def _collate(masker: Any, rows: list[list[int]], offset: int = 0) -> Masked:
    from sftmask import RowError

    try:
        arrays, stats = masker.collate(rows)
    except RowError as e:
        # `e.row` counts from 0 at this chunk's start: name the row of the file, counting from 1.
        raise CheckError(f"row {offset + e.row + 1}: {first_line(e.reason)}") from None
    except (ValueError, TypeError) as e:
        raise CheckError(first_line(e)) from None
    return Masked(
        arrays["labels"], stats.tokens, stats.trained_tokens, stats.straddling_tokens, list(stats.missing_rows)
    )


# ---------------------------------------------------------------------------------------------
# The scan.

#: Why a row is shown with ``--show``, in the order rows are picked.
NO_TEMPLATE, TRL_LOSES = "no response template", "TRL would lose it"


def scan(args: argparse.Namespace, progress: Callable[[int], Any] | None = None) -> tuple[Report, list[Shown], Any]:
    """Reads, tokenizes and masks every row; returns the report, the rows to show (0-based index,
    reason, ids, labels) and ``view(ids, labels)``, which renders one.

    A ``messages`` column with no ``--response-template`` is labelled by the tokenizer's chat
    template (:func:`sftmask.tokenize_and_mask` on conversations).

    ``progress(total_rows)`` makes a progress bar (``update(n)`` after each chunk of ``n`` rows,
    ``close()`` at the end), e.g. ``tqdm`` itself: ``progress=lambda n: tqdm(total=n)``."""
    from sftmask.preprocess import _encoder

    source = open_source(args.data, args.split)
    tok = Tokenizer(args.tokenizer)
    response = None if args.response_template is None else unescape(args.response_template)
    instructions = [unescape(t) for t in args.instruction_template or []]
    if response == "":
        raise CheckError("--response-template is empty")
    if response is None and instructions:
        raise CheckError("--instruction-template needs a --response-template (without one, the chat template decides)")
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
    column = pick_column(source, args.column)
    kind = column_kind(source, column)
    report.column, report.column_kind = column, kind
    if response is None:
        if kind != "messages":
            raise CheckError(
                f"column {column!r} holds {kind}: pass --response-template (only a messages column can be "
                "labelled by the tokenizer's chat template alone)"
            )
        return _scan_conversations(args, source, tok, column, report, progress)

    encoder = _encoder(tok.target)
    exact, trl = _make_maskers(tok, encoder, response, instructions, args.train_on, args.num_threads)
    render_messages = tok.chat_template_renderer() if kind == "messages" else None

    want_show = max(args.show, 0)
    candidates: dict[str, list[tuple[int, list[int]]]] = {NO_TEMPLATE: [], TRL_LOSES: [], "": []}
    for offset, chunk in _chunks(source, column, args.batch_size, progress):
        if kind == "input_ids":
            rows = [_ids_row(v, offset + i, column) for i, v in enumerate(chunk)]
        else:
            texts = chunk
            if render_messages is not None:
                texts = _render_chunk(render_messages, chunk, offset, column)
            bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
            if bad is not None:
                raise CheckError(f"row {offset + bad + 1}: {column!r} is {type(texts[bad]).__name__}, not text")
            rows = _encode(encoder, texts, kind == "text", args.num_threads)
        _scan_chunk(report, rows, offset, exact, trl, args.max_length, candidates, want_show)

    from sftmask.render import render_masked

    def view(ids: list[int], labels: list[int] | None) -> Any:
        return render_masked(exact, tok.info.vocab, ids, IGNORE_INDEX)

    return report, _pick_shown(candidates, want_show), view


def _pick_shown(candidates: dict[str, list[Any]], want_show: int) -> list[Shown]:
    """Up to ``want_show`` rows, the candidates of each reason in order (rows with problems first)."""
    shown: list[Shown] = []
    for reason, items in candidates.items():
        for row, ids, *labels in items:
            if len(shown) < want_show and all(row != s[0] for s in shown):
                shown.append((row, reason, ids, labels[0] if labels else None))
    return shown


#: Why a conversation is shown with ``--show``, in the order rows are picked.
NOT_LOCATED, NOTHING_TRAINED, NO_END_MARKER = (
    "a trained turn not located exactly",
    "no trained token",
    "a turn without a trained end-of-turn marker",
)


def _scan_conversations(
    args: argparse.Namespace,
    source: Any,
    tok: Tokenizer,
    column: str,
    report: Report,
    progress: Callable[[int], Any] | None,
) -> tuple[Report, list[Shown], Any]:
    """Chat-template mode: every conversation rendered with the tokenizer's chat template and
    labelled as ``tokenize_and_mask`` labels it (no templates to write), then cut to
    ``--max-length`` as the trainer would."""
    import warnings

    from sftmask import RowError, render, tokenize_and_mask

    target = tok.transformers()
    if not getattr(target, "chat_template", None):
        raise CheckError(
            f"the tokenizer {tok.spec} has no chat template: pass --response-template (and "
            "--instruction-template) to label the rendered text by markers instead"
        )
    report.trl_rows_lost = report.trl_rows_with_different_labels = None
    report.rows_not_located = report.rows_without_trained_tokens = report.turns_without_end_marker = 0
    want_show = max(args.show, 0)
    candidates: dict[str, list[Any]] = {NOT_LOCATED: [], NOTHING_TRAINED: [], NO_END_MARKER: [], "": []}
    limit = args.max_length
    for offset, chunk in _chunks(source, column, args.batch_size, progress):
        for i, conversation in enumerate(chunk):
            if not isinstance(conversation, list) or not all(isinstance(m, dict) for m in conversation):
                raise CheckError(f"row {offset + i + 1}: {column!r} is not a list of {{'role', 'content'}} objects")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # counted below instead
                out, stats = tokenize_and_mask(
                    chunk,
                    target,
                    train_on=args.train_on,
                    on_missing="ignore",
                    return_stats=True,
                    num_threads=args.num_threads,
                )
        except RowError as e:
            raise CheckError(f"row {offset + e.row + 1}: {first_line(e.reason)}") from None
        except (ValueError, TypeError) as e:
            raise CheckError(first_line(e)) from None
        not_located = set(stats.not_located_rows)
        unmarked = set(stats.turns_without_end_marker_rows)
        for i, (ids, labels) in enumerate(zip(out["input_ids"], out["labels"])):
            row = offset + i
            kept = labels[:limit] if limit is not None else labels
            trained = sum(1 for label in kept if label != IGNORE_INDEX)
            report.rows += 1
            report.tokens += len(kept)
            report.trained_tokens += trained
            if limit is not None and len(ids) > limit:
                report.rows_truncated += 1
                if any(label != IGNORE_INDEX for label in labels[limit:]):
                    report.responses_cut_by_max_length += 1
            reasons = []
            if i in not_located:
                report.rows_not_located += 1
                _sample(report.rows_not_located_sample, row)
                reasons.append(NOT_LOCATED)
            if trained == 0:
                report.rows_without_trained_tokens += 1
                _sample(report.rows_without_trained_tokens_sample, row)
                reasons.append(NOTHING_TRAINED)
            if i in unmarked:
                _sample(report.turns_without_end_marker_sample, row)
                reasons.append(NO_END_MARKER)
            for reason in [*reasons, ""]:
                if len(candidates[reason]) < want_show:
                    candidates[reason].append((row, ids[:limit] if limit else ids, kept))
        report.turns_without_end_marker += stats.turns_without_end_marker

    def view(ids: list[int], labels: list[int] | None) -> Any:
        return render({"input_ids": ids, "labels": labels}, target)

    return report, _pick_shown(candidates, want_show), view


def _sample(rows: list[int], row: int) -> None:
    if len(rows) < SAMPLE_ROWS:
        rows.append(row)


def _chunks(source: Any, column: str, size: int, progress: Callable[[int], Any] | None) -> Iterator[tuple[int, list]]:
    """``(offset, rows)`` of each chunk of ``column``, a progress bar advanced after each."""
    bar = progress(source.num_rows) if progress is not None else None
    offset = 0
    try:
        for chunk in source.chunks(column, size):
            yield offset, chunk
            offset += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()


def _ids_row(value: Any, row: int, column: str) -> list[int]:
    items = value.tolist() if hasattr(value, "tolist") else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
        raise CheckError(f"row {row + 1}: {column!r} is not a list of ints")
    return list(items)


def _render_chunk(render: Callable[[list[Any]], list[str]], chunk: list[Any], offset: int, column: str) -> list[str]:
    for i, conversation in enumerate(chunk):
        if not isinstance(conversation, list) or not all(isinstance(m, dict) for m in conversation):
            raise CheckError(f"row {offset + i + 1}: {column!r} is not a list of {{'role', 'content'}} objects")
    try:
        return render(chunk)
    except Exception as e:
        # Find the row the template chokes on, for a message that names it.
        for i, conversation in enumerate(chunk):
            try:
                render([conversation])
            except Exception as row_error:
                raise CheckError(
                    f"row {offset + i + 1}: the chat template cannot render it ({first_line(row_error)})"
                ) from None
        raise CheckError(f"the chat template failed: {first_line(e)}") from None


def _scan_chunk(
    report: Report,
    rows: list[list[int]],
    offset: int,
    exact: Any,
    trl: Any,
    max_length: int | None,
    candidates: dict[str, list[tuple[int, list[int]]]],
    want_show: int,
) -> None:
    lengths = [len(r) for r in rows]
    cut = [i for i, n in enumerate(lengths) if max_length is not None and n > max_length]
    seen = [r[:max_length] for r in rows] if cut else rows
    ours = _collate(exact, seen, offset)
    theirs = _collate(trl, seen, offset)
    report.rows += len(rows)
    report.tokens += ours.tokens
    report.trained_tokens += ours.trained
    report.straddling_tokens += ours.straddling
    report.rows_without_template += len(ours.missing)
    report.rows_truncated += len(cut)
    missing_set = set(ours.missing)
    # Rows sftmask trains and TRL's token matching leaves entirely untrained (template not
    # found, instruction template not found, or its turn pairing masking everything).
    lost = rows_trl_loses(ours.labels, theirs.labels)
    report.trl_rows_lost += len(lost)
    report.trl_rows_with_different_labels += int(np.any(ours.labels != theirs.labels, axis=1).sum())
    for i in ours.missing:
        if len(report.rows_without_template_sample) < SAMPLE_ROWS:
            report.rows_without_template_sample.append(offset + i)
    for i in lost:
        if len(report.trl_rows_lost_sample) < SAMPLE_ROWS:
            report.trl_rows_lost_sample.append(offset + i)
    if cut:
        # What truncation took away: templates (the row trains nothing now) or response tokens.
        full = _collate(exact, [rows[i] for i in cut])
        full_missing = set(full.missing)
        for k, i in enumerate(cut):
            if k in full_missing:
                continue
            if i in missing_set:
                report.rows_without_template_cut_by_max_length += 1
            elif np.any(full.labels[k, max_length : lengths[i]] != IGNORE_INDEX):
                report.responses_cut_by_max_length += 1
    for reason, picked in ((NO_TEMPLATE, ours.missing), (TRL_LOSES, lost), ("", range(len(rows)))):
        for i in picked:
            if len(candidates[reason]) >= want_show:
                break
            candidates[reason].append((offset + i, seen[i]))


def rows_trl_loses(labels: np.ndarray, trl_labels: np.ndarray, ignore_index: int = IGNORE_INDEX) -> list[int]:
    """Rows (0-based) that ``labels`` trains and ``trl_labels`` leaves wholly untrained: the measure
    ``check`` reports as ``trl_rows_lost`` and the demo shows.

    >>> import numpy as np
    >>> rows_trl_loses(np.array([[5, -100], [-100, -100], [7, 8]]), np.array([[-100, -100]] * 2 + [[7, 8]]))
    [0]
    """
    trains = np.any(labels != ignore_index, axis=1)
    trl_trains = np.any(trl_labels != ignore_index, axis=1)
    return np.flatnonzero(trains & ~trl_trains).tolist()
