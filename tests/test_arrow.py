"""Arrow in, Arrow out: `sftmask.tokenize_and_mask` on pyarrow tables and record batches.

Truth: the list API's rows (the contract is "identical, row for row"), and, so that a bug shared
by both paths cannot hide, each tokenizer's own encode and the ground-truth labels computed on
the original string (tests/ground_truth.py). Passed-through columns are compared with the input.
"""

from __future__ import annotations

import random

import pytest

import sftmask
from chat_formats import CHATML, FORMATS, render
from conftest import load_hf_tokenizer, load_tokenizer
from ground_truth import truth_for

pa = pytest.importorskip("pyarrow")

PIECES = ["Hi", " there", "\n", "\n\n", "  ", "\t", "2+2=4", "😀", "你好", "é", " `code`", "x", "."]
FAMILIES = ["llama3", "qwen2", "gpt2", "mistral_v3", "phi3", "tekken"]


def conversation_texts(fmt, n, seed=0):
    """``n`` rendered conversations of ``fmt``; every 7th row has no assistant turn."""
    rng = random.Random(seed)

    def content():
        return "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 6)))

    out = []
    for i in range(n):
        messages = []
        if fmt.system and rng.random() < 0.3:
            messages.append({"role": "system", "content": content()})
        for _ in range(rng.randint(1, 3)):
            messages.append({"role": "user", "content": content()})
            if i % 7:
                messages.append({"role": "assistant", "content": content()})
        out.append(render(fmt, messages))
    return out


def table_of(texts, text_type=None, chunk=None):
    """A table with ``id`` and ``source`` columns around the texts, in chunks of ``chunk`` rows."""
    table = pa.table(
        {
            "id": pa.array(range(len(texts)), pa.int64()),
            "text": pa.array(texts, text_type or pa.string()),
            "source": pa.array([f"src-{i % 3}" for i in range(len(texts))], pa.string()),
        }
    )
    if chunk:
        table = pa.Table.from_batches(table.to_batches(max_chunksize=chunk), table.schema)
    return table


def assert_same_rows(out, listed, table):
    assert out.column_names == ["id", "source", "input_ids", "labels", "length"]
    assert out.schema.field("input_ids").type == pa.list_(pa.int32())
    assert out.schema.field("labels").type == pa.list_(pa.int32())
    assert out.schema.field("length").type == pa.int32()
    assert out.num_rows == table.num_rows
    assert out.column("input_ids").to_pylist() == listed["input_ids"]
    assert out.column("labels").to_pylist() == listed["labels"]
    assert out.column("length").to_pylist() == [len(r) for r in listed["input_ids"]]
    for name in ("id", "source"):
        assert out.schema.field(name) == table.schema.field(name)
        assert out.column(name).combine_chunks().equals(table.column(name).combine_chunks())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("text_type", ["string", "large_string"])
def test_rows_equal_the_list_api_and_ground_truth(family, text_type):
    fmt = FORMATS[family]
    tok = load_tokenizer(family)
    texts = conversation_texts(fmt, 60, seed=len(family))
    table = table_of(texts, getattr(pa, text_type)(), chunk=17)
    kwargs = dict(add_special_tokens=False, on_missing="ignore", return_stats=True)
    out, stats = sftmask.tokenize_and_mask(table, tok, fmt.response, list(fmt.instructions), **kwargs)
    listed, listed_stats = sftmask.tokenize_and_mask(texts, tok, fmt.response, list(fmt.instructions), **kwargs)
    assert_same_rows(out, listed, table)
    assert stats == listed_stats
    assert stats.missing_rows == [i for i in range(60) if i % 7 == 0]
    for text, ids, labels in zip(texts, out.column("input_ids").to_pylist(), out.column("labels").to_pylist()):
        assert (ids, labels) == truth_for(tok, text, fmt)


@pytest.mark.parametrize("family", ["llama3", "qwen2"])
def test_defaults_are_the_list_apis(family):
    """add_special_tokens defaults to True for texts (llama3 adds a BOS), on both paths; a
    transformers tokenizer works as well as a tokenizers one."""
    fmt = FORMATS[family]
    texts = conversation_texts(fmt, 25, seed=5)
    for tok in (load_tokenizer(family), load_hf_tokenizer(family)):
        with pytest.warns(sftmask.MissingTemplateWarning, match=r"4 of 25 rows"):
            out = sftmask.tokenize_and_mask(table_of(texts, chunk=10), tok, fmt.response)
        with pytest.warns(sftmask.MissingTemplateWarning):
            listed = sftmask.tokenize_and_mask(texts, tok, fmt.response)
        assert_same_rows(out, listed, table_of(texts))
    if family == "llama3":
        assert all(r[0] == 128000 for r in out.column("input_ids").to_pylist())


