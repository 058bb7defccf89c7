"""Conversations -> ``input_ids`` + ``labels`` with the tokenizer's chat template (SPEC "Chat-template
masking"): the Python half of ``tokenize_and_mask`` on messages.

Rendering, tokenizing and labelling run in Rust (``_core.tokenize_conversations``); this module finds
the template, turns rows into JSON for the Rust side, and renders with transformers the rows the Rust
renderer cannot (one warning), locating their regions by the same rule (the Rust locator, with
transformers rendering the prefixes it asks for).
"""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from sftmask import _arrow
from sftmask._core import ChatTemplate, MissingTemplateWarning, OptionError, OptionTypeError
from sftmask._core import locate_regions as _locate_regions
from sftmask._core import tokenize_conversations as _tokenize_conversations
from sftmask._core import tokenize_conversations_arrow as _tokenize_conversations_arrow
from sftmask._errors import row_error

_SPECIAL = ("bos_token", "eos_token", "unk_token", "pad_token")
_templates: dict[tuple[Any, ...], ChatTemplate] = {}
_lock = threading.Lock()
_CACHE_SIZE = 8


def is_batch(rows: Any) -> bool:
    """A ``datasets`` batch (``map(batched=True)``): a mapping with a ``messages`` column."""
    return isinstance(rows, Mapping) and "messages" in rows


def template_source(tokenizer: Any, chat_template: str | None) -> tuple[str, str]:
    """The chat template's text and a name for it in messages."""
    if chat_template is not None:
        if not isinstance(chat_template, str) or not chat_template:
            raise OptionTypeError(f"chat_template must be a non-empty str, got {type(chat_template).__name__}")
        return chat_template, "the chat_template given"
    source = getattr(tokenizer, "chat_template", None)
    if isinstance(source, Mapping):  # named templates: transformers uses "default"
        source = source.get("default")
    if not isinstance(source, str) or not source:
        raise OptionTypeError(
            "conversations are rendered with a chat template, and this tokenizer has none "
            "(tokenizer.chat_template): pass chat_template=..., or pass response_template=... for "
            "texts you rendered yourself"
        )
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    return source, f"the chat template of {name!r}"


def _special(tokenizer: Any) -> dict[str, str]:
    out = {}
    for key in _SPECIAL:
        value = getattr(tokenizer, key, None)
        if isinstance(value, str):
            out[key] = value
    return out


def compiled(source: str, special: dict[str, str]) -> ChatTemplate:
    """The Rust template for ``source`` with these special tokens, cached per process."""
    key = (source, *(special.get(k) for k in _SPECIAL))
    with _lock:
        hit = _templates.get(key)
    if hit is not None:
        return hit
    template = ChatTemplate(source, **special)
    with _lock:
        if len(_templates) >= _CACHE_SIZE:
            _templates.pop(next(iter(_templates)))
        _templates[key] = template
    return template


def _row(r: int, messages: Any, tools: Any) -> tuple[list[Any], Any]:
    """A conversation as the core reads it: ``(messages, tools)``, read straight into template
    values (plain data), or through ``json.dumps`` where it is not (which names what is not)."""
    # `type(...) is` first: the ABC checks cost more than reading the values on short messages.
    if type(messages) is not list and (isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence)):
        raise row_error(
            r, f"a conversation must be a list of message dicts, got {type(messages).__name__}", type_error=True
        )
    for i, m in enumerate(messages):
        if type(m) is not dict and not isinstance(m, Mapping):
            raise row_error(r, f"message {i} must be a dict, got {type(m).__name__}", type_error=True)
    return (messages if type(messages) is list else list(messages)), tools


def _render(source: str, messages: list[Any], tools: Any, agp: bool, kwargs: dict[str, Any]) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        conversations=[messages], tools=tools, chat_template=source, add_generation_prompt=agp, **kwargs
    )
    return str(rendered[0])


def _locate(
    r: int, source: str, messages: list[Any], tools: Any, kwargs: dict[str, Any], markers: list[str]
) -> tuple[str, list[tuple[int, tuple[int, int] | None, str | None, str | None]]]:
    """The full rendering by transformers and every assistant message's byte range, located by
    the Rust rule (``_core.locate_regions``) with transformers rendering what it asks for."""
    import jinja2

    try:
        full = _render(source, messages, tools, False, kwargs)
    except jinja2.TemplateError as e:
        if type(e) is jinja2.TemplateError:  # raise_exception raises the base class itself
            raise row_error(r, f"the chat template raised: {e}") from None
        raise row_error(r, f"transformers cannot render this conversation: {type(e).__name__}: {e}") from None
    except Exception as e:
        raise row_error(r, f"transformers cannot render this conversation: {type(e).__name__}: {e}") from None

    def render(messages_json: str, agp: bool) -> str:
        return _render(source, json.loads(messages_json), tools, agp, kwargs)

    located = _locate_regions(full, json.dumps(list(messages), ensure_ascii=False), markers, render)
    return full, located


def _markers(tokenizer: Any) -> list[str]:
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    try:
        return [t.content for t in backend.get_added_tokens_decoder().values()]
    except AttributeError:
        return []


