"""Scale-out engines, run for real on this machine: HF ``datasets`` (``num_proc=2``), Ray Data
(a local 2-CPU cluster) and Spark (``local[2]``), each calling ``sftmask.tokenize_and_mask`` on
Arrow batches (the recipes of docs/scale-out.md).

Each test writes a few thousand Llama-3 chats (the real fixture tokenizer) to a file, runs the
engine's pipeline from that file to Parquet, reads the output back and checks every row, joined
by ``id`` (engines reorder rows), against the single-process list API on the same texts. The
Ray and Spark tests also count how often the tokenizer reached each worker process: once.

An engine that is not installed (or Spark without Java) skips, unless ``SFTMASK_REQUIRE_ENGINES=1``
(set by .ci/run), where it fails: CI must run all three.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import sftmask
from chat_formats import LLAMA3
from conftest import load_tokenizer
from test_arrow import conversation_texts

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

ROWS = 3000
RESPONSE = LLAMA3.response
INSTRUCTIONS = list(LLAMA3.instructions)
TESTS = Path(__file__).resolve().parent
REQUIRED = os.environ.get("SFTMASK_REQUIRE_ENGINES") == "1"


def unavailable(reason: str):
    """Skips, or fails where CI requires the engines."""
    if REQUIRED:
        pytest.fail(f"{reason} (SFTMASK_REQUIRE_ENGINES=1: the engine tests must run)")
    pytest.skip(reason)


def engine(name: str):
    try:
        return __import__(name)
    except ImportError as e:
        unavailable(f"{name} is not installed ({e}); pip install '.[test]' brings it")


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    """Conversations (a ``messages`` column, labelled by the chat template in the workers), their
    Parquet file and, per id, the single-process result; the tokenizer they need."""
    from test_messages import QWEN, plain_conversations, tokenizer_for

    folder = tmp_path_factory.mktemp("engine-chats")
    convs = [c for seed in range(40, 400) for c in plain_conversations(seed=seed, count=10)][:600]
    tok = tokenizer_for(QWEN)
    rows = {"id": list(range(len(convs))), "messages": convs, "source": [f"src-{i % 5}" for i in range(len(convs))]}
    pq.write_table(pa.table(rows), folder / "chats.parquet")
    # The truth is the list API on the rows as they come back from Parquet (every message with
    # every key of the column's struct type), what a worker's Arrow batch holds.
    back = pq.read_table(folder / "chats.parquet").column("messages").to_pylist()
    listed = sftmask.tokenize_and_mask(back, tok, on_missing="ignore")
    expected = {i: (ids, labels) for i, ids, labels in zip(rows["id"], listed["input_ids"], listed["labels"])}
    return folder, rows, expected, tok


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The input files and, per id, the single-process result (``input_ids``, ``labels``)."""
    folder = tmp_path_factory.mktemp("engines")
    texts = conversation_texts(LLAMA3, ROWS, seed=21)
    rows = {"id": list(range(ROWS)), "text": texts, "source": [f"src-{i % 5}" for i in range(ROWS)]}
    pq.write_table(pa.table(rows), folder / "chats.parquet")
    with open(folder / "chats.jsonl", "w", encoding="utf-8") as f:
        for i, text, source in zip(rows["id"], rows["text"], rows["source"]):
            f.write(json.dumps({"id": i, "text": text, "source": source}) + "\n")
    listed = sftmask.tokenize_and_mask(texts, load_tokenizer("llama3"), RESPONSE, INSTRUCTIONS, on_missing="ignore")
    expected = {i: (ids, labels) for i, ids, labels in zip(rows["id"], listed["input_ids"], listed["labels"])}
    return folder, rows, expected


def assert_every_row(out, rows, expected):
    """``out`` (a pyarrow.Table read back from the engine's output) has every input row once,
    its pass-through columns unchanged and its ids and labels those of the single-process run."""
    assert set(out.column_names) == {"id", "source", "input_ids", "labels", "length"}, out.column_names
    assert out.num_rows == len(expected)
    got = out.sort_by("id").to_pydict()
    assert got["id"] == rows["id"]
    assert got["source"] == rows["source"]
    mismatched = [
        i for i, ids, labels in zip(got["id"], got["input_ids"], got["labels"]) if (ids, labels) != expected[i]
    ]
    assert not mismatched, f"{len(mismatched)} rows differ from the single-process result, e.g. id {mismatched[0]}"
    assert got["length"] == [len(expected[i][0]) for i in got["id"]]
    trained = sum(1 for i in got["id"] if any(x != -100 for x in expected[i][1]))
    assert trained > len(expected) // 2, "too little was trained"


def arrivals_per_process(folder: Path) -> collections.Counter:
    return collections.Counter(p.name.split("-")[0] for p in folder.iterdir())


