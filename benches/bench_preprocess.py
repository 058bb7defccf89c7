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

Then two more tables from the same run:

* **Scaling** (``--scaling-rows``, default 10k, 100k, 1M): ``floor``, ``list`` and ``arrow`` on
  the first N rows of one pool of *short single-turn* chats (``--scaling-tokens``, default 24
  nominal content tokens, no system prompt), so that 1M rows fit in a few minutes on 2 cores, in
  calls of at most 100k rows (bounded memory), and ``arrow`` once more as one call on the whole
  table. Best of 3 passes up to 100k rows, 1 pass at 1M. Time per row should stay flat.
* **Engines** (``--engine-rows``, default 20k rows of the main table's distribution, written as
  20 Parquet shards): Parquet -> ``tokenize_and_mask`` on Arrow batches -> Parquet under Ray Data
  (``ray.init(num_cpus=2)``, an actor class: ``read_parquet -> map_batches(batch_format="pyarrow")
  -> write_parquet``), HF ``datasets`` (``with_format("arrow").map(batched=True, num_proc=N)``) and
  Spark (``local[N]``, ``mapInArrow``), with 1 and 2 workers (``--engine-workers``), each calling
  ``tokenize_and_mask`` on one thread; the tokenizer reaches each worker once. Timed: from the
  files to the output, workers' start included (the Ray cluster and the SparkSession are up
  before). Each worker reports its busy time and its peak RSS (``ru_maxrss``). The floor is
  ``encode_batch`` of the same texts on as many threads as workers, in a subprocess (tokenizers
  sizes its pool once per process). Output rows are checked equal to the in-process Arrow rows.
  An engine that is not installed (Spark: or no Java) is skipped with a note.

Usage::

    python benches/bench_preprocess.py               # everything, writes its section of benches/RESULTS.md
    python benches/bench_preprocess.py --rows 2000 --scaling-rows 1000,10000 --engine-rows 2000 --out none
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from results_md import write_section

REPO = Path(__file__).resolve().parents[1]


