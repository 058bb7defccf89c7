"""Resolve whatever the user passed as a tokenizer into what the Rust core needs.

Accepted: a transformers fast tokenizer (``PreTrainedTokenizerFast``), a ``tokenizers.Tokenizer``,
or a path to a ``tokenizer.json`` file or to a folder holding one (plus, optionally, its
``tokenizer_config.json`` for the pad token and padding side).
"""

from __future__ import annotations

import json
import os
import re
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sftmask._core import TokenizerError, Vocab


@dataclass(frozen=True)
class TokenizerInfo:
    """What the collator needs to know about a tokenizer."""

    vocab: Vocab
    pad_token_id: int | None
    padding_side: str
    eos_token_id: int | None
    json: str | None = None


# Serializing a big tokenizer back to JSON (`to_str()`) costs ~0.3 s for Llama-3, most of a
# first collator's start. Remember the table per tokenizer object, so a second collator on the
# same tokenizer is free. Weakly keyed where the object allows it (transformers tokenizers);
# `tokenizers.Tokenizer` does not, so a few of those are kept in a small identity-keyed list.
_weak_cache: weakref.WeakKeyDictionary[Any, tuple[Any, Vocab]] = weakref.WeakKeyDictionary()
_strong_cache: list[tuple[Any, Any, Vocab]] = []
_STRONG_CACHE_SIZE = 4
_cache_lock = threading.Lock()

# The model types whose every table input can be read off a loaded tokenizer but its vocabulary
# (Unigram does not expose `byte_fallback`).
_LIVE_MODELS = ("BPE", "WordPiece", "WordLevel")


def _live_parts(backend: Any) -> str:
    """A tokenizer.json text of everything the table needs but the model vocabulary, read off
    the loaded tokenizer itself (~1 ms): its model's type and options, its added tokens and its
    normalizer, pre-tokenizer, post-processor and decoder, each serialized by `tokenizers` as
    `to_str()` would. Raises for what it cannot read (custom Python components, Unigram)."""
    model = backend.model
    kind = type(model).__name__
    if kind not in _LIVE_MODELS:
        raise ValueError(f"{kind} model")
    head: dict[str, Any] = {"type": kind}
    if kind == "BPE":
        head["byte_fallback"] = bool(model.byte_fallback)
        # The rest of the options the encoder checks against the file (sftmask::load).
        head["dropout"] = model.dropout
        head["unk_token"] = model.unk_token
        head["end_of_word_suffix"] = model.end_of_word_suffix
        head["fuse_unk"] = bool(model.fuse_unk)
        head["ignore_merges"] = bool(model.ignore_merges)
    if kind in ("BPE", "WordPiece"):
        head["continuing_subword_prefix"] = model.continuing_subword_prefix
    added = [
        {
            "id": int(i),
            "content": t.content,
            "special": bool(t.special),
            "normalized": bool(t.normalized),
            "single_word": bool(t.single_word),
            "lstrip": bool(t.lstrip),
            "rstrip": bool(t.rstrip),
        }
        for i, t in sorted(backend.get_added_tokens_decoder().items())
    ]
    out = ['{"model":', json.dumps(head), ',"added_tokens":', json.dumps(added)]
    for name in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
        part = getattr(backend, name)
        out += [f',"{name}":', "null" if part is None else part.__getstate__().decode("utf-8")]
    out.append("}")
    return "".join(out)


def _source_file(tokenizer: Any) -> str | None:
    """The tokenizer.json a transformers tokenizer was most likely loaded from, if at hand: the
    folder it was loaded from, or the Hugging Face cache for a hub id (never the network). Only
    a candidate: `_vocab_from_file` checks it against the loaded tokenizer."""
    init = getattr(tokenizer, "init_kwargs", None) or {}
    if init.get("from_slow") or init.get("gguf_file"):
        return None  # converted at load: the vocabulary need not be the file's
    name = getattr(tokenizer, "name_or_path", None)
    if not isinstance(name, str) or not name:
        return None
    if os.path.isdir(name):
        file = os.path.join(name, "tokenizer.json")
        return file if os.path.isfile(file) else None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "tokenizer.json", revision=init.get("_commit_hash"))
    except Exception:  # not a repo id, no huggingface_hub, an unreadable cache
        return None
    return found if isinstance(found, str) and os.path.isfile(found) else None


def _file_matches(backend: Any, kind: str | None, n: int | None, sample: list[tuple[int, str]]) -> bool:
    """Whether a file's model (its type, size and the token at sampled ids) is the loaded one's."""
    model = backend.model
    if kind != type(model).__name__ or n is None or n != backend.get_vocab_size(with_added_tokens=False):
        return False
    return all(model.id_to_token(i) == token for i, token in sample)


