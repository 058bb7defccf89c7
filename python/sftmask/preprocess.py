"""Preprocessing: tokenize and mask a dataset once, instead of masking every batch.

>>> import datasets
>>> from sftmask import tokenize_and_mask
>>> ds = datasets.Dataset.from_dict({"messages": [chat, chat]})
>>> ds = ds.map(tokenize_and_mask, batched=True, input_columns="messages", remove_columns=ds.column_names,
...             fn_kwargs={"tokenizer": tokenizer, "response_template": "<|im_start|>assistant\\n"})
>>> ds.column_names
['input_ids', 'labels']
"""

from __future__ import annotations

import os
import threading
import warnings
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from sftmask import _arrow, _chat, _tokenizer
from sftmask._core import Encoder, Masker, MissingTemplateWarning, OptionError, OptionTypeError
from sftmask._core import tokenize_and_mask as _tokenize_and_mask
from sftmask._core import tokenize_and_mask_arrow as _tokenize_and_mask_arrow
from sftmask._errors import row_error

# Parsing a tokenizer.json costs ~0.1 s: remember the Encoder per tokenizer object (weakly where
# the object allows it, by identity otherwise) and per path, so a `datasets.map` worker pays it
# once. The vocabulary size is part of the key: adding a token (a pad) invalidates the entry.
_encoders: weakref.WeakKeyDictionary[Any, tuple[Any, Encoder]] = weakref.WeakKeyDictionary()
_encoders_strong: list[tuple[Any, Any, Encoder]] = []
_maskers: dict[tuple[Any, ...], Masker] = {}
_lock = threading.Lock()
_CACHE_SIZE = 8