def _rss_now() -> int:
    """This process's resident set size in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def scaling_table(bc: Any, tok: Any, cpt: float, sizes: list[int], nominal: int, kw: dict[str, Any]) -> list[str]:
    """floor / list / arrow on the first N rows of one pool of short single-turn chats."""
    import pyarrow as pa

    import sftmask

    rng = random.Random(1)
    lo, hi = int(nominal * 0.7), int(nominal * 1.2)

    def short_chat() -> str:
        # One user sentence or so and a short answer, no system prompt: per-row costs dominate.
        chars = rng.randint(lo, hi) * cpt
        user = bc._content(rng, int(chars * 0.25), bc.LEADING_NEWLINE_USER)
        return bc._render([("user", user), ("assistant", bc._content(rng, int(chars * 0.75), 0.15))])

    pool = [short_chat() for _ in range(max(sizes))]
    call = 100_000  # rows per call: the outputs of 1M rows as Python objects would need ~8 GB
    lines = [
        f"### Scaling with rows: {', '.join(f'{n:,}' for n in sizes)} short single-turn chats",
        "",
        f"The first N rows of one pool of single-turn Llama-3 chats (a user turn and an answer, {lo}-{hi} "
        "nominal content tokens, no system prompt), much shorter than above so that 1M rows fit in a few "
        "minutes here; per-row costs weigh more on short rows. `floor`, `list` and `arrow` process the rows "
        f"in calls of at most {call:,} (as an engine's batches would; a call's output is dropped before the "
        "next, so memory stays bounded); `arrow, one call` passes the whole table at once. Best of 3 passes "
        "up to 100k rows, 1 pass above; same threads and templates as above. CPU µs/row: the process's CPU time "
        "(all threads; best pass) per row, which other jobs on a shared machine disturb less than wall time: "
        "a long single pass sees their average load, the best of 3 short ones a quiet moment.",
        "",
        "| rows | tokens | floor s | list s | arrow s | arrow, one call s | list x floor | arrow x floor | "
        "wall µs/row floor / list / arrow / one call | CPU µs/row, same order | arrow tokens/s | lengths agree |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def lengths_of(name: str, out: Any) -> list[int]:
        if name == "floor":
            return [len(e) for e in out]
        if name == "list":
            return [len(r) for r in out["input_ids"]]
        return out.column("length").to_pylist()  # arrow, one call

    for n in sizes:
        texts = pool[:n]
        table = pa.table({"id": pa.array(range(n), pa.int64()), "text": texts})
        parts = [(texts[i : i + call], table.slice(i, call)) for i in range(0, n, call)]
        methods: dict[str, Callable[[Any, Any], Any]] = {
            "floor": lambda t, _: tok.encode_batch(t, add_special_tokens=True),
            "list": lambda t, _: sftmask.tokenize_and_mask(t, tok, bc.RESPONSE, **kw),
            "arrow": lambda _, a: sftmask.tokenize_and_mask(a, tok, bc.RESPONSE, **kw),
        }
        lengths: dict[str, list[int]] = {}
        best = {name: float("inf") for name in [*methods, "one call"]}
        cpu = dict(best)  # process CPU time, all threads: what other jobs on the machine disturb least
        for p in range(3 if n <= 100_000 else 1):
            for name in best:
                seconds = cpu_seconds = 0.0
                for t_part, a_part in parts if name != "one call" else [(texts, table)]:
                    t, c = time.perf_counter(), time.process_time()
                    out = methods.get(name, methods["arrow"])(t_part, a_part)
                    seconds += time.perf_counter() - t
                    cpu_seconds += time.process_time() - c
                    if p == 0:  # untimed: what each method made, to compare
                        lengths.setdefault(name, []).extend(lengths_of(name, out))
                    del out
                best[name] = min(best[name], seconds)
                cpu[name] = min(cpu[name], cpu_seconds)
        tokens = sum(lengths["floor"])
        agree = all(v == lengths["floor"] for v in lengths.values())
        us = " / ".join(f"{best[m] / n * 1e6:.1f}" for m in best)
        cpu_us = " / ".join(f"{cpu[m] / n * 1e6:.1f}" for m in best)
        lines.append(
            f"| {n:,} | {tokens:,} | {best['floor']:.2f} | {best['list']:.2f} | {best['arrow']:.2f} | "
            f"{best['one call']:.2f} | {best['list'] / best['floor']:.2f}x | {best['arrow'] / best['floor']:.2f}x | "
            f"{us} | {cpu_us} | {bc.fmt_rate(tokens / best['arrow'])} | {'yes' if agree else '**NO**'} |"
        )
        print(lines[-1], flush=True)
    return lines


def _record(stats_dir: str, seconds: float, cpu: float, rows: int) -> None:
    """Adds one call to this worker process's ``<pid>.json`` in ``stats_dir`` (busy and CPU
    seconds, rows, RSS when first seen, peak RSS): the driver reads these files after the run."""
    path = Path(stats_dir) / f"{os.getpid()}.json"
    old = (
        json.loads(path.read_text()) if path.exists() else {"busy": 0.0, "cpu": 0.0, "rows": 0, "rss_first": _rss_now()}
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    new = {"busy": old["busy"] + seconds, "cpu": old["cpu"] + cpu, "rows": old["rows"] + rows, "rss_peak": peak}
    path.write_text(json.dumps({**old, **new}))


def _timed_call(batch: Any, tokenizer: Any, stats_dir: str) -> Any:
    """``tokenize_and_mask`` on one Arrow batch, on one thread, recorded by ``_record``. What every
    engine's worker runs (module level: the engines pickle it into their workers)."""
    import sftmask

    t, c = time.perf_counter(), time.process_time()
    out = sftmask.tokenize_and_mask(batch, tokenizer, _RESPONSE, _USER, num_threads=1, on_missing="ignore")
    _record(stats_dir, time.perf_counter() - t, time.process_time() - c, batch.num_rows)
    return out


# The templates, as constants the worker functions read (bench_collators' values).
_RESPONSE = "<|start_header_id|>assistant<|end_header_id|>\n\n"
_USER = "<|start_header_id|>user<|end_header_id|>\n\n"