def encoder_from_file(tokenizer: Any, engine: str = "auto") -> Any:
    """The Rust encoder (with ``engine``) of a transformers tokenizer built from the tokenizer.json
    it was loaded from and its live parts, when that file is at hand and provably its vocabulary
    (as for the table); ``None`` otherwise (the caller serializes the tokenizer with ``to_str()``)."""
    from sftmask._core import Encoder

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    try:
        parts = _live_parts(backend)
    except Exception:
        return None
    file = _source_file(tokenizer)
    if file is None:
        return None
    if backend.truncation is not None or backend.padding is not None:
        return None  # the probe below would see the last call's state, not the tokenizer
    try:
        encoder, kind, n, sample = Encoder.from_parts(parts, file, engine=engine)
    except (TokenizerError, OSError, ValueError):
        return None
    if not _file_matches(backend, kind, n, sample):
        return None
    # The merges are not visible from Python: a model swapped for one with the file's vocabulary
    # but other merges would pass the sample. Both must encode a probe text alike.
    probe = encoder.encode_batch([_PROBE], add_special_tokens=False)[0]
    return encoder if probe == backend.encode(_PROBE, add_special_tokens=False).ids else None


#: Words, numbers, whitespace runs, punctuation and several scripts: text whose tokens take merges
#: of every kind.
_PROBE = (
    "The quick brown fox jumps over 13 lazy dogs; it's 2026-12-01, isn't it?  Tabs\tand\nnewlines\r\n"
    "internationalization mississippi ... naïve café 東京タワー 你好世界 Привет мир مرحبا 🤗👍 <tag> x=y+1"
)


def _vocab_from_file(backend: Any, parts: str, file: str) -> Vocab | None:
    """The table from the loaded tokenizer's `parts` and the vocabulary of `file`, when the file's
    vocabulary is provably the loaded model's: same model type, no id twice in the file, as many
    tokens in the model as entries in the file (so no token twice either: the loaded model holds
    exactly the file's pairs), and the same token at ~1000 ids spread over all of them (a model's
    vocabulary cannot change after it is built, short of replacing the model).
    None when any of this fails: the caller then takes the slow, always right path."""
    try:
        vocab, kind, n, sample = Vocab.from_parts(parts, file)
    except (TokenizerError, OSError, ValueError):
        return None
    return vocab if _file_matches(backend, kind, n, sample) else None


def _cached_vocab(owner: Any, backend: Any, source: Any = None) -> Vocab:
    # What can change a tokenizer after it is built is adding tokens or swapping a component:
    # `parts` sees both, cheaply (get_vocab_size(with_added_tokens=True) costs ~0.3 s on a
    # 150k vocabulary). Without it (a custom component), the added tokens' count.
    try:
        parts: str | None = _live_parts(backend)
        key: Any = parts
    except Exception:
        parts = None
        key = len(backend.get_added_tokens_decoder())
    with _cache_lock:
        try:
            hit = _weak_cache.get(owner)
        except TypeError:
            hit = next(((k, v) for o, k, v in _strong_cache if o is owner), None)
    if hit is not None and hit[0] == key:
        return hit[1]
    file = _source_file(source) if source is not None and parts is not None else None
    vocab = _vocab_from_file(backend, parts, file) if parts is not None and file is not None else None
    if vocab is None:
        vocab = Vocab.from_json(backend.to_str())
    with _cache_lock:
        try:
            _weak_cache[owner] = (key, vocab)
        except TypeError:
            _strong_cache[:] = [e for e in _strong_cache if e[0] is not owner][-(_STRONG_CACHE_SIZE - 1) :]
            _strong_cache.append((owner, key, vocab))
    return vocab


def resolve(tokenizer: Any) -> TokenizerInfo:
    """Builds the byte table and reads pad/eos ids and padding side from ``tokenizer``.

    >>> info = resolve(tokenizer_json)
    >>> info.vocab
    Vocab(size=151669, decoding="byte_level", phantom="never")
    """
    if tokenizer is None:
        raise TypeError(
            "a tokenizer is required: pass tokenizer=… (a transformers fast tokenizer, a "
            "tokenizers.Tokenizer, or a path to tokenizer.json)"
        )
    if isinstance(tokenizer, (str, os.PathLike)):
        return _from_path(Path(tokenizer))
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # transformers PreTrainedTokenizerFast
        return TokenizerInfo(
            vocab=_cached_vocab(tokenizer, backend, tokenizer),
            pad_token_id=getattr(tokenizer, "pad_token_id", None),
            padding_side=getattr(tokenizer, "padding_side", "right") or "right",
            eos_token_id=getattr(tokenizer, "eos_token_id", None),
        )
    if hasattr(tokenizer, "to_str") and hasattr(tokenizer, "get_vocab_size"):  # tokenizers.Tokenizer
        padding = getattr(tokenizer, "padding", None) or {}
        return TokenizerInfo(
            vocab=_cached_vocab(tokenizer, tokenizer),
            pad_token_id=padding.get("pad_id"),
            padding_side=str(padding.get("direction", "right")).lower(),
            eos_token_id=None,
        )
    if hasattr(tokenizer, "convert_tokens_to_ids"):
        raise TypeError(
            f"{type(tokenizer).__name__} is a slow (pure Python) tokenizer; sftmask reads the "
            "tokenizer.json of a fast one: load it with AutoTokenizer.from_pretrained(..., use_fast=True)"
        )
    raise TypeError(
        "tokenizer must be a transformers fast tokenizer, a tokenizers.Tokenizer, or a path to "
        f"tokenizer.json, got {type(tokenizer).__name__}"
    )


