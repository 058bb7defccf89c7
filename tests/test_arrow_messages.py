"""Arrow conversations: a ``messages`` column in, ``input_ids``/``labels``/``length`` out.

The truth is the list API on the same rows as Python reads them from the table
(``to_pylist()``: every message carries every key of the column's struct type, ``None`` where a row
has no value — what a ``datasets`` row gives ``apply_chat_template`` too). The list API itself is
checked against the SPEC's rule, computed with transformers, in test_messages.py; here every
template of the corpus must give the same rows both ways.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest

pa = pytest.importorskip("pyarrow")

import sftmask  # noqa: E402
from test_messages import _TEMPLATES, GOOD, QWEN, TWO_TURNS, conversations, plain_conversations, tokenizer_for  # noqa: E402

CONVERSATIONS = conversations(seed=11, count=16)


def _tables(convs: list[dict[str, Any]]) -> list[Any]:
    """The conversations as tables with ``id``, ``messages`` and ``tools`` columns: one table when
    Arrow can type them all together, else one per conversation (skipping any Arrow cannot type,
    e.g. a content that is a string in one message and a list in another)."""

    def table(cs: list[dict[str, Any]]) -> Any:
        return pa.table(
            {
                "id": [c["id"] for c in cs],
                "messages": [c["messages"] for c in cs],
                "tools": [c["tools"] for c in cs],
            }
        )

    convs = [{**c, "id": i} for i, c in enumerate(convs)]
    try:
        return [table(convs)]
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        out = []
        for c in convs:
            try:
                out.append(table([c]))
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                continue
        return out


def _list_api(tok: Any, table: Any, **kw: Any) -> tuple[dict[str, Any], Any]:
    batch = {"messages": table.column("messages").to_pylist(), "tools": table.column("tools").to_pylist()}
    return sftmask.tokenize_and_mask(batch, tok, return_stats=True, **kw)


@pytest.mark.parametrize("name", sorted(_TEMPLATES))
def test_rows_equal_the_list_api_on_corpus(name: str) -> None:
    tok = tokenizer_for(name)
    rows = 0
    for table in _tables(CONVERSATIONS):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fallback and not-located warnings: the same both ways
            try:
                want, want_stats = _list_api(tok, table, num_threads=2)
            except sftmask.RowError as e:
                with pytest.raises(sftmask.RowError) as got:
                    sftmask.tokenize_and_mask(table, tok, num_threads=2)
                assert got.value.row == e.row
                rows += 1
                continue
            out, stats = sftmask.tokenize_and_mask(table, tok, return_stats=True, num_threads=2)
        assert out.column_names == ["id", "tools", "input_ids", "labels", "length"]
        assert out.column("id").to_pylist() == table.column("id").to_pylist()
        assert out.column("input_ids").to_pylist() == want["input_ids"], name
        assert out.column("labels").to_pylist() == want["labels"], name
        assert out.column("length").to_pylist() == [len(i) for i in want["input_ids"]]
        assert stats.as_dict() == want_stats.as_dict()
        rows += table.num_rows
    assert rows > 0  # a table was compared, or raised at the same row both ways


def test_types_batches_and_options() -> None:
    tok = tokenizer_for(QWEN)
    convs = plain_conversations(seed=12, count=30)
    table = pa.table({"id": list(range(len(convs))), "messages": convs})
    want = sftmask.tokenize_and_mask(table.column("messages").to_pylist(), tok, train_on="last", max_length=64)
    fields = table.schema.field("messages").type.value_type
    message = pa.struct([(f.name, pa.large_string()) for f in fields])
    large = table.cast(pa.schema([("id", pa.int64()), ("messages", pa.large_list(message))]))
    chunked = pa.Table.from_batches(table.to_batches(max_chunksize=7))
    for data in (table, large, chunked, table.to_batches()[0]):
        out = sftmask.tokenize_and_mask(data, tok, train_on="last", max_length=64)
        assert out.column("input_ids").to_pylist() == want["input_ids"]
        assert out.column("labels").to_pylist() == want["labels"]
    # Tools given for every row, and a tools column per row, reach the template.
    tools = [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}]
    given = sftmask.tokenize_and_mask(table, tok, tools=tools)
    assert given.column("input_ids").to_pylist() == sftmask.tokenize_and_mask(convs, tok, tools=tools)["input_ids"]
    with_column = table.append_column("tools", pa.array([tools] * len(convs)))
    per_row = sftmask.tokenize_and_mask(with_column, tok)
    assert per_row.column("input_ids").to_pylist() == given.column("input_ids").to_pylist()


def test_messages_column_option_and_datasets_arrow_format() -> None:
    datasets = pytest.importorskip("datasets")
    tok = tokenizer_for(QWEN)
    convs = plain_conversations(seed=13, count=24)
    want = sftmask.tokenize_and_mask(convs, tok)
    renamed = pa.table({"chat": convs})
    out = sftmask.tokenize_and_mask(renamed, tok, messages_column="chat")
    assert out.column("labels").to_pylist() == want["labels"]
    ds = datasets.Dataset.from_dict({"messages": convs}).with_format("arrow")
    mapped = ds.map(sftmask.tokenize_and_mask, batched=True, batch_size=5, num_proc=2, fn_kwargs={"tokenizer": tok})
    assert mapped.column_names == ["input_ids", "labels", "length"]
    assert mapped.with_format(None)["labels"] == want["labels"]


def test_unsupported_template_falls_back_to_the_same_table() -> None:
    name = "llama_cpp/meetkai-functionary-medium-v3.1"
    if name not in _TEMPLATES:
        pytest.skip("the corpus has no template the Rust renderer cannot render")
    tok = tokenizer_for(name)
    table = pa.table({"id": [1, 2], "messages": [TWO_TURNS, TWO_TURNS]})
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = sftmask.tokenize_and_mask(table, tok)
    assert any("Rust renderer cannot render" in str(w.message) for w in seen)
    want = sftmask.tokenize_and_mask(table.column("messages").to_pylist(), tok)
    assert out.column_names == ["id", "input_ids", "labels", "length"]
    assert out.column("labels").to_pylist() == want["labels"]
    assert out.schema.field("labels").type == pa.list_(pa.int32())


def test_hostile_input_names_the_row() -> None:
    tok = tokenizer_for(QWEN)
    good = [GOOD, GOOD]
    # A null conversation in the second batch is row 3 of the input.
    batches = [pa.record_batch({"messages": good}), pa.record_batch({"messages": [GOOD, None]})]
    with pytest.raises(sftmask.RowError, match="null") as e:
        sftmask.tokenize_and_mask(pa.Table.from_batches(batches), tok)
    assert e.value.row == 3
    with pytest.raises(sftmask.RowError, match="message 1 is null") as e:
        sftmask.tokenize_and_mask(pa.table({"messages": [GOOD, [GOOD[0], None]]}), tok)
    assert e.value.row == 1
    binary = pa.table({"messages": [[{"role": "user", "content": b"x"}]]})
    with pytest.raises(sftmask.RowError, match="Binary") as e:
        sftmask.tokenize_and_mask(binary, tok)
    assert e.value.row == 0
    with pytest.raises(sftmask.OptionTypeError, match="list of message structs"):
        sftmask.tokenize_and_mask(pa.table({"messages": ["not a list"]}), tok)
    with pytest.raises(sftmask.SftmaskError, match="messages"):
        sftmask.tokenize_and_mask(pa.table({"text": ["x"]}), tok)
    with pytest.raises(sftmask.OptionError, match="already has a column"):
        sftmask.tokenize_and_mask(pa.table({"messages": good, "labels": [1, 2]}), tok)
    # Messages without a role, or a content the template cannot use: a row error, other rows
    # of a non-raising call unaffected.
    no_role = pa.table({"messages": [GOOD, [{"content": "hi"}]]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = sftmask.tokenize_and_mask(no_role, tok)
        except sftmask.RowError as err:
            assert err.row == 1
        else:
            assert out.column("labels").to_pylist()[0] == sftmask.tokenize_and_mask([GOOD], tok)["labels"][0]