def test_options_reach_the_arrow_path():
    tok = load_tokenizer("qwen2")
    texts = conversation_texts(CHATML, 40, seed=9)
    table = table_of(texts, chunk=13)
    for kwargs in (
        dict(max_length=9),
        dict(train_on="last", ignore_index=-1),
        dict(instruction_template=list(CHATML.instructions), max_length=30),
    ):
        out, stats = sftmask.tokenize_and_mask(
            table, tok, CHATML.response, on_missing="ignore", return_stats=True, **kwargs
        )
        listed, listed_stats = sftmask.tokenize_and_mask(
            texts, tok, CHATML.response, on_missing="ignore", return_stats=True, **kwargs
        )
        assert_same_rows(out, listed, table)
        assert stats == listed_stats
    assert listed_stats.rows_truncated > 0


def test_record_batch_and_capsule_only_objects():
    """A RecordBatch, and objects that only speak the PyCapsule interface (one method each)."""
    tok = load_tokenizer("qwen2")
    texts = conversation_texts(CHATML, 12, seed=4)
    table = table_of(texts)
    listed = sftmask.tokenize_and_mask(texts, tok, CHATML.response, on_missing="ignore")

    class StreamOnly:
        def __arrow_c_stream__(self, requested_schema=None):
            return table_of(texts, chunk=5).__arrow_c_stream__(requested_schema)

    class ArrayOnly:
        def __arrow_c_array__(self, requested_schema=None):
            return table.to_batches()[0].__arrow_c_array__(requested_schema)

    for data in (table.to_batches()[0], StreamOnly(), ArrayOnly()):
        out = sftmask.tokenize_and_mask(data, tok, CHATML.response, on_missing="ignore")
        assert isinstance(out, pa.Table)
        assert_same_rows(out, listed, table)


def test_string_view_and_a_column_of_nulls_only_when_empty():
    tok = load_tokenizer("qwen2")
    texts = conversation_texts(CHATML, 8, seed=2)
    listed = sftmask.tokenize_and_mask(texts, tok, CHATML.response, on_missing="ignore")
    out = sftmask.tokenize_and_mask(table_of(texts, pa.string_view()), tok, CHATML.response, on_missing="ignore")
    assert_same_rows(out, listed, table_of(texts))
    empty_nulls = pa.table({"id": pa.array([], pa.int64()), "text": pa.array([], pa.null())})
    assert sftmask.tokenize_and_mask(empty_nulls, tok, CHATML.response).num_rows == 0


def test_empty_table():
    tok = load_tokenizer("qwen2")
    for table in (table_of([]), table_of(["x"]).slice(0, 0), pa.Table.from_batches([], table_of([]).schema)):
        out, stats = sftmask.tokenize_and_mask(table, tok, CHATML.response, return_stats=True)
        assert out.num_rows == 0
        assert out.column_names == ["id", "source", "input_ids", "labels", "length"]
        assert out.schema.field("labels").type == pa.list_(pa.int32())
        assert stats.rows == 0


def raises_exactly(cls, fn, match=None):
    with pytest.raises(cls, match=match) as info:
        fn()
    assert type(info.value) is cls, f"{type(info.value).__name__}: {info.value}"
    return info.value


def test_hostile_input():
    tok = load_tokenizer("qwen2")
    resp = CHATML.response

    def run(data, **kwargs):
        return lambda: sftmask.tokenize_and_mask(data, tok, resp, **kwargs)

    # A null text is about one row: its index in the whole table, across chunks.
    texts = [render(CHATML, [{"role": "assistant", "content": str(i)}]) for i in range(8)]
    nulled = table_of([None if i == 5 else t for i, t in enumerate(texts)], chunk=3)
    e = raises_exactly(sftmask.RowError, run(nulled), match=r"^row 5: .*null")
    assert (e.row, e.position) == (5, None)
    all_null = pa.table({"text": pa.array([None, None], pa.null())})
    assert raises_exactly(sftmask.RowError, run(all_null)).row == 0
    # Column-level problems.
    raises_exactly(sftmask.OptionTypeError, run(pa.table({"text": [1, 2]})), match="column 'text' is of type Int64")
    raises_exactly(sftmask.OptionTypeError, run(pa.table({"text": [b"x"]})), match="Binary")
    e = raises_exactly(sftmask.OptionError, run(pa.table({"prompt": ["x"]})), match=r"no 'text' column.*'prompt'")
    assert e.row is None
    raises_exactly(sftmask.OptionError, run(table_of(texts), text_column="messages"), match="no 'messages' column")
    clash = pa.table({"length": [3], "text": ["x"]})
    raises_exactly(sftmask.OptionError, run(clash), match="already has a column 'length'")
    raises_exactly(sftmask.OptionError, run(table_of(texts), ignore_index=2**40), match="int32")
    raises_exactly(sftmask.OptionTypeError, run(table_of(texts), text_column=3))
    # Not a table.
    raises_exactly(sftmask.OptionTypeError, run(pa.array(["x"])), match="not a table")
    raises_exactly(sftmask.OptionTypeError, run(pa.chunked_array([["x"]])), match="no table schema")
    raises_exactly(sftmask.OptionTypeError, run({"text": ["x"]}))
    raises_exactly(sftmask.OptionTypeError, run(42))

    class Liar:
        def __arrow_c_stream__(self, requested_schema=None):
            return "not a capsule"

    class WrongCapsule:
        def __arrow_c_array__(self, requested_schema=None):
            schema, array = pa.array(["x"]).__arrow_c_array__()
            return array, schema  # swapped: the names do not match

    raises_exactly(sftmask.OptionTypeError, run(Liar()), match="did not return a PyCapsule")
    raises_exactly(sftmask.OptionTypeError, run(WrongCapsule()), match="not named")
    # A stream whose producer fails midway: the producer's error, no crash.

    def batches():
        yield table_of(texts).to_batches()[0]
        raise RuntimeError("disk on fire")

    reader = pa.RecordBatchReader.from_batches(table_of(texts).schema, batches())
    raises_exactly(sftmask.OptionError, run(reader), match="disk on fire")
    # Bytes that are not UTF-8 in a string column (pyarrow's from_buffers does not check them).
    offsets = pa.py_buffer(pa.array([0, 1, 3], pa.int32()).buffers()[1])
    bad = pa.Array.from_buffers(pa.string(), 2, [None, offsets, pa.py_buffer(b"x\xff\xfe")])
    e = raises_exactly(sftmask.RowError, run(pa.table({"text": bad})), match="^row 1: .*not valid UTF-8")
    assert e.row == 1
    # Rows without a template under on_missing="error": the first such row of the table.
    mixed = table_of([*texts[:4], "no template here", *texts[4:]], chunk=3)
    e = raises_exactly(sftmask.RowError, run(mixed, on_missing="error"), match="^row 4: response template")
    assert e.row == 4