def _from_path(path: Path) -> TokenizerInfo:
    folder = path if path.is_dir() else path.parent
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no tokenizer.json at {file}")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TokenizerError(f"cannot read {file}: {e}") from None
    vocab = Vocab.from_json(text)
    pad_id = eos_id = None
    side = "right"
    config = folder / "tokenizer_config.json"
    if config.is_file():
        try:
            cfg = json.loads(config.read_text(encoding="utf-8"))
            if not isinstance(cfg, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            raise TokenizerError(f"cannot read {config}: {e}") from None
        side = cfg.get("padding_side", "right") or "right"
        pad_id = _token_id(vocab, cfg.get("pad_token"))
        eos_id = _token_id(vocab, cfg.get("eos_token"))
    if pad_id is None:
        padding = _padding_of(text, file)
        pad_id = padding.get("pad_id")
        side = str(padding.get("direction", side) or side).lower()
    return TokenizerInfo(vocab=vocab, pad_token_id=pad_id, padding_side=side, eos_token_id=eos_id, json=text)


# tokenizer.json's "padding" object sits near the top of the file (before the vocabulary); read
# just that instead of parsing megabytes of JSON (~0.4 s for Llama-3).
_PADDING = re.compile(r'"padding"\s*:\s*(\{(?:[^{}]|\{[^{}]*\})*\}|[^,{}\s]+)')


def _padding_of(text: str, file: Path) -> dict[str, Any]:
    head = text[: text.find('"added_tokens"')] if '"added_tokens"' in text else text
    match = _PADDING.search(head)
    if match is not None:
        try:
            padding = json.loads(match.group(1))
        except ValueError:
            padding = match.group(1)
    else:  # not where tokenizers writes it: read the whole file (slow, but right)
        try:
            data = json.loads(text)
        except ValueError as e:
            raise TokenizerError(f"cannot read {file}: {e}") from None
        padding = data.get("padding") if isinstance(data, dict) else None
    if padding is None:
        return {}
    if not isinstance(padding, dict):
        raise TokenizerError(f"{file}: 'padding' is not an object")
    return padding


def _token_id(vocab: Vocab, token: Any) -> int | None:
    if isinstance(token, dict):  # {"content": "<pad>", ...} in older configs
        token = token.get("content")
    if not isinstance(token, str):
        return None
    return vocab.token_id(token)


def template_encoder(tokenizer: Any, info: TokenizerInfo) -> Callable[[str], list[int]]:
    """How TRL tokenizes a string template: alone, without special tokens."""
    if hasattr(tokenizer, "backend_tokenizer"):
        return lambda text: list(tokenizer.encode(text, add_special_tokens=False))
    if hasattr(tokenizer, "to_str"):
        return lambda text: list(tokenizer.encode(text, add_special_tokens=False).ids)
    from sftmask._core import Encoder

    # Templates are a few short strings: the fast path would not pay for building it.
    encoder = Encoder.from_json(info.json if info.json is not None else "", engine="tokenizers")
    return lambda text: encoder.encode_batch([text], add_special_tokens=False)[0]


def _ids_list(example: Any) -> list[int]:
    ids = example["input_ids"] if isinstance(example, Mapping) else example
    return [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]


def decode_padded_rows(collator: Any, examples: list[Any], rows: list[int]) -> dict[int, str]:
    """The text of some rows as TRL's warnings show it: the padded row, decoded (cold path)."""
    all_ids = [_ids_list(e) for e in examples]
    width = max(map(len, all_ids), default=0)
    if collator.pad_to_multiple_of:
        m = collator.pad_to_multiple_of
        width = (width + m - 1) // m * m
    pad = collator.pad_token_id
    tokenizer = collator.tokenizer
    out = {}
    for i in rows:
        ids = all_ids[i]
        if pad is not None:
            fill = [pad] * (width - len(ids))
            ids = fill + ids if collator.padding_side == "left" else ids + fill
        if hasattr(tokenizer, "backend_tokenizer"):
            out[i] = tokenizer.decode(ids)
        elif hasattr(tokenizer, "to_str"):
            out[i] = tokenizer.decode(ids, skip_special_tokens=False)
        else:
            out[i] = collator._vocab.text(ids)[0].decode("utf-8", "replace")
    return out
