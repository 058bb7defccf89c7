"""A pad token for tokenizers that ship without one (Llama-3), never by setting pad = eos.

>>> import sftmask
>>> sftmask.ensure_pad_token(tokenizer) == tokenizer.pad_token_id  # Qwen2.5 has one already
True
"""

from __future__ import annotations

import re
import warnings
from typing import Any

#: Tokens that exist to pad, by name, in order of preference (Llama-3.1+ ships the first).
PAD_TOKEN_NAMES = ("<|finetune_right_pad_id|>", "<|pad|>", "<pad>", "[PAD]", "<PAD>")

#: The token added when the vocabulary has none to reuse (the seed's recipe).
ADDED_PAD_TOKEN = "[PAD]"

#: Embedding rows are rounded up to a multiple of this when the model must grow.
RESIZE_MULTIPLE = 64

# Llama-3.0 names its unused special tokens <|reserved_special_token_N|>.
_RESERVED = re.compile(r"<\|reserved_special_token_(\d+)\|>")


def ensure_pad_token(tokenizer: Any, model: Any = None) -> int:
    """Gives ``tokenizer`` a pad token, if it has none, and returns the pad token id.

    In order of preference:

    1. the tokenizer's own pad token (a warning if it equals the EOS token: collators that mask
       padding by id, such as TRL's, then mask every EOS label; sftmask masks by position);
    2. an unused token of the vocabulary that exists to pad (Llama-3.1+'s
       ``<|finetune_right_pad_id|>``), else Llama-3.0's highest-numbered
       ``<|reserved_special_token_N|>`` that is not a special role token (BOS, EOS, UNK, the
       additional special tokens, the model's EOS ids) and does not appear in the chat template:
       the model already has its embedding row, so nothing is resized;
    3. a new ``[PAD]`` token; ``model``'s embeddings are then resized with
       ``model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)`` (a warning says
       so when no ``model`` is given).

    The pad token is never set to the EOS token. Calling it again changes nothing. With a
    ``model``, its ``config.pad_token_id`` is set too.

    >>> tokenizer = AutoTokenizer.from_pretrained("meta-llama/Llama-3.1-8B")  # doctest: +SKIP
    >>> ensure_pad_token(tokenizer, model)  # doctest: +SKIP
    128004
    >>> tokenizer.pad_token  # doctest: +SKIP
    '<|finetune_right_pad_id|>'

    Args:
        tokenizer: a transformers tokenizer, or a ``tokenizers.Tokenizer`` (its padding is
            enabled with the chosen token).
        model: a transformers model whose embeddings must cover the pad token (optional).

    Returns:
        The pad token id.
    """
    if hasattr(tokenizer, "pad_token"):
        pad_id = _ensure_transformers(tokenizer, model)
    elif hasattr(tokenizer, "enable_padding") and hasattr(tokenizer, "get_vocab"):
        pad_id = _ensure_tokenizers(tokenizer, model)
    else:
        raise TypeError(
            f"ensure_pad_token takes a transformers tokenizer or a tokenizers.Tokenizer, got {type(tokenizer).__name__}"
        )
    if model is not None:
        _fit_model(model, pad_id, _length(tokenizer))
    return pad_id


def _ensure_transformers(tokenizer: Any, model: Any) -> int:
    if tokenizer.pad_token is not None and tokenizer.pad_token_id is not None:
        pad_id = int(tokenizer.pad_token_id)
        if tokenizer.eos_token_id is not None and pad_id == tokenizer.eos_token_id:
            warnings.warn(
                f"the pad token is the EOS token ({tokenizer.pad_token!r}, id {pad_id}): collators that mask "
                "padding by id (TRL's, transformers' DataCollatorForLanguageModeling) then mask every EOS label, "
                "so the model never learns to stop (trl#976). sftmask masks padding by position. To get a "
                "distinct pad token, set tokenizer.pad_token = None and call ensure_pad_token again",
                UserWarning,
                stacklevel=3,
            )
        return pad_id
    used = set(_special_ids(tokenizer, model))
    token = _reusable_token(tokenizer.get_vocab(), used, _chat_template_text(tokenizer))
    if token is not None:
        tokenizer.add_special_tokens({"pad_token": token})  # an existing token: nothing is added
        return int(tokenizer.pad_token_id)
    tokenizer.add_special_tokens({"pad_token": ADDED_PAD_TOKEN})
    pad_id = int(tokenizer.pad_token_id)
    if model is None:
        _warn_resize(pad_id)
    return pad_id


