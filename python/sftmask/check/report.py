"""The command of ``sftmask check``: arguments, progress bar, text and JSON output, exit codes.

Human output (the text report, ``--show`` headers, error lines) counts rows from 1, the way an
editor counts the lines of a JSON Lines file; ``--format json`` gives 0-based indices, the way
``dataset[i]`` counts them (README.md, "--format json fields").

>>> from sftmask.cli import main
>>> main(["check", "train.jsonl", "--tokenizer", "./tok", "--response-template", "### Answer:"])  # doctest: +SKIP
0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from sftmask.check.analysis import Report, scan
from sftmask.check.errors import CheckError, first_line

#: Exit codes: 0 fine, 1 ``--fail-if-missing-above`` exceeded, 2 bad input (file, column, tokenizer).
EXIT_OK, EXIT_FAILED_CHECK, EXIT_BAD_INPUT = 0, 1, 2


def as_json(report: Report) -> dict[str, Any]:
    """The ``--format json`` object (fields documented in README.md)."""
    from sftmask import __version__

    out: dict[str, Any] = {"sftmask_version": __version__}
    out.update({k: v for k, v in report.__dict__.items() if k != "shown"})
    out["rows_without_template_fraction"] = report.rows_without_template_fraction
    out["trained_fraction"] = report.trained_fraction
    out["trl_rows_lost_fraction"] = report.trl_rows_lost_fraction
    out["missing_fraction"] = report.missing_fraction
    out["failed"] = report.failed
    out["shown"] = report.shown
    return out


def row_list(label: str, indices: list[int], total: int) -> str:
    """A labelled list of rows, by row number counting from 1 (``indices`` count from 0).

    >>> row_list("rows without a template", [0, 4], 2)
    'rows without a template, by row number (first row = 1): 1, 5'
    >>> row_list("rows TRL would lose", [2], 30)
    'rows TRL would lose, by row number (first row = 1; the first 1 of 30): 3'
    """
    which = f"; the first {len(indices)} of {total}" if total > len(indices) else ""
    return f"{label}, by row number (first row = 1{which}): {', '.join(str(i + 1) for i in indices)}"


def text_report(report: Report) -> str:
    """The human report: counts, then the rows with problems by number."""

    def pct(x: float) -> str:
        return f"{x:.2%}"

    what = f"column {report.column!r} as {report.column_kind}" if report.column else "no rows"
    labelled_by = (
        "labelled by its chat template"
        if report.chat_template_mode
        else f"response template {report.response_template!r}"
        + (f"; instruction templates {report.instruction_templates!r}" if report.instruction_templates else "")
    )
    lines = [
        f"sftmask check: {report.data} ({report.format}, {what})",
        f"tokenizer {report.tokenizer}; {labelled_by}",
        "",
    ]
    rows = [("rows", f"{report.rows}")]
    if report.chat_template_mode:
        nothing = report.rows_without_trained_tokens or 0
        rows += [
            ("rows with a trained turn not located exactly", f"{report.rows_not_located}"),
            ("rows with no trained token", f"{nothing} ({pct(report.missing_fraction)})"),
            ("trained turns without a trained end-of-turn marker", f"{report.turns_without_end_marker}"),
        ]
    else:
        rows.append(
            (
                "rows without a response template",
                f"{report.rows_without_template} ({pct(report.rows_without_template_fraction)})",
            )
        )
    if report.max_length is not None:
        if not report.chat_template_mode:
            rows.append(("  of which cut by --max-length", str(report.rows_without_template_cut_by_max_length)))
        rows += [
            (f"rows longer than --max-length {report.max_length}", f"{report.rows_truncated}"),
            ("  of which with a response cut short", f"{report.responses_cut_by_max_length}"),
        ]
    rows += [
        ("tokens", f"{report.tokens}"),
        ("trained tokens", f"{report.trained_tokens} ({pct(report.trained_fraction)})"),
    ]
    if not report.chat_template_mode:
        lost = report.trl_rows_lost_fraction or 0.0
        rows += [
            ("tokens straddling a template boundary", f"{report.straddling_tokens}"),
            ("rows TRL's token matching would lose", f"{report.trl_rows_lost} ({pct(lost)})"),
            ("rows whose labels differ from TRL's", f"{report.trl_rows_with_different_labels}"),
        ]
    width = max(len(k) for k, _ in rows)
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    samples = [
        ("rows without a template", report.rows_without_template_sample, report.rows_without_template),
        ("rows TRL would lose", report.trl_rows_lost_sample, report.trl_rows_lost),
        ("rows with a turn not located", report.rows_not_located_sample, report.rows_not_located),
        ("rows with no trained token", report.rows_without_trained_tokens_sample, report.rows_without_trained_tokens),
        (
            "rows with a turn whose end-of-turn marker is untrained",
            report.turns_without_end_marker_sample,
            len(report.turns_without_end_marker_sample),
        ),
    ]
    lists = [row_list(label, sample, total or 0) for label, sample, total in samples if sample]
    if lists:
        lines += ["", *lists]
    if report.fail_if_missing_above is not None:
        verdict = "FAILED" if report.failed else "passed"
        what_missing = "rows with no trained token" if report.chat_template_mode else "rows without a template"
        lines.append(
            f"{verdict}: {pct(report.missing_fraction)} of {what_missing} (limit {pct(report.fail_if_missing_above)})"
        )
    return "\n".join(lines)


def _progress_bar(total: int) -> Any:
    from tqdm import tqdm  # a dependency (pyproject.toml); imported only when a bar is shown

    return tqdm(total=total, unit=" rows", desc="checking", file=sys.stderr, dynamic_ncols=True)


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
        print(f"sftmask check: error: {type(e).__name__}: {first_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _run(args: argparse.Namespace) -> int:
    from sftmask.render import legend

    if args.fail_if_missing_above is not None and not 0.0 <= args.fail_if_missing_above <= 1.0:
        raise CheckError("--fail-if-missing-above takes a fraction between 0 and 1, e.g. 0.01")
    show_bar = args.progress if args.progress is not None else sys.stderr.isatty()
    report, shown, renderer = scan(args, _progress_bar if show_bar else None)
    views = []
    for row, reason, ids, labels in shown:
        view = renderer(ids, labels)
        views.append((row, reason, view))
        report.shown.append(
            {"row": row, "reason": reason or None, "text": view.plain(), "trained_text": view.trained_text()}
        )
    if args.format == "json":
        print(json.dumps(as_json(report), ensure_ascii=False, indent=2))
    else:
        print(text_report(report))
        for row, reason, view in views:
            trained = sum(t.trained for t in view.tokens)
            why = f"{reason}; " if reason else ""
            print(f"\nrow {row + 1} ({why}{len(view.tokens)} tokens, {trained} trained; {legend()}):")
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
    p.add_argument(
        "--response-template",
        help="the text that starts every assistant turn (a messages column without it: labelled by the chat template)",
    )
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
        help=(
            "exit with code 1 when more than this fraction of rows has no response template "
            "(chat-template mode: trains no token)"
        ),
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