def _tokenizer_json(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if hasattr(backend, "to_str"):
        return backend.to_str()
    info = _tokenizer.resolve(tokenizer)
    if info.json is None:  # pragma: no cover - resolve() reads the file for a path
        raise OptionTypeError(f"cannot read the tokenizer.json of {type(tokenizer).__name__}")
    return info.json


def _encoder(tokenizer: Any, engine: str = "auto") -> Encoder:
    """The Rust tokenizer for ``tokenizer`` with ``engine`` (docs/fast-tokenization.md), cached."""
    if engine not in ("auto", "tokenizers", "fast"):
        raise OptionError(f"engine must be 'auto', 'tokenizers' or 'fast', got {engine!r}")
    if isinstance(tokenizer, (str, os.PathLike)):
        owner: Any = os.path.abspath(os.fspath(tokenizer))
        size: Any = os.path.getmtime(owner) if os.path.exists(owner) else None
    else:
        owner = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
        # Adding tokens (a pad) is what changes a built tokenizer; both counts are cheap, unlike
        # get_vocab_size(with_added_tokens=True), which builds the whole vocabulary dict.
        size = (backend.get_vocab_size(with_added_tokens=False), len(backend.get_added_tokens_decoder()))
    size = (size, engine)
    with _lock:
        try:
            hit = _encoders.get(owner)
        except TypeError:  # not weakly referenceable: a path, a tokenizers.Tokenizer
            hit = next(((s, e) for o, s, e in _encoders_strong if o is owner or o == owner), None)
    if hit is not None and hit[0] == size:
        return hit[1]
    encoder = _tokenizer.encoder_from_file(tokenizer, engine) or Encoder.from_json(
        _tokenizer_json(tokenizer), engine=engine
    )
    with _lock:
        try:
            _encoders[owner] = (size, encoder)
        except TypeError:
            kept = [e for e in _encoders_strong if not (e[0] is owner or e[0] == owner)]
            _encoders_strong[:] = [*kept[-(_CACHE_SIZE - 1) :], (owner, size, encoder)]
    return encoder


def _template_key(template: Any) -> Any:
    if isinstance(template, str):
        return template
    try:
        return tuple(int(i) for i in template)
    except (TypeError, ValueError):
        raise OptionTypeError(
            f"a template must be a str or a sequence of token ids, got {type(template).__name__}"
        ) from None


def _masker(
    vocab: Any, response: Any, instructions: list[Any], ignore_index: int, train_on: str, on_missing: str, threads: Any
) -> Masker:
    key = (
        vocab.fingerprint,
        len(vocab),
        _template_key(response),
        tuple(_template_key(t) for t in instructions),
        ignore_index,
        train_on,
        on_missing,
        threads,
    )
    with _lock:
        hit = _maskers.get(key)
    if hit is not None:
        return hit
    masker = Masker(
        vocab,
        response,
        instructions,
        ignore_index=ignore_index,
        train_on=train_on,
        on_missing=on_missing,
        num_threads=threads,
    )
    with _lock:
        if len(_maskers) >= _CACHE_SIZE:
            _maskers.pop(next(iter(_maskers)))
        _maskers[key] = masker
    return masker


def _is_conversation(item: Any) -> bool:
    return (
        isinstance(item, Sequence) and not isinstance(item, (str, bytes)) and all(isinstance(m, Mapping) for m in item)
    )


def _texts(rows: Any, tokenizer: Any) -> tuple[list[str], bool]:
    """The rows as texts, and whether they were rendered from messages."""
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
        raise OptionTypeError(
            "texts_or_messages must be a list of strings or a list of conversations (lists of "
            f"{{'role', 'content'}} dicts), got {type(rows).__name__}; wrap a single one in a list"
        )
    rows = list(rows)
    if all(isinstance(r, str) for r in rows):
        for i, r in enumerate(rows):
            try:
                r.encode("utf-8")
            except UnicodeEncodeError as e:  # a lone surrogate: no tokenizer can read it
                raise row_error(i, f"the text is not valid Unicode ({e.reason} at {e.start})") from None
        return rows, False
    if all(_is_conversation(r) for r in rows):
        if not hasattr(tokenizer, "apply_chat_template") or not getattr(tokenizer, "chat_template", None):
            raise OptionTypeError(
                "messages are rendered with the tokenizer's chat template: pass a transformers tokenizer "
                "that has one (tokenizer.chat_template), or pass the rendered texts"
            )
        return list(tokenizer.apply_chat_template(rows, tokenize=False)), True
    bad = next(i for i, r in enumerate(rows) if not isinstance(r, str) and not _is_conversation(r))
    raise row_error(
        bad,
        "expected a string or a conversation (a list of {'role', 'content'} dicts), "
        f"got {type(rows[bad]).__name__}; all rows must be of one kind",
        type_error=True,
    )


def tokenize_and_mask(
    texts_or_messages: Sequence[str] | Sequence[Sequence[Mapping[str, Any]]] | Any,
    tokenizer: Any,
    response_template: str | Sequence[int] | None = None,
    instruction_template: Any = None,
    *,
    chat_template: str | None = None,
    tools: Any = None,
    max_length: int | None = None,
    add_special_tokens: bool | None = None,
    train_on: str = "all",
    reasoning: str = "train",
    ignore_index: int = -100,
    on_missing: str = "warn",
    num_threads: int | None = None,
    return_stats: bool = False,
    text_column: str = "text",
    messages_column: str = "messages",
    engine: str = "auto",
    **template_kwargs: Any,
) -> Any:
    """Tokenizes rows and computes their labels in one pass (Rust, in parallel, without the GIL).

    **Conversations, no templates to write** (``response_template`` not given): each
    conversation (a list of ``{"role", "content", …}`` dicts, or a ``datasets`` batch with a
    ``messages`` column) is rendered with the tokenizer's chat template (or ``chat_template=``)
    exactly as ``apply_chat_template(tokenize=False)`` renders it, tokenized without added special
    tokens, and each assistant message is trained from the end of its generation prompt through its
    end-of-turn marker (docs/masking.md#conversations). A message's ``"train": False`` leaves it out.

    >>> chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    >>> out = tokenize_and_mask([chat], tokenizer)
    >>> tokenizer.decode([t for t in out["labels"][0] if t != -100])
    'Hello<|im_end|>'

    **Texts** (``response_template`` given): the labels follow the collator's rule
    (``DataCollatorForCompletionOnlyLM``).

    >>> out = tokenize_and_mask(["<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello<|im_end|>\\n"],
    ...                         tokenizer, "<|im_start|>assistant\\n")
    >>> out.keys()
    dict_keys(['input_ids', 'labels'])

    Train either with ``DataCollatorForCompletionOnlyLM(tokenizer=tokenizer, labels="keep")``,
    which only pads. Made for ``datasets.map(batched=True, num_proc=N)``: the function pickles by
    name and its thread pool survives ``fork``.

    Arrow in, Arrow out: given a ``pyarrow.Table`` or ``RecordBatch`` (or any object with
    ``__arrow_c_stream__``/``__arrow_c_array__``) with a ``text`` column (texts) or a ``messages``
    column (conversations), it returns a ``pyarrow.Table``: the other columns unchanged, then
    ``input_ids`` and ``labels``
    (``list<int32>``) and ``length`` (``int32``), rows as the list API makes them. Built in
    Rust straight into Arrow buffers, for ``datasets`` (``ds.with_format("arrow")``), Ray Data
    (``batch_format="pyarrow"``) and Spark's ``mapInArrow``.

    The ids are the ``tokenizers`` library's whichever ``engine`` makes them:

    >>> texts = ["<|im_start|>assistant\\nHi there, 123 😀<|im_end|>"]
    >>> fast = tokenize_and_mask(texts, tokenizer, "<|im_start|>assistant\\n", engine="fast")
    >>> fast == tokenize_and_mask(texts, tokenizer, "<|im_start|>assistant\\n", engine="tokenizers")
    True

    >>> import pyarrow as pa
    >>> tokenize_and_mask(pa.table({"id": [7], "text": ["<|im_start|>assistant\\nHi<|im_end|>"]}),
    ...                   tokenizer, "<|im_start|>assistant\\n").column_names
    ['id', 'input_ids', 'labels', 'length']
    >>> table = tokenize_and_mask(pa.table({"id": [7], "messages": [chat]}), tokenizer)
    >>> table.column("labels").to_pylist() == tokenize_and_mask([chat], tokenizer)["labels"]
    True

    Args:
        texts_or_messages: a list of texts, a list of conversations, a ``datasets`` batch
            (a mapping with a ``messages`` column, and optionally a ``tools`` column); or Arrow
            data with a ``text_column`` of strings (``string``, ``large_string`` or
            ``string_view``; a null text is a :class:`RowError`).
        tokenizer: a transformers fast tokenizer, a ``tokenizers.Tokenizer``, or a path to
            ``tokenizer.json`` or its folder (conversations: one with a chat template, or pass
            ``chat_template=``).
        response_template, instruction_template: for texts, as for the collator (text or token
            ids; a list of instruction templates is allowed). Not given: conversations are
            rendered with their chat template.
        chat_template: the Jinja chat template to render conversations with (default: the
            tokenizer's).
        tools: the tool definitions passed to the chat template (every row).
        reasoning: ``"train"`` (reasoning is trained with its answer) or ``"mask"``: a message with
            ``reasoning_content``/``thinking`` is trained from where its content starts, located
            exactly (a template that transforms the content, or the transformers fallback: a
            ``RowError`` "not supported yet").
        **template_kwargs: passed to the chat template (``enable_thinking=False``, ...).
        max_length: keep the first ``max_length`` tokens of each row (before masking).
        add_special_tokens: let the tokenizer add BOS etc.; default ``True`` for texts (as
            ``tokenizer(text)``) and ``False`` for messages (the chat template writes them).
        train_on: ``"all"`` assistant turns, or only the ``"last"`` (a message's own ``"train"``
            overrides both for conversations).
        ignore_index: the label of masked tokens.
        on_missing: a row without a response template (conversations: a trained turn that cannot
            be located exactly in the rendering; its labels are all ``ignore_index``):
            ``"warn"`` (one warning per call), ``"error"`` or ``"ignore"``.
        num_threads: threads to use (default: ``RAYON_NUM_THREADS`` or all CPUs).
        return_stats: also return the call's :class:`sftmask.Stats` (rows without a template,
            truncated rows, trained tokens, …).
        text_column: Arrow input only: the column of texts (dropped from the output; the table
            must not already have ``input_ids``, ``labels`` or ``length`` columns).
        messages_column: Arrow conversations only: the column of conversations
            (``list<struct<role, content, …>>``; dropped from the output). A ``tools`` column,
            if there is one and ``tools=`` is not given, gives each row its tools (and stays).
        engine: how texts become ids (docs/fast-tokenization.md): ``"auto"`` (default) uses
            sftmask's fast byte-level BPE path where it reproduces the ``tokenizers`` library
            exactly for this tokenizer (Llama-3, Qwen2/2.5/3, GPT-2, Tekken; the same ids and token
            spans), and ``tokenizers`` otherwise; ``"tokenizers"`` always the library;
            ``"fast"`` the fast path, or an :class:`OptionError` naming what it does not cover.

    Returns:
        ``{"input_ids": [[…], …], "labels": [[…], …]}``, one entry per row (a ``pyarrow.Table``
        for Arrow input); with ``return_stats=True``, ``(that, stats)``.
    """
    from sftmask.collator import _check_int, _instruction_list

    _check_int("max_length", max_length, 1, 2**63 - 1)
    _check_int("num_threads", num_threads, 1, 4096)
    if response_template is None:
        if instruction_template is not None:
            raise OptionError("instruction_template needs a response_template (texts); conversations need neither")
        if add_special_tokens:
            raise OptionError("add_special_tokens=True does not apply to conversations: the chat template writes them")
        _check_int("ignore_index", ignore_index, -(2**63), 2**63 - 1)
        out, stats = _chat.tokenize_conversations(
            texts_or_messages,
            tokenizer,
            _encoder(tokenizer, engine),
            chat_template=chat_template,
            tools=tools,
            train_on=train_on,
            reasoning=reasoning,
            ignore_index=ignore_index,
            max_length=max_length,
            on_missing=on_missing,
            num_threads=num_threads,
            template_kwargs=template_kwargs,
            messages_column=messages_column,
        )
        return (out, stats) if return_stats else out
    if chat_template is not None or tools is not None or template_kwargs or reasoning != "train":
        raise OptionError(
            "chat_template, tools, reasoning and template kwargs apply to conversations rendered by sftmask "
            "(no response_template); with a response_template, render the texts yourself"
        )
    if _chat.is_batch(texts_or_messages):
        texts_or_messages = list(texts_or_messages["messages"])
    if isinstance(response_template, str) and not response_template:
        raise OptionError("response_template is empty")
    arrow = _arrow.is_arrow(texts_or_messages)
    if arrow:
        if not isinstance(text_column, str):
            raise OptionTypeError(f"text_column must be a str, got {type(text_column).__name__}")
        texts, from_messages = [], False
    else:
        texts, from_messages = _texts(texts_or_messages, tokenizer)
    info = _tokenizer.resolve(tokenizer)
    masker = _masker(
        info.vocab,
        response_template,
        _instruction_list(instruction_template),
        ignore_index,
        train_on,
        on_missing,
        num_threads,
    )
    if add_special_tokens is None:
        add_special_tokens = not from_messages
    out: Any
    if arrow:
        capsule, stats = _tokenize_and_mask_arrow(
            texts_or_messages,
            _encoder(tokenizer, engine),
            masker,
            column=text_column,
            add_special_tokens=add_special_tokens,
            max_length=max_length,
        )
        out = _arrow.table(capsule)
    else:
        input_ids, labels, stats = _tokenize_and_mask(
            texts, _encoder(tokenizer, engine), masker, add_special_tokens=add_special_tokens, max_length=max_length
        )
        out = {"input_ids": input_ids, "labels": labels}
    missing = stats.missing_rows
    if missing and on_missing == "warn":
        shown = ", ".join(map(str, missing[:8])) + (", …" if len(missing) > 8 else "")
        warnings.warn(
            f"{len(missing)} of {stats.rows} rows have no response template {response_template!r} (rows {shown}); "
            f"all their labels are {ignore_index}. Check the template or increase max_length.",
            MissingTemplateWarning,
            stacklevel=2,
        )
    return (out, stats) if return_stats else out