def _ensure_tokenizers(tokenizer: Any, model: Any) -> int:
    """A ``tokenizers.Tokenizer``: its pad token is its padding configuration."""
    padding = tokenizer.padding
    if padding is not None and padding.get("pad_token") is not None:
        return int(padding["pad_id"])
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    token = _reusable_token(vocab, set(_special_ids(None, model)), "")
    if token is None:
        token = ADDED_PAD_TOKEN
        tokenizer.add_special_tokens([token])
        if model is None:
            _warn_resize(tokenizer.token_to_id(token))
    pad_id = int(tokenizer.token_to_id(token))
    tokenizer.enable_padding(pad_id=pad_id, pad_token=token)
    return pad_id


def _warn_resize(pad_id: int) -> None:
    warnings.warn(
        f"added a new token {ADDED_PAD_TOKEN!r} (id {pad_id}): the model's embeddings must grow to match. "
        f"Pass model= to ensure_pad_token, or call "
        f"model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of={RESIZE_MULTIPLE})",
        UserWarning,
        stacklevel=4,
    )


def _reusable_token(vocab: dict[str, int], used: set[int], chat_template: str) -> str | None:
    """The best token of ``vocab`` to pad with that nothing else uses, or None."""

    def unused(token: str) -> bool:
        return vocab[token] not in used and token not in chat_template

    for name in PAD_TOKEN_NAMES:
        if name in vocab and unused(name):
            return name
    reserved = [(int(m.group(1)), t) for t in vocab if (m := _RESERVED.fullmatch(t)) and unused(t)]
    return max(reserved)[1] if reserved else None


def _special_ids(tokenizer: Any, model: Any) -> list[int]:
    """Ids with a role already: the tokenizer's special tokens and the model's BOS/EOS ids."""
    ids: list[int] = []
    if tokenizer is not None:
        ids.extend(int(i) for i in getattr(tokenizer, "all_special_ids", []) if i is not None)
    for config in (getattr(model, "config", None), getattr(model, "generation_config", None)):
        for name in ("bos_token_id", "eos_token_id", "decoder_start_token_id"):
            value = getattr(config, name, None)
            if isinstance(value, int):
                ids.append(value)
            elif isinstance(value, (list, tuple)):
                ids.extend(int(v) for v in value)
    return ids


def _chat_template_text(tokenizer: Any) -> str:
    """Every chat template of the tokenizer as one string (a token named in it is in use)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        return "\n".join(str(v) for v in template.values())
    return template or ""


def _length(tokenizer: Any) -> int:
    if hasattr(tokenizer, "get_vocab_size"):
        return int(tokenizer.get_vocab_size(with_added_tokens=True))
    return len(tokenizer)


def _fit_model(model: Any, pad_id: int, tokenizer_length: int) -> None:
    """Grows the model's embeddings if they lack a row for ``pad_id``; records the pad id."""
    embeddings = model.get_input_embeddings()
    rows = int(embeddings.weight.shape[0])
    if pad_id >= rows:
        # Only ever grows: a model whose matrix is already padded past the vocabulary (Qwen2)
        # would otherwise be cut down to len(tokenizer).
        model.resize_token_embeddings(max(tokenizer_length, pad_id + 1), pad_to_multiple_of=RESIZE_MULTIPLE)
    config = getattr(model, "config", None)
    if config is not None:
        config.pad_token_id = pad_id
    generation = getattr(model, "generation_config", None)
    if generation is not None and getattr(generation, "pad_token_id", None) is None:
        generation.pad_token_id = pad_id
