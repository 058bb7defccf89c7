"""Command line: ``sftmask demo`` and ``sftmask check`` (also as ``python -m sftmask …``)."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from typing import Any

import numpy as np


def _time(fn, min_seconds: float = 0.3) -> float:
    """Seconds per call: best of repeated runs over at least ``min_seconds`` in total."""
    fn()
    best, total, runs = float("inf"), 0.0, 0
    while total < min_seconds or runs < 5:
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best, total, runs = min(best, dt), total + dt, runs + 1
    return best


def _trl_warnings_per_row(collator: Any, examples: list[dict[str, Any]]) -> list[int]:
    """How many warnings TRL 0.19.1 gives for each example (``collator``: ``compat="trl"``,
    ``on_missing="warn"``, which warns as TRL does), one example at a time."""
    counts = []
    for example in examples:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            collator([example])
        counts.append(len(seen))
    return counts


def _demo_error(message: str) -> int:
    print(f"sftmask demo: error: {message}", file=sys.stderr)
    return 2


def demo(args: argparse.Namespace) -> int:
    from sftmask import DataCollatorForCompletionOnlyLM, Encoder, __version__
    from sftmask._data import (
        CHATML_INSTRUCTIONS,
        CHATML_RESPONSE,
        demo_tokenizer_dir,
        render_chatml,
        sample_chats,
    )
    from sftmask.check.analysis import rows_trl_loses
    from sftmask.render import legend

    chats = sample_chats()
    if args.row is not None and not 1 <= args.row <= len(chats):
        return _demo_error(
            f"--row {args.row} is out of range: the demo has {len(chats)} rows, numbered 1 to {len(chats)}"
        )
    folder = demo_tokenizer_dir()
    texts = [render_chatml(c["messages"]) for c in chats]
    encoder = Encoder.from_json((folder / "tokenizer.json").read_text(encoding="utf-8"))
    rows = encoder.encode_batch(texts, add_special_tokens=False)
    examples = [{"input_ids": r} for r in rows]
    tokens = sum(map(len, rows))

    collator = DataCollatorForCompletionOnlyLM(
        CHATML_RESPONSE, CHATML_INSTRUCTIONS, tokenizer=folder, return_tensors="np", on_missing="ignore"
    )
    batch = collator(examples)
    stats = collator.stats
    # TRL 0.19.1's own rule (token-level search of the template tokenized alone), side by side.
    trl_collator = DataCollatorForCompletionOnlyLM(
        CHATML_RESPONSE,
        CHATML_INSTRUCTIONS[0],
        tokenizer=folder,
        compat="trl",
        return_tensors="np",
        on_missing="warn",
    )
    trl_warnings = _trl_warnings_per_row(trl_collator, examples)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # counted above, row by row
        trl_batch = trl_collator(examples)
    differs = (trl_batch["labels"] != batch["labels"]).any(axis=1)
    # The measure `sftmask check` reports as trl_rows_lost: rows sftmask trains, TRL wholly masks.
    lost = rows_trl_loses(batch["labels"], trl_batch["labels"])
    trains = int((batch["labels"] != -100).any(axis=1).sum())
    warned = sum(1 for i in lost if trl_warnings[i])

    print(f"sftmask {__version__} demo: {len(chats)} sample chats (ChatML), embedded Qwen2.5 tokenizer")
    print(f"response template {CHATML_RESPONSE!r}; instruction templates: user, system, tool headers")
    print()
    print("rows that train (at least one token with a label)")
    print(f"  sftmask (exact byte spans)   {trains:>3}/{len(rows)}")
    print(
        f"  TRL 0.19.1 (compat='trl')    {trains - len(lost):>3}/{len(rows)}   ({len(lost)} rows wholly untrained; "
        f"TRL warns on {warned} of them, {sum(trl_warnings)} warnings in all)"
    )
    print(f"rows whose labels differ between the two: {int(differs.sum())}/{len(rows)}")
    print(
        f"trained tokens: {stats.trained_tokens} of {stats.tokens} ({stats.trained_fraction:.1%}); "
        f"tokens straddling a template boundary: {stats.straddling_tokens}"
    )
    print(f"labels shape {tuple(batch['labels'].shape)}, dtype {batch['labels'].dtype}")

    # Throughput: batches of 8, numpy output, against merely copying the ids into an array.
    batches = [examples[i : i + 8] for i in range(0, len(examples), 8)]

    def collate_all() -> None:
        for b in batches:
            collator(b)

    def copy_floor() -> None:
        for b in batches:
            width = max(len(e["input_ids"]) for e in b)
            out = np.zeros((len(b), width), dtype=np.int64)
            for j, e in enumerate(b):
                out[j, : len(e["input_ids"])] = e["input_ids"]

    t_collate = _time(collate_all)
    t_floor = _time(copy_floor)
    print(
        f"throughput (batch 8): {tokens / t_collate / 1e6:.1f} M tokens/s; copying the same ids into "
        f"a padded numpy array alone: {tokens / t_floor / 1e6:.1f} M tokens/s; collating takes "
        f"{t_collate / t_floor:.2f}x the copy's time"
    )

    # Row numbers count from 1 here, as in `sftmask check`'s text report.
    show = args.row - 1 if args.row is not None else next((i for i in range(len(rows)) if differs[i]), 0)
    view = collator.render(rows[show])
    print()
    verdict = "differ from" if differs[show] else "equal"
    print(f"row {show + 1} ({legend()}; TRL 0.19.1's labels {verdict} these):")
    print(view)
    print(f"trained text: {collator.trained_text(rows[show])!r}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sftmask`` command."""
    parser = argparse.ArgumentParser(prog="sftmask", description="Exact completion-only label masking for SFT.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="collate the embedded sample chats and report exactness and speed")
    p_demo.add_argument(
        "--row",
        type=int,
        default=None,
        help="which row to render, counting from 1 (default: the first one TRL labels differently)",
    )
    p_demo.set_defaults(func=demo)
    from sftmask.check import add_parser as add_check

    add_check(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