class RayWorker:
    """A Ray Data actor: the tokenizer comes once, as a constructor argument."""

    def __init__(self, tokenizer: Any, stats_dir: str) -> None:
        self.tokenizer, self.stats_dir = tokenizer, stats_dir

    def __call__(self, batch: Any) -> Any:
        return _timed_call(batch, self.tokenizer, self.stats_dir)


def _datasets_fn(batch: Any, tokenizer: Any, stats_dir: str) -> Any:
    return _timed_call(batch, tokenizer, stats_dir)


def _spark_fn(broadcast: Any, stats_dir: str) -> Callable[[Any], Any]:
    def run(batches: Any) -> Any:
        tokenizer = broadcast.value  # unpickled once per (reused) Python worker
        for batch in batches:
            yield from _timed_call(batch, tokenizer, stats_dir).to_batches()

    return run


def floor_in_subprocess(shards: Path, threads: int) -> float:
    """Best of 2 ``encode_batch`` passes over the shards' texts in a fresh process on ``threads``
    threads (tokenizers sizes its thread pool once per process)."""
    out = subprocess.run(
        [sys.executable, __file__, "--floor-of", str(shards), "--threads", str(threads)],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])


def floor_of(shards: str) -> int:
    import pyarrow.parquet as pq
    import tokenizers

    sys.path.insert(0, str(Path(__file__).parent))
    import bench_collators as bc

    tok = tokenizers.Tokenizer.from_file(str(bc.find_tokenizer(None)))
    texts = pq.read_table(shards).column("text").to_pylist()
    tok.encode_batch(texts[:1000], add_special_tokens=True)  # warm the pool
    best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        out = tok.encode_batch(texts, add_special_tokens=True)
        best = min(best, time.perf_counter() - t)
        del out
    print(json.dumps({"seconds": best}))
    return 0


