"""The ground truth of the masking rule (docs/masking.md), shared by every test that checks labels.

The rule is written here once, on any sequence that has ``startswith`` — the original ``str``
(chat tests, mapped to tokens through the tokenizer's own character offsets) or ``bytes``
(synthetic vocabularies, random ids through a tokenizer's own token table). It shares no code
with sftmask's search, region or label code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T", str, bytes)
Span = tuple[int, int]


def occurrences(text: T, response: T, instructions: Sequence[T]) -> list[tuple[int, int, bool]]:
    """Non-overlapping template occurrences, leftmost-first, response first at a tie (then the
    instruction templates in order)."""
    patterns = [(response, True)] + [(t, False) for t in instructions]
    out, i = [], 0
    while i < len(text):
        for p, is_response in patterns:
            if text.startswith(p, i):
                out.append((i, i + len(p), is_response))
                i += len(p)
                break
        else:
            i += 1
    return out


def regions(occ: list[tuple[int, int, bool]], n: int, multi: bool, last: bool) -> list[Span]:
    """docs/masking.md#response-regions from the occurrences in a text of length ``n``: without instruction
    templates (``multi`` false) from the last response template to the end; with them, from each
    response template to the next occurrence (only the final one when ``last``)."""
    out = []
    if not multi:
        resp = [o for o in occ if o[2]]
        if resp:
            out.append((resp[-1][1], n))
    else:
        for k, (_, end, is_response) in enumerate(occ):
            if is_response:
                out.append((end, occ[k + 1][0] if k + 1 < len(occ) else n))
        if last:
            out = out[-1:]
    return [(s, e) for s, e in out if e > s]


def text_regions(text: T, response: T, instructions: Sequence[T], train_on: str = "all") -> list[Span]:
    """The regions of ``text`` for these templates."""
    occ = occurrences(text, response, instructions)
    return regions(occ, len(text), bool(instructions), train_on == "last")


def labels(ids: Sequence[int], spans: Sequence[Span], regs: Sequence[Span], ignore: int = -100) -> list[int]:
    """The overlap rule: a token is trained iff its span overlaps a region (a zero-width one iff
    its offset lies inside one)."""
    out = []
    for tid, (cs, ce) in zip(ids, spans):
        hit = any((cs < re and ce > rs) if ce > cs else (rs <= cs < re) for rs, re in regs)
        out.append(tid if hit else ignore)
    return out


def spans_from_ends(ends: Sequence[int]) -> list[Span]:
    """Token spans from their end offsets (each token starts where the previous one ended)."""
    return list(zip([0, *ends[:-1]], ends))


def byte_spans(pieces: Sequence[bytes]) -> tuple[bytes, list[Span]]:
    """The text of consecutive byte pieces and each piece's span in it."""
    ends, n = [], 0
    for p in pieces:
        n += len(p)
        ends.append(n)
    return b"".join(pieces), spans_from_ends(ends)


# -- real tokenizers: the original string and the tokenizer's character offsets -------------------


def encode(tok, text: str) -> tuple[list[int], list[Span]]:
    """Ids and character offsets of ``text`` encoded without added special tokens."""
    enc = tok.encode(text, add_special_tokens=False)
    # SentencePiece-style tokenizers put a lone `▁` after special tokens that is not in the text;
    # the tokenizer reports it with the *next* character's offsets. Its real width is zero.
    offsets = [
        (s, s) if token == "\u2581" and text[s:e] != " " else (s, e) for token, (s, e) in zip(enc.tokens, enc.offsets)
    ]
    return list(enc.ids), offsets


def kept_text(tok, text: str, keep: int) -> str:
    """The part of ``text`` that the first ``keep`` tokens stand for."""
    _, offsets = encode(tok, text)
    return text[: max((e for _, e in offsets[:keep]), default=0)]


def truth_for(tok, text: str, fmt, *, instructions: bool = True, train_on: str = "all", keep=None):
    """(ids, expected labels) for ``text`` encoded without added special tokens, optionally
    truncated to the first ``keep`` tokens; ``fmt`` is a ``chat_formats.ChatFormat``."""
    ids, offsets = encode(tok, text)
    if keep is not None:
        ids, offsets = ids[:keep], offsets[:keep]
        text = text[: max((e for _, e in offsets), default=0)]
    spans = text_regions(text, fmt.response, fmt.instructions if instructions else (), train_on)
    return ids, labels(ids, offsets, spans)


def truth_by_ids(tok, chats: list[list[dict]], fmt, suffix: str = "") -> dict[tuple[int, ...], list[int]]:
    """Ground truth of each chat (plus ``suffix``, e.g. the EOS that SFTTrainer appends), keyed by
    its ids, for checking the batches a trainer built."""
    from chat_formats import render

    pairs = (truth_for(tok, render(fmt, c) + suffix, fmt) for c in chats)
    return {tuple(ids): labels for ids, labels in pairs}


# -- byte-level tokenizers: token bytes from the tokenizer's own table ----------------------------


def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


BYTE_LEVEL_DECODER = _byte_level_decoder()


def byte_level_token_bytes(tok, token_id: int) -> bytes:
    """The bytes a token of a byte-level BPE ``tokenizers.Tokenizer`` (GPT-2) stands for, read from
    the tokenizer's own vocabulary: an added token is its content, a model token its byte-level
    characters mapped back to bytes."""
    added = tok.get_added_tokens_decoder().get(token_id)
    if added is not None:
        return added.content.encode()
    return bytes(BYTE_LEVEL_DECODER[c] for c in tok.id_to_token(token_id))
