#!/usr/bin/env python3
"""Packing benchmark: ``sftmask.pack`` against TRL 1.x's ``pack_dataset(strategy="bfd")``, one run.

Rows: synthetic tokenized SFT rows (``input_ids`` + ``labels``, int32 Arrow columns); lengths drawn
log-normally (median ~300 tokens, clipped to 1..6000) with a fixed seed, so some rows exceed
``max_length`` and are truncated. Both packers get the same ``datasets.Dataset`` (TRL's input
form) and sftmask also the bare ``pyarrow.Table`` and a list of dicts.

Methods, each timed once (wall clock, after one small warm-up call):

* ``trl-bfd``: ``trl.pack_dataset(ds, max_length, strategy="bfd")`` as a user calls it (TRL packs
  each ``datasets.map`` batch, 1000 rows by default, on its own).
* ``trl-bfd-one-batch``: the same with ``map_kwargs={"batch_size": len(ds)}`` (its best fill).
* ``sftmask-map``: ``ds.with_format("arrow").map(sftmask.pack, batched=True, batch_size=len(ds))``.
* ``sftmask-table``: ``sftmask.pack(table, max_length)`` on the Arrow table.
* ``sftmask-list``: ``sftmask.pack(rows, max_length)`` on a list of dicts of Python lists (the
  first 10k rows only: Python ints cost ~36 bytes per token).

Then sftmask alone on 1M rows (shorter rows, median ~40 tokens, ``max_length`` 1024) and the
same distribution at 100k, to show how time grows with rows.

Needs TRL >= 1.16 (``.venv-trl-latest``; see ``.ci/run``) and a release build of sftmask
(``maturin develop --release``). Writes the "Packing" section of benches/RESULTS.md
(``--out`` for another file, ``--quick`` for a smoke run that writes nothing).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from results_md import write_section

import sftmask

REPO = Path(__file__).resolve().parent.parent
IGNORE = -100


def make_table(rows: int, median: float, cap: int, seed: int) -> pa.Table:
    """``rows`` synthetic rows: ids in a 128k vocabulary, the first ~40% of each row masked."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(median), 0.8, rows).astype(np.int64), 1, cap)
    offsets = np.zeros(rows + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    ids = rng.integers(0, 128_000, int(offsets[-1]), dtype=np.int32)
    position = np.arange(len(ids)) - np.repeat(offsets[:-1], lengths)
    labels = np.where(position >= (lengths * 0.4).astype(np.int64).repeat(lengths), ids, IGNORE).astype(np.int32)
    column = lambda v: pa.ListArray.from_arrays(pa.array(offsets), pa.array(v))  # noqa: E731
    return pa.table({"input_ids": column(ids), "labels": column(labels)})


def timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def fill(packed: Any, max_length: int) -> float:
    """Fill ratio of a packed ``datasets.Dataset``, read from its Arrow data."""
    tokens = pc.sum(pc.list_value_length(packed.data.column("input_ids"))).as_py()
    return tokens / (len(packed) * max_length)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k / 100k rows, print only")
    parser.add_argument(
        "--out", type=Path, help="markdown file to write the section into (default: benches/RESULTS.md)"
    )
    args = parser.parse_args()

    import datasets
    import trl

    datasets.disable_progress_bars()
    n, n_big, max_length = (10_000, 100_000, 2048) if args.quick else (100_000, 1_000_000, 2048)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()

    table = make_table(n, 300, 6000, seed=0)
    tokens = int(pc.sum(pc.list_value_length(table.column("input_ids"))).as_py())
    ds = datasets.Dataset(table)
    # Python lists of ints cost ~36 bytes per token: the list input is timed on the first 10k rows.
    n_list = min(n, 10_000)
    rows_list = table.slice(0, n_list).to_pylist()
    sftmask.pack(rows_list[:100], max_length)  # warm-up (imports, first allocation)
    trl.pack_dataset(ds.select(range(100)), max_length, strategy="bfd")

    results: list[dict[str, Any]] = []

    def record(name: str, seconds: float, bins: int, fill_ratio: float, rows: int = n) -> None:
        results.append({"method": name, "rows": rows, "seconds": seconds, "bins": bins, "fill": fill_ratio})
        print(f"{name:22s} {seconds:8.3f} s  {rows / seconds:12,.0f} rows/s  bins {bins:,}  fill {fill_ratio:.4f}")

    for name, kwargs in (("trl-bfd", {}), ("trl-bfd-one-batch", {"map_kwargs": {"batch_size": len(ds)}})):
        s, out = timed(lambda kw=kwargs: trl.pack_dataset(ds, max_length, strategy="bfd", **kw))
        record(name, s, len(out), fill(out, max_length))

    s, out = timed(
        lambda: ds.with_format("arrow").map(
            sftmask.pack, batched=True, batch_size=len(ds), fn_kwargs={"max_length": max_length}
        )
    )
    record("sftmask-map", s, len(out), fill(out, max_length))
    s, (_, stats) = timed(lambda: sftmask.pack(table, max_length, return_stats=True))
    record("sftmask-table", s, stats.bins, stats.fill_ratio)
    s, (_, stats_list) = timed(lambda: sftmask.pack(rows_list, max_length, return_stats=True))
    record(f"sftmask-list ({n_list:,} rows)", s, stats_list.bins, stats_list.fill_ratio, rows=n_list)
    rows_list = out = None  # free them before the 1M-row run

    scaling = []
    for rows in (n_big // 10, n_big):
        t = make_table(rows, 40, 4000, seed=1)
        s, (_, st) = timed(lambda t=t: sftmask.pack(t, 1024, return_stats=True))
        scaling.append({"rows": rows, "tokens": st.tokens, "seconds": s, "bins": st.bins, "fill": st.fill_ratio})
        print(
            f"scaling {rows:>9,} rows {st.tokens:>12,} tokens  {s:7.3f} s  {rows / s:12,.0f} rows/s  "
            f"fill {st.fill_ratio:.4f}"
        )
        del t

    if args.quick and not args.out:
        return
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    lines = [
        "## Packing (issue 12): sftmask.pack vs TRL 1.x pack_dataset",
        "",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}; whole run "
        f"{(time.perf_counter() - started) / 60:.1f} min; command `python benches/bench_pack.py` in `.venv-trl-latest`",
        f"- Machine: {os.cpu_count()} CPUs; {platform.platform()}; 1-minute load average before / after: "
        f"{load_before:.2f} / {os.getloadavg()[0]:.2f} (shared machine: expect noise)",
        f"- Software: Python {platform.python_version()}, trl {trl.__version__}, datasets {datasets.__version__}, "
        f"pyarrow {pa.__version__}; sftmask {sftmask.__version__} (release build) at commit {commit}",
        f"- Data: {n:,} synthetic rows, {tokens:,} tokens (log-normal lengths, median ~300, clipped to 1..6000), "
        f"int32 Arrow columns `input_ids`, `labels`; `max_length` {max_length}, truncation right (TRL `bfd`). "
        "Each method timed once after a warm-up; `fill` = tokens / (bins x max_length).",
        "",
        "| method | seconds | rows/s | bins | fill |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['method']} | {r['seconds']:.3f} | {r['rows'] / r['seconds']:,.0f} | {r['bins']:,} | "
            f"{r['fill']:.4f} |"
        )
    lines += [
        "",
        "`trl-bfd` packs each 1000-row map batch on its own; `trl-bfd-one-batch` and the sftmask rows pack "
        "all rows at once (same best-fit decreasing rule, so the same bin count). Both `datasets.map` rows include "
        "writing the packed columns to the Arrow cache; sftmask writes int64 columns (TRL keeps the input's int32), "
        "i.e. twice the bytes.",
        "",
        "sftmask alone, shorter rows (median ~40 tokens, clipped to 1..4000), `max_length` 1024, Arrow table in:",
        "",
        "| rows | tokens | seconds | rows/s | bins | fill |",
        "|---|---|---|---|---|---|",
    ]
    for r in scaling:
        lines.append(
            f"| {r['rows']:,} | {r['tokens']:,} | {r['seconds']:.3f} | {r['rows'] / r['seconds']:,.0f} | "
            f"{r['bins']:,} | {r['fill']:.4f} |"
        )
    out_path = args.out or REPO / "benches" / "RESULTS.md"
    write_section("bench_pack", "\n".join(lines), out_path)
    print(f"wrote {out_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