def engines_table(bc: Any, tok: Any, cpt: float, rows: int, nominal: int, workers: list[int]) -> list[str]:
    """File -> tokenize_and_mask -> Parquet under Ray Data, datasets and Spark, 1, 2, ... workers."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import sftmask

    rng = random.Random(2)
    lo, hi = int(nominal * 0.7), int(nominal * 1.2)
    texts = [bc._chat(rng, rng.randint(lo, hi), True, cpt) for _ in range(rows)]
    table = pa.table({"id": pa.array(range(rows), pa.int64()), "text": texts})
    assert (bc.RESPONSE, bc.USER) == (_RESPONSE, _USER)
    # Ray's socket paths must be short: its own folder under /tmp.
    work = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    notes: list[str] = []
    results: dict[tuple[str, int], dict[str, Any]] = {}
    try:
        shards = work / "in"
        shards.mkdir()
        n_shards = 20
        step = -(-rows // n_shards)
        for i in range(0, rows, step):
            pq.write_table(table.slice(i, step), shards / f"part-{i // step:03d}.parquet")
        files = sorted(str(p) for p in shards.iterdir())
        expected = sftmask.tokenize_and_mask(table, tok, bc.RESPONSE, bc.USER, on_missing="ignore")
        tokens = sum(expected.column("length").to_pylist())
        floors = {w: floor_in_subprocess(shards, w) for w in workers}
        counter = iter(range(10**6))

        def timed(engine: str, w: int, pipeline: Callable[[str, Path], None]) -> None:
            """Best of 2 runs of ``pipeline(stats_dir, out_dir)``; checks its output rows."""
            for _ in range(2):
                k = next(counter)
                stats_dir, out_dir = work / f"stats-{k}", work / f"out-{k}"
                stats_dir.mkdir()
                t = time.perf_counter()
                pipeline(str(stats_dir), out_dir)
                seconds = time.perf_counter() - t
                got = pq.read_table(out_dir).sort_by("id")
                # Cast: Parquet readers may name the list's item field differently.
                same = all(
                    got.column(c).cast(expected.column(c).type).equals(expected.column(c))
                    for c in ("input_ids", "labels", "length")
                )
                per_worker = [json.loads(p.read_text()) for p in sorted(stats_dir.iterdir())]
                print(f"{engine} x{w}: {seconds:.2f} s, {len(per_worker)} workers, rows equal: {same}", flush=True)
                if (engine, w) not in results or seconds < results[engine, w]["seconds"]:
                    results[engine, w] = {"seconds": seconds, "workers": per_worker, "same": same}

        try:
            import ray
            import ray.data

            ray.init(
                num_cpus=2,
                include_dashboard=False,
                object_store_memory=512 * 2**20,
                _temp_dir=str(work / "ray"),
                log_to_driver=False,
            )
            ray.data.DataContext.get_current().enable_progress_bars = False
            for w in workers:

                def ray_pipeline(stats_dir: str, out_dir: Path, w: int = w) -> None:
                    (
                        ray.data.read_parquet(str(shards))
                        # Ray reads small files into one block, which would keep all but one
                        # actor idle: split it (streaming, no shuffle) into blocks of one batch.
                        .repartition(target_num_rows_per_block=1000)
                        .map_batches(
                            RayWorker,
                            fn_constructor_args=(tok, stats_dir),
                            batch_format="pyarrow",
                            batch_size=1000,
                            compute=ray.data.ActorPoolStrategy(size=w),
                            # Half a CPU per actor: the read and write tasks need the rest of the
                            # 2-CPU cluster; each actor still runs one sftmask thread.
                            num_cpus=0.5,
                        )
                        .write_parquet(str(out_dir))
                    )

                timed("Ray Data", w, ray_pipeline)
            ray.shutdown()
        except ImportError as e:
            notes.append(f"Ray Data not run: {e}.")
        try:
            import datasets

            for w in workers:

                def datasets_pipeline(stats_dir: str, out_dir: Path, w: int = w) -> None:
                    cache = str(Path(stats_dir).with_name(Path(stats_dir).name + "-cache"))
                    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=cache)
                    ds = ds.with_format("arrow").map(
                        _datasets_fn,
                        batched=True,
                        batch_size=1000,
                        num_proc=w if w > 1 else None,
                        fn_kwargs={"tokenizer": tok, "stats_dir": stats_dir},
                        remove_columns=["text"],
                    )
                    out_dir.mkdir()
                    ds.to_parquet(str(out_dir / "part-0.parquet"))

                timed("datasets", w, datasets_pipeline)
        except ImportError as e:
            notes.append(f"datasets not run: {e}.")
        if shutil.which("java") or os.environ.get("JAVA_HOME"):
            try:
                from pyspark.sql import SparkSession
            except ImportError as e:
                notes.append(f"Spark not run: {e}.")
            else:
                os.environ["PYSPARK_PYTHON"] = os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
                schema = "id long, input_ids array<int>, labels array<int>, length int"
                for w in workers:
                    spark = (
                        SparkSession.builder.master(f"local[{w}]")
                        .config("spark.driver.memory", "2g")
                        .config("spark.ui.enabled", "false")
                        .config("spark.driver.bindAddress", "127.0.0.1")
                        .config("spark.driver.host", "127.0.0.1")
                        .config("spark.local.dir", str(work / "spark"))
                        .getOrCreate()
                    )
                    spark.sparkContext.setLogLevel("ERROR")
                    broadcast = spark.sparkContext.broadcast(tok)

                    def spark_pipeline(
                        stats_dir: str, out_dir: Path, w: int = w, spark: Any = spark, broadcast: Any = broadcast
                    ) -> None:
                        df = spark.read.parquet(str(shards)).repartition(2 * w)  # small files: one split
                        df.mapInArrow(_spark_fn(broadcast, stats_dir), schema).write.parquet(str(out_dir))

                    timed("Spark", w, spark_pipeline)
                    spark.stop()
        else:
            notes.append("Spark not run: no Java.")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [
        f"### Engines: {rows:,} rows, Parquet -> `tokenize_and_mask` -> Parquet, 1 and 2 workers",
        "",
        f"{rows:,} multi-turn chats of the main table's distribution ({tokens:,} tokens) in {n_shards} Parquet "
        "shards. Every worker calls `tokenize_and_mask` on Arrow batches of 1,000 rows on **1 thread**; the "
        "tokenizer reaches each worker once. Seconds: from the files to the Parquet output, workers' start "
        "included, engine start (`ray.init`, the SparkSession) not; best of 2. Ray Data: `ray.init(num_cpus=2)`, "
        "`read_parquet -> repartition(target_num_rows_per_block=1000) -> map_batches(actor class, "
        'batch_format="pyarrow", num_cpus=0.5) -> write_parquet`. datasets: `load_dataset("parquet") -> '
        'with_format("arrow").map(batched=True, num_proc=N) -> to_parquet` (N=1: in process). Spark: '
        "`local[N]`, `read.parquet -> repartition(2N) -> mapInArrow -> write.parquet`, tokenizer broadcast. "
        "Floor: `encode_batch` of the same texts on N threads in a fresh process. Busy: the share of the "
        "pipeline's time each worker spent inside `tokenize_and_mask`; CPU µs/row: the CPU time of those calls "
        "(all workers) per row, which stays put when other jobs take the cores (the wall time does not). "
        "RSS: each worker process's RSS at its first batch and its peak (`ru_maxrss`); not shown for "
        "datasets, whose workers are forks of this benchmark's process and count its pages.",
        "",
        "| engine | workers | seconds | rows/s | tokens/s | floor s (N threads) | x floor | speed-up 1 -> N | "
        "busy per worker | CPU µs/row in calls | RSS per worker first / peak (MiB) | rows = in-process rows |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (engine, w), r in results.items():
        busy = " / ".join(f"{x['busy'] / r['seconds']:.0%}" for x in r["workers"])
        rss = " ; ".join(f"{x['rss_first'] / 2**20:.0f} / {x['rss_peak'] / 2**20:.0f}" for x in r["workers"])
        if engine == "datasets":
            rss = "– (forks of the benchmark)"
        one = results.get((engine, workers[0]), r)["seconds"]
        cpu_us = sum(x["cpu"] for x in r["workers"]) / max(1, sum(x["rows"] for x in r["workers"])) * 1e6
        lines.append(
            f"| {engine} | {w} ({len(r['workers'])} ran) | {r['seconds']:.2f} | {rows / r['seconds']:,.0f} | "
            f"{bc.fmt_rate(tokens / r['seconds'])} | {floors[w]:.2f} | {r['seconds'] / floors[w]:.2f}x | "
            f"{one / r['seconds']:.2f}x | {busy} | {cpu_us:.0f} | {rss} | {'yes' if r['same'] else '**NO**'} |"
        )
    return lines + (["", *notes] if notes else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--tokens", type=int, default=400, help="nominal tokens per row (default 400)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "benches" / "RESULTS.md"), help="markdown file, or 'none'")
    parser.add_argument("--scaling-rows", default="10000,100000,1000000", help="comma-separated, or 'none'")
    parser.add_argument("--scaling-tokens", type=int, default=24, help="nominal content tokens per scaling row")
    parser.add_argument("--engine-rows", type=int, default=20_000, help="rows for the engines table (0: skip it)")
    parser.add_argument("--engine-workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--floor-of", help=argparse.SUPPRESS)  # internal: the engines' floor, in a subprocess
    args = parser.parse_args(argv)

    # Before tokenizers starts its pool: the floor runs on the same number of threads.
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    if args.floor_of:
        return floor_of(args.floor_of)
    sys.path.insert(0, str(Path(__file__).parent))
    import bench_collators as bc
    import pyarrow as pa
    import tokenizers

    import sftmask

    run_started = time.perf_counter()
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
        "the goal: rendering and masking add at most 20%)."
    )
    if args.scaling_rows != "none":
        sizes = [int(x) for x in args.scaling_rows.split(",")]
        L += ["", *scaling_table(bc, tok, cpt, sizes, args.scaling_tokens, kw)]
    if args.engine_rows:
        workers = [int(x) for x in args.engine_workers.split(",")]
        L += ["", *engines_table(bc, tok, cpt, args.engine_rows, args.tokens, workers)]
    L += [
        "",
        f"Whole run: {time.perf_counter() - run_started:.0f} s; 1-minute load average at the end: "
        f"{os.getloadavg()[0]:.2f}.",
    ]
    text = "\n".join(L)
    print(text)
    if args.out != "none":
        write_section("bench_preprocess", text, Path(args.out))
        print(f"\nwrote {args.out}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