def worker_env(monkeypatch):
    """Worker processes import tests/engine_workers.py by name, with this interpreter."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))


def _datasets_fn(batch, tokenizer):
    # Module level: `datasets` pickles it into its worker processes by reference.
    assert isinstance(batch, pa.Table), type(batch)
    return sftmask.tokenize_and_mask(batch, tokenizer, RESPONSE, INSTRUCTIONS, on_missing="ignore")


def test_datasets_map_num_proc_2_jsonl_to_parquet(data, tmp_path):
    datasets = engine("datasets")
    folder, rows, expected = data
    ds = datasets.load_dataset(
        "json", data_files=str(folder / "chats.jsonl"), split="train", cache_dir=str(tmp_path / "cache")
    )
    out = ds.with_format("arrow").map(
        _datasets_fn,
        batched=True,
        batch_size=250,
        num_proc=2,
        fn_kwargs={"tokenizer": load_tokenizer("llama3")},
        remove_columns=["text"],
    )
    out.to_parquet(str(tmp_path / "out.parquet"))
    assert_every_row(pq.read_table(tmp_path / "out.parquet"), rows, expected)


@pytest.fixture
def ray_cluster(monkeypatch):
    ray = engine("ray")
    engine("ray.data")
    worker_env(monkeypatch)
    # Ray's socket paths must fit in 107 bytes: pytest's tmp_path is too deep.
    temp = tempfile.mkdtemp(prefix="ray-")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=256 * 1024**2,
        _temp_dir=temp,
        log_to_driver=False,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_data_read_map_batches_write(data, ray_cluster, tmp_path):
    from engine_workers import RayTokenizeAndMask, Shipped

    ray = ray_cluster
    folder, rows, expected = data
    arrivals = tmp_path / "arrivals"
    arrivals.mkdir()
    shipped = Shipped(load_tokenizer("llama3"), str(arrivals))
    (
        ray.data.read_parquet(str(folder / "chats.parquet"))
        # One file is one block: split it (streaming, no shuffle) so that both actors get work.
        .repartition(target_num_rows_per_block=500)
        .map_batches(
            RayTokenizeAndMask,
            fn_constructor_args=(shipped, RESPONSE, INSTRUCTIONS),
            batch_format="pyarrow",
            batch_size=250,
            # Two actors of half a CPU each: on a 2-CPU cluster, whole CPUs for both would leave
            # none for the read and write tasks, and the pipeline would wait forever.
            compute=ray.data.ActorPoolStrategy(size=2),
            num_cpus=0.5,
        )
        .write_parquet(str(tmp_path / "out"))
    )
    assert_every_row(pq.read_table(tmp_path / "out"), rows, expected)
    per_process = arrivals_per_process(arrivals)
    assert 1 <= len(per_process) <= 2 and set(per_process.values()) == {1}, per_process


def java_unavailable() -> str | None:
    java = Path(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") else shutil.which("java")
    if not java or not Path(java).exists():
        return "Spark needs Java 17+ (no java on PATH or in JAVA_HOME; .ci/run installs default-jre-headless)"
    version = subprocess.run([str(java), "-version"], capture_output=True, text=True).stderr
    return None if version else f"{java} -version printed nothing"


@pytest.fixture
def spark(monkeypatch, tmp_path):
    engine("pyspark")
    reason = java_unavailable()
    if reason:
        unavailable(reason)
    from pyspark.sql import SparkSession

    worker_env(monkeypatch)
    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    monkeypatch.setenv("PYSPARK_DRIVER_PYTHON", sys.executable)
    session = (
        SparkSession.builder.master("local[2]")
        .appName("sftmask-test")
        .config("spark.driver.memory", "1g")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.local.dir", str(tmp_path / "spark-local"))
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()


def test_spark_map_in_arrow(data, spark, tmp_path):
    from engine_workers import Shipped, spark_tokenize_and_mask

    folder, rows, expected = data
    arrivals = tmp_path / "arrivals"
    arrivals.mkdir()
    tokenizer = spark.sparkContext.broadcast(Shipped(load_tokenizer("llama3"), str(arrivals)))
    schema = "id long, source string, input_ids array<int>, labels array<int>, length int"
    df = spark.read.parquet(str(folder / "chats.parquet")).repartition(6)
    df.mapInArrow(spark_tokenize_and_mask(tokenizer, RESPONSE, INSTRUCTIONS), schema).write.parquet(
        str(tmp_path / "out")
    )
    assert_every_row(pq.read_table(tmp_path / "out"), rows, expected)
    per_process = arrivals_per_process(arrivals)
    assert 1 <= len(per_process) <= 2 and set(per_process.values()) == {1}, per_process


def test_ray_data_messages_column(chats, ray_cluster, tmp_path):
    # Conversations through the same pipeline: each actor renders them with the chat template
    # of the tokenizer it received (no templates given).
    from engine_workers import RayTokenizeAndMask, Shipped

    ray = ray_cluster
    folder, rows, expected, tok = chats
    arrivals = tmp_path / "arrivals"
    arrivals.mkdir()
    (
        ray.data.read_parquet(str(folder / "chats.parquet"))
        .repartition(target_num_rows_per_block=100)
        .map_batches(
            RayTokenizeAndMask,
            fn_constructor_args=(Shipped(tok, str(arrivals)), None, None),
            batch_format="pyarrow",
            batch_size=50,
            compute=ray.data.ActorPoolStrategy(size=2),
            num_cpus=0.5,
        )
        .write_parquet(str(tmp_path / "out"))
    )
    assert_every_row(pq.read_table(tmp_path / "out"), rows, expected)


def test_spark_map_in_arrow_messages_column(chats, spark, tmp_path):
    from engine_workers import Shipped, spark_tokenize_and_mask

    folder, rows, expected, tok = chats
    arrivals = tmp_path / "arrivals"
    arrivals.mkdir()
    tokenizer = spark.sparkContext.broadcast(Shipped(tok, str(arrivals)))
    schema = "id long, source string, input_ids array<int>, labels array<int>, length int"
    df = spark.read.parquet(str(folder / "chats.parquet")).repartition(4)
    df.mapInArrow(spark_tokenize_and_mask(tokenizer, None, None), schema).write.parquet(str(tmp_path / "out"))
    assert_every_row(pq.read_table(tmp_path / "out"), rows, expected)
