"""Small synthetic ``tokenizer.json`` texts of each decoder family, for fast hostile-input,
property and memory tests (no real tokenizer needed); the masking rule's ground truth is in
tests/ground_truth.py.

Every vocabulary holds one token per character of :data:`ALPHABET` (so any text over it can be
spelled), a few longer tokens, and special tokens ``<|u|>``/``<|a|>``. Templates over the
alphabet therefore occur in random id sequences often enough to exercise the region logic.
"""

from __future__ import annotations

import json
from typing import Any

from ground_truth import BYTE_LEVEL_DECODER

ALPHABET = ["a", "b", " ", "\n", ":", "é"]
WORDS = ["User:", "Bot:", " a", " b", "ab", "\n\n", " User:", " Bot:", "Bot", ":\n"]
SPECIALS = ["<|u|>", "<|a|>", "<pad>"]
FAMILIES = ("byte_level", "metaspace_first", "metaspace_always", "llama2", "wordpiece", "unigram")


# GPT-2's byte -> character map (the inverse of the ground truth's decoder).
_BYTE_LEVEL = {b: c for c, b in BYTE_LEVEL_DECODER.items()}


def pieces(family: str) -> list[str]:
    """The text each model token stands for (before any phantom rule), in id order."""
    base = ALPHABET + WORDS
    if family == "wordpiece":
        # WordPiece text reads like decode output: words are preceded by a space.
        words = sorted({w.strip() for w in base if w.strip()})
        return [" " + w for w in words] + [w for w in words]  # the second half are ## pieces
    return base


def tokenizer_json(family: str) -> str:
    """A tokenizer.json text of ``family`` (one of :data:`FAMILIES`)."""
    base = pieces(family)
    added = [
        {
            "id": len(base) + i,
            "content": s,
            "special": True,
            "normalized": False,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
        }
        for i, s in enumerate(SPECIALS)
    ]
    file: dict[str, Any] = {"version": "1.0", "added_tokens": added, "normalizer": None, "post_processor": None}
    if family == "byte_level":
        vocab = {"".join(_BYTE_LEVEL[b] for b in p.encode()): i for i, p in enumerate(base)}
        file["model"] = {"type": "BPE", "vocab": vocab, "merges": []}
        file["pre_tokenizer"] = {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": True,
            "use_regex": True,
        }
        file["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    elif family in ("metaspace_first", "metaspace_always", "unigram"):
        scheme = "first" if family == "metaspace_first" else "always"
        meta = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": scheme, "split": False}
        toks = [p.replace(" ", "▁") for p in base]
        if family == "unigram":
            file["model"] = {"type": "Unigram", "vocab": [[t, -1.0] for t in toks], "unk_id": 0}
        else:
            file["model"] = {"type": "BPE", "vocab": {t: i for i, t in enumerate(toks)}, "merges": []}
        file["pre_tokenizer"] = meta
        file["decoder"] = meta
    elif family == "llama2":
        toks = [p.replace(" ", "▁") if p != "\n" else "<0x0A>" for p in base]
        file["model"] = {
            "type": "BPE",
            "vocab": {t: i for i, t in enumerate(toks)},
            "merges": [],
            "byte_fallback": True,
        }
        file["normalizer"] = {
            "type": "Sequence",
            "normalizers": [
                {"type": "Prepend", "prepend": "▁"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
            ],
        }
        file["decoder"] = {
            "type": "Sequence",
            "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0},
            ],
        }
    elif family == "wordpiece":
        half = len(base) // 2
        toks = [p.strip() for p in base[:half]] + ["##" + p for p in base[half:]]
        file["model"] = {
            "type": "WordPiece",
            "vocab": {t: i for i, t in enumerate(toks)},
            "unk_token": "a",
            "continuing_subword_prefix": "##",
            "max_input_chars_per_word": 100,
        }
        file["decoder"] = {"type": "WordPiece", "prefix": "##", "cleanup": True}
    else:
        raise ValueError(family)
    return json.dumps(file)


def vocab_size(family: str) -> int:
    return len(pieces(family)) + len(SPECIALS)


def pad_id(family: str) -> int:
    return len(pieces(family)) + SPECIALS.index("<pad>")


# -- batches for the concurrency and memory tests (byte-level ids) --------------------------------

#: "<|u|>User: a\n<|a|>Bot: b\n\n<|u|>User: b<|a|>Bot: a" in the byte-level vocabulary.
CHAT_ROW = [16, 6, 8, 3, 17, 7, 9, 11, 16, 6, 9, 17, 7, 8]


def big_batch(seed: int, rows: int = 300, min_tokens: int = 32 * 1024) -> list[list[int]]:
    """At least `rows` rows of varied lengths and `min_tokens` tokens (the parallel path)."""
    import random

    rng = random.Random(seed)
    out: list[list[int]] = []
    total = 0
    while len(out) < rows or total < min_tokens:
        row = CHAT_ROW * rng.randrange(8, 16) + CHAT_ROW[: rng.randrange(len(CHAT_ROW))]
        out.append(row)
        total += len(row)
    return out


def small_batch(seed: int) -> list[list[int]]:
    import random

    rng = random.Random(seed)
    return [CHAT_ROW[: rng.randrange(1, len(CHAT_ROW))] * rng.randrange(1, 4) for _ in range(rng.randrange(1, 9))]