def tokenize_conversations(
    rows: Any,
    tokenizer: Any,
    encoder: Any,
    *,
    chat_template: str | None,
    tools: Any,
    train_on: str,
    reasoning: str,
    ignore_index: int,
    max_length: int | None,
    on_missing: str,
    num_threads: int | None,
    template_kwargs: dict[str, Any],
    messages_column: str = "messages",
) -> tuple[Any, Any]:
    """See ``sftmask.tokenize_and_mask`` (conversations, no response_template)."""
    if reasoning not in ("train", "mask"):
        raise OptionError(f"reasoning must be 'train' or 'mask', got {reasoning!r}")
    if "add_generation_prompt" in template_kwargs:
        raise OptionError("add_generation_prompt is never used when training: the conversation is rendered whole")
    if on_missing not in ("warn", "error", "ignore"):
        raise OptionError(f"on_missing must be 'warn', 'error' or 'ignore', got {on_missing!r}")
    if _arrow.is_arrow(rows):
        return _tokenize_arrow(
            rows,
            tokenizer,
            encoder,
            chat_template=chat_template,
            tools=tools,
            messages_column=messages_column,
            train_on=train_on,
            reasoning=reasoning,
            ignore_index=ignore_index,
            max_length=max_length,
            on_missing=on_missing,
            num_threads=num_threads,
            template_kwargs=template_kwargs,
        )
    if is_batch(rows):
        conversations = list(rows["messages"])
        row_tools = list(rows["tools"]) if tools is None and "tools" in rows else [tools] * len(conversations)
    elif isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Sequence):
        raise OptionTypeError(
            "conversations must be a list of conversations (lists of {'role', 'content'} dicts) or a "
            f"datasets batch with a 'messages' column, got {type(rows).__name__}"
        )
    else:
        conversations = list(rows)
        row_tools = [tools] * len(conversations)
    source, name = template_source(tokenizer, chat_template)
    special = _special(tokenizer)
    try:
        kwargs_json = json.dumps(template_kwargs, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise OptionTypeError(f"template kwargs must be plain data (JSON-serializable): {e}") from None
    texts = [_row(r, m, t) for r, (m, t) in enumerate(zip(conversations, row_tools))]
    template = compiled(source, special)
    options = {
        "kwargs_json": kwargs_json,
        "train_on": train_on,
        "ignore_index": ignore_index,
        "max_length": max_length,
        "on_missing": on_missing,
        "reasoning": reasoning,
        "num_threads": num_threads,
    }
    input_ids, labels, stats, fallback, not_located = _tokenize_conversations(template, encoder, texts, **options)
    if fallback:
        warnings.warn(
            f"the Rust renderer cannot render {name} ({fallback[0][1]}); {len(fallback)} of {len(texts)} "
            "conversations are rendered with transformers instead (slower, same text)",
            UserWarning,
            stacklevel=3,
        )
        markers = _markers(tokenizer)
        render_kwargs = {**special, **template_kwargs}
        rendered = {
            r: _locate(r, source, list(conversations[r]), row_tools[r], render_kwargs, markers) for r, _ in fallback
        }
        input_ids, labels, stats, _, not_located = _tokenize_conversations(
            template, encoder, texts, rendered=rendered, **options
        )
    if on_missing == "warn":
        _warn_not_located(not_located, len(texts), name, ignore_index)
    return {"input_ids": input_ids, "labels": labels}, stats


def _warn_not_located(not_located: list[tuple[int, str]], rows: int, name: str, ignore_index: int) -> None:
    if not_located:
        r, reason = not_located[0]
        warnings.warn(
            f"{len(not_located)} of {rows} conversations have a trained turn that cannot be located exactly "
            f"in the rendering of {name} (row {r}: {reason}); all their labels are {ignore_index}",
            MissingTemplateWarning,
            stacklevel=4,
        )


def _tokenize_arrow(
    data: Any,
    tokenizer: Any,
    encoder: Any,
    *,
    chat_template: str | None,
    tools: Any,
    messages_column: str,
    template_kwargs: dict[str, Any],
    **options: Any,
) -> tuple[Any, Any]:
    """Arrow conversations: rendered, tokenized and labelled in Rust straight from the Arrow
    arrays; a table whose template the Rust renderer cannot render goes through the list path
    (transformers renders it) and is turned back into a table."""
    import pyarrow as pa

    if not isinstance(messages_column, str):
        raise OptionTypeError(f"messages_column must be a str, got {type(messages_column).__name__}")
    source, name = template_source(tokenizer, chat_template)
    special = _special(tokenizer)
    try:
        kwargs_json = json.dumps(template_kwargs, ensure_ascii=False, allow_nan=False)
        tools_json = None if tools is None else json.dumps(tools, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise OptionTypeError(f"tools and template kwargs must be plain data (JSON-serializable): {e}") from None
    # The schema decides whether there is a tools column (a stream is read once, in Rust).
    table = data if isinstance(data, (pa.Table, pa.RecordBatch)) else pa.table(data)
    tools_column = "tools" if tools is None and "tools" in table.schema.names else None
    capsule, stats, _, not_located = _tokenize_conversations_arrow(
        table,
        compiled(source, special),
        encoder,
        column=messages_column,
        tools_column=tools_column,
        tools_json=tools_json,
        kwargs_json=kwargs_json,
        **options,
    )
    if capsule is not None:
        if options["on_missing"] == "warn":
            _warn_not_located(not_located, table.num_rows, name, options["ignore_index"])
        return _arrow.table(capsule), stats
    # The fallback: the list path renders with transformers (and warns); same rows, same columns.
    rows = {"messages": table.column(messages_column).to_pylist()}
    if tools_column:
        rows["tools"] = table.column(tools_column).to_pylist()
    out, stats = tokenize_conversations(
        rows, tokenizer, encoder, chat_template=chat_template, tools=tools, template_kwargs=template_kwargs, **options
    )
    lists = pa.list_(pa.int32())
    result = table.drop_columns([messages_column])
    if isinstance(result, pa.RecordBatch):
        result = pa.Table.from_batches([result])
    result = result.append_column("input_ids", pa.array(out["input_ids"], type=lists))
    result = result.append_column("labels", pa.array(out["labels"], type=lists))
    result = result.append_column("length", pa.array([len(i) for i in out["input_ids"]], type=pa.int32()))
    return result, stats
