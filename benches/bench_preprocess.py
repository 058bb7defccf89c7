#!/usr/bin/env python3
"""Preprocessing throughput: ``sftmask.tokenize_and_mask`` on lists and on Arrow tables, against
the floor, ``tokenizers.Tokenizer.encode_batch`` of the same texts on the same threads.

Rows: synthetic Llama-3 chats (benches/bench_collators.py's generator), multi-turn, each row
0.7-1.2x a nominal length; the real Llama-3 tokenizer of the test fixtures. Methods, interleaved
pass by pass so that a load change hits all of them:

* ``floor``: ``encode_batch(texts, add_special_tokens=True)`` (the Encoding objects; reading
  their ids into Python lists is not timed);
* ``list``: ``tokenize_and_mask(texts, ...)`` -> ``{"input_ids": [[...]], "labels": [[...]]}``
  (Python ints: one object per token);
* ``arrow``: ``tokenize_and_mask(table, ...)`` on a one-chunk ``pyarrow.Table`` (``id``, ``text``)
  -> a ``pyarrow.Table``;
* ``arrow-1k``: the same table in calls of 1,000 rows, as ``datasets.map(batched=True)`` or Ray
  Data's ``map_batches`` would call it.

Every method gets the response and user templates; all run ``--threads`` threads (tokenizers'
rayon pool through ``RAYON_NUM_THREADS``, sftmask's through ``num_threads``). Reported: the best
and the median pass, rows/s and tokens/s (tokens counted once from the floor's ids), and time /
floor time. The Arrow rows are checked equal to the list rows, and the list ids to the floor's.

Usage::

    python benches/bench_preprocess.py               # 10k rows, writes its section of benches/RESULTS.md
    python benches/bench_preprocess.py --rows 2000 --out none   # smoke run, prints only
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
START = "<!-- bench_preprocess:begin -->"
END = "<!-- bench_preprocess:end -->"


def replace_section(path: Path, section: str) -> None:
    """Writes ``section`` between this script's markers in ``path`` (appended the first time),
    leaving the rest of the file, bench_collators.py's report, as it is."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    block = f"{START}\n{section.rstrip()}\n{END}\n"
    if START in old and END in old:
        head, rest = old.split(START, 1)
        new = head + block + rest.split(END, 1)[1].lstrip("\n")
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + block
    path.write_text(new, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--tokens", type=int, default=400, help="nominal tokens per row (default 400)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "benches" / "RESULTS.md"), help="markdown file, or 'none'")
    args = parser.parse_args(argv)

    # Before tokenizers starts its pool: the floor runs on the same number of threads.
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    sys.path.insert(0, str(Path(__file__).parent))
    import bench_collators as bc
    import pyarrow as pa
    import tokenizers

    import sftmask

    tok = tokenizers.Tokenizer.from_file(str(bc.find_tokenizer(None)))
    cpt = bc.calibrate(tok)
    rng = random.Random(0)
    lo, hi = int(args.tokens * 0.7), int(args.tokens * 1.2)
    texts = [bc._chat(rng, rng.randint(lo, hi), True, cpt) for _ in range(args.rows)]
    table = pa.table({"id": pa.array(range(len(texts)), pa.int64()), "text": texts})
    chunks = [table.slice(i, 1000) for i in range(0, table.num_rows, 1000)]
    kw: dict[str, Any] = dict(instruction_template=bc.USER, num_threads=args.threads, on_missing="ignore")

    methods: dict[str, Callable[[], Any]] = {
        "floor": lambda: tok.encode_batch(texts, add_special_tokens=True),
        "list": lambda: sftmask.tokenize_and_mask(texts, tok, bc.RESPONSE, **kw),
        "arrow": lambda: sftmask.tokenize_and_mask(table, tok, bc.RESPONSE, **kw),
        "arrow-1k": lambda: [sftmask.tokenize_and_mask(c, tok, bc.RESPONSE, **kw) for c in chunks],
    }
    outputs = {name: fn() for name, fn in methods.items()}  # warm: caches, pools, page faults
    floor_ids = [e.ids for e in outputs["floor"]]
    tokens = sum(map(len, floor_ids))
    listed = outputs["list"]
    checks = {
        "list ids = floor ids": listed["input_ids"] == floor_ids,
        "arrow rows = list rows": outputs["arrow"].column("input_ids").to_pylist() == listed["input_ids"]
        and outputs["arrow"].column("labels").to_pylist() == listed["labels"],
        "arrow-1k rows = list rows": [r for t in outputs["arrow-1k"] for r in t.column("labels").to_pylist()]
        == listed["labels"],
    }
    del outputs, listed

    load_before = os.getloadavg()[0]
    times: dict[str, list[float]] = {name: [] for name in methods}
    started = time.perf_counter()
    for _ in range(args.passes):
        for name, fn in methods.items():
            t = time.perf_counter()
            out = fn()
            times[name].append(time.perf_counter() - t)
            del out
    whole = time.perf_counter() - started
    load_after = os.getloadavg()[0]

    best = {n: min(v) for n, v in times.items()}
    median = {n: statistics.median(v) for n, v in times.items()}
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.check_output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], text=True).strip()
        if subprocess.check_output(["git", "-C", str(REPO), "status", "--porcelain", "--", "src", "python"], text=True):
            commit += " + uncommitted changes"
    except (OSError, subprocess.CalledProcessError):
        commit = "?"
    when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    L = [
        "## Preprocessing: `tokenize_and_mask`, list and Arrow paths vs `encode_batch` (bench_preprocess.py)",
        "",
        f"- Date: {when}; timed passes {whole:.1f} s. Command: `python benches/bench_preprocess.py"
        + (f" --rows {args.rows}" if args.rows != 10_000 else "")
        + (f" --tokens {args.tokens}" if args.tokens != 400 else "")
        + "`",
        f"- Machine: {cpu}, {os.cpu_count()} CPUs; 1-minute load average before / after: "
        f"{load_before:.2f} / {load_after:.2f} (other jobs shared the CPUs: expect noise)",
        f"- Software: Python {platform.python_version()}, tokenizers {tokenizers.__version__}, "
        f"pyarrow {pa.__version__}, sftmask {sftmask.__version__} (commit {commit}, release build); "
        f"**{args.threads} threads** for every method",
        f"- Data: {args.rows:,} multi-turn Llama-3 chats, {args.tokens * 0.7:.0f}-{args.tokens * 1.2:.0f} "
        f"nominal tokens each, {tokens:,} tokens in all (with BOS); response and user templates; "
        f"best and median of {args.passes} passes",
        "- " + "; ".join(f"{k}: {'yes' if v else '**NO**'}" for k, v in checks.items()),
        "",
        "| method | rows/s best | tokens/s best | tokens/s median | x floor time (best) | x floor time (median) |",
        "|---|---|---|---|---|---|",
    ]
    for n in methods:
        L.append(
            f"| {n} | {args.rows / best[n]:,.0f} | {bc.fmt_rate(tokens / best[n])} | "
            f"{bc.fmt_rate(tokens / median[n])} | {best[n] / best['floor']:.2f}x | "
            f"{median[n] / median['floor']:.2f}x |"
        )
    L.append("")
    L.append(
        "`x floor time` = the method's time over `encode_batch`'s (1.00x = as fast as tokenizing alone; "
        "SPEC: rendering and masking should add at most 20%)."
    )
    text = "\n".join(L)
    print(text)
    if args.out != "none":
        replace_section(Path(args.out), text)
        print(f"\nwrote {args.out}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