def _preprocess(batch, tokenizer):
    # Module level, so `datasets` can pickle it into its worker processes. The list API would
    # give the same rows for a dict batch, so check that the Arrow path is the one taken.
    assert isinstance(batch, pa.Table), type(batch)
    return sftmask.tokenize_and_mask(batch, tokenizer, CHATML.response, list(CHATML.instructions), on_missing="ignore")


def test_datasets_map_num_proc_2(tmp_path):
    datasets = pytest.importorskip("datasets")
    tok = load_tokenizer("qwen2")
    texts = conversation_texts(CHATML, 2000, seed=11)
    source = [f"src-{i % 3}" for i in range(len(texts))]
    path = tmp_path / "data.parquet"
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts, "source": source}), path)
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    seen_types = []

    def probe(batch):
        seen_types.append(type(batch))
        return batch

    ds.with_format("arrow").map(probe, batched=True, batch_size=10)
    assert seen_types and all(t is pa.Table for t in seen_types)
    out = ds.with_format("arrow").map(
        _preprocess, batched=True, batch_size=300, num_proc=2, fn_kwargs={"tokenizer": tok}, remove_columns=["text"]
    )
    assert out.column_names == ["id", "source", "input_ids", "labels", "length"]
    listed = sftmask.tokenize_and_mask(texts, tok, CHATML.response, list(CHATML.instructions), on_missing="ignore")
    got = out.with_format("arrow")[:]
    assert got.column("id").to_pylist() == list(range(len(texts)))
    assert got.column("source").to_pylist() == source
    assert got.column("input_ids").to_pylist() == listed["input_ids"]
    assert got.column("labels").to_pylist() == listed["labels"]
    assert got.column("length").to_pylist() == [len(r) for r in listed["input_ids"]]


@pytest.mark.parametrize("engine", ["tokenizers", "fast"])
def test_the_gil_is_released_while_tokenizing(engine):
    """Another Python thread keeps running during the call: no long gap in its ticks. (The rows
    are doubled until one call lasts long enough to tell, whatever the engine's speed.)"""
    import threading
    import time

    tok = load_tokenizer("qwen2")
    texts = conversation_texts(CHATML, 400, seed=1)
    sftmask.tokenize_and_mask(texts[:10], tok, CHATML.response, num_threads=1, engine=engine)  # caches the Encoder
    copies = 1
    while True:
        table = table_of(texts * copies, chunk=500)

        def run(table: object = table) -> object:
            return sftmask.tokenize_and_mask(
                table, tok, CHATML.response, on_missing="ignore", num_threads=1, engine=engine
            )

        start = time.perf_counter()
        run()
        if time.perf_counter() - start > 0.2 or copies >= 1024:
            break
        copies *= 2
    worker = threading.Thread(target=run)
    ticks = [time.perf_counter()]
    worker.start()
    while worker.is_alive():
        ticks.append(time.perf_counter())
    worker.join()
    total = ticks[-1] - ticks[0]
    gap = max(b - a for a, b in zip(ticks, ticks[1:]))
    assert total > 0.05, "the call was too quick to tell"
    assert gap < 0.5 * total, f"the main thread stalled {gap:.3f}s of a {total:.3f}s call"
