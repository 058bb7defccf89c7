"""Command line: ``sftmask demo`` and ``sftmask check`` (also as ``python -m sftmask …``)."""

from __future__ import annotations

import argparse
import sys
import time

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


def demo(args: argparse.Namespace) -> int:
    from sftmask import DataCollatorForCompletionOnlyLM, Encoder, __version__
    from sftmask._data import (
        CHATML_INSTRUCTIONS,
        CHATML_RESPONSE,
        demo_tokenizer_dir,
        render_chatml,
        sample_chats,
    )

    folder = demo_tokenizer_dir()
    chats = sample_chats()
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
    found = stats.examples - stats.rows_without_template
    # TRL 0.19.1's own rule (token-level search of the template tokenized alone), side by side.
    trl_collator = DataCollatorForCompletionOnlyLM(
        CHATML_RESPONSE,
        CHATML_INSTRUCTIONS[0],
        tokenizer=folder,
        compat="trl",
        return_tensors="np",
        on_missing="ignore",
    )
    trl_batch = trl_collator(examples)
    trl_found = trl_collator.stats.examples - trl_collator.stats.rows_without_template
    differs = (trl_batch["labels"] != batch["labels"]).any(axis=1)

    print(f"sftmask {__version__} demo: {len(chats)} sample chats (ChatML), embedded Qwen2.5 tokenizer")
    print(f"response template {CHATML_RESPONSE!r}; instruction templates: user, system, tool headers")
    print()
    print("rows whose response template is found")
    print(f"  sftmask (exact byte spans)   {found:>3}/{len(rows)}")
    lost = len(rows) - trl_found
    print(f"  TRL 0.19.1 (compat='trl')    {trl_found:>3}/{len(rows)}   ({lost} rows silently untrained)")
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
        f"a padded numpy array alone: {tokens / t_floor / 1e6:.1f} M tokens/s ({t_collate / t_floor:.2f}x)"
    )

    show = args.row if args.row is not None else next((i for i in range(len(rows)) if differs[i]), 0)
    view = collator.render(rows[show])
    print()
    verdict = "differ from" if differs[show] else "equal"
    print(f"row {show} ([[…]] = trained; TRL 0.19.1's labels {verdict} these):")
    print(view)
    print(f"trained text: {collator.trained_text(rows[show])!r}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sftmask`` command."""
    parser = argparse.ArgumentParser(prog="sftmask", description="Exact completion-only label masking for SFT.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="collate the embedded sample chats and report exactness and speed")
    p_demo.add_argument("--row", type=int, default=None, help="which row to render (default: one TRL gets wrong)")
    p_demo.set_defaults(func=demo)
    from sftmask.check import add_parser as add_check

    add_check(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
