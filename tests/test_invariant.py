"""docs/masking.md#the-invariant: the searchable text of ``encode(T)`` is the tokenizer's normalization of T.

``D(encode(T, add_special_tokens=False).ids) == N(T)`` where N is the tokenizer's own
content-changing normalization: NFC for Qwen2, identity for the others — except that a
Metaspace tokenizer encodes a text that starts with a space exactly like the same text without
it (it only adds its `▁` when none is there), so that one space cannot be told apart and N drops
it. WordPiece (BERT) is best effort: D equals ``decode`` there.
"""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from build_tokenizers import FAMILIES, fixture_info
from conftest import load_tokenizer, load_vocab

EXACT_FAMILIES = [f for f in FAMILIES if f != "bert"]

_pieces = (
    st.characters(blacklist_categories=("Cs",))
    | st.sampled_from(list(" \n\t\r😀🎉你好世界éñ€ "))
    | st.sampled_from(["    ", "\n\n", "def f(x):\n", "```", "  ", "\u00a0", "e\u0301"])
)
texts = st.lists(_pieces, max_size=40).map("".join)


def normalization(family: str, text: str) -> str:
    if family == "qwen2":
        return unicodedata.normalize("NFC", text)
    if family == "mistral_v3" and text.startswith(" "):
        return text[1:]
    return text


@pytest.mark.parametrize("family", EXACT_FAMILIES)
@given(text=texts)
@example(text="Hello world")
@example(text=" leading space")
@example(text="\n\nnew lines\n\n\n")
@example(text="e\u0301 and \u00e9")
@example(text="emoji 😀 CJK 你好 code `x = 1`")
def test_searchable_text_is_the_text(family, text):
    tok = load_tokenizer(family)
    vocab = load_vocab(family)
    ids = tok.encode(text, add_special_tokens=False).ids
    searchable, ends = vocab.text(ids)
    assert searchable.decode("utf-8") == normalization(family, text)
    assert len(ends) == len(ids)
    assert ends == sorted(ends)


@pytest.mark.parametrize("family", EXACT_FAMILIES)
@given(a=texts, b=texts)
def test_special_tokens_between_segments(family, a, b):
    """Text around a special token: the special token's own text sits between the segments."""
    tok = load_tokenizer(family)
    vocab = load_vocab(family)
    # Not the BOS: a text starting with the BOS's text reads as "BOS added by the tokenizer".
    special = fixture_info(family)["eos_token"]
    text = a + special + b
    ids = tok.encode(text, add_special_tokens=False).ids
    searchable = vocab.text(ids)[0].decode("utf-8")
    left, _, right = searchable.partition(special)
    assert left == normalization(family, a)
    # Text after a special token is never at the text's start, so no ambiguity there: Llama-2
    # style tokenizers always add a `▁` there (a phantom), Metaspace "first" ones never do.
    assert right == (unicodedata.normalize("NFC", b) if family == "qwen2" else b)


@given(words=st.lists(st.text(st.sampled_from("abcdefghij"), min_size=1, max_size=8), min_size=1, max_size=10))
def test_wordpiece_reads_like_decode(words):
    tok = load_tokenizer("bert")
    vocab = load_vocab("bert")
    for special in (False, True):
        ids = tok.encode(" ".join(words), add_special_tokens=special).ids
        assert vocab.text(ids)[0].decode() == tok.decode(ids, skip_special_tokens=False)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_token_has_bytes(family):
    """Every id of the tokenizer is in the table; added tokens are their content."""
    tok = load_tokenizer(family)
    vocab = load_vocab(family)
    assert len(vocab) == tok.get_vocab_size(with_added_tokens=True)
    for token_id, added in tok.get_added_tokens_decoder().items():
        got = vocab.token_bytes(token_id)
        assert got is not None
        assert got.decode().strip() == added.content
    missing = [i for i in range(len(vocab)) if vocab.token_bytes(i) is None]
    assert missing == []


@pytest.mark.parametrize("family", EXACT_FAMILIES)
@given(text=texts)
def test_bos_added_by_the_tokenizer(family, text):
    """With the tokenizer's own BOS in front, the text after it is unchanged."""
    tok = load_tokenizer(family)
    info = fixture_info(family)
    ids = tok.encode(text, add_special_tokens=True).ids
    searchable = load_vocab(family).text(ids)[0].decode("utf-8")
    bos = info["bos_token"] if info["add_bos"] else ""
    assert searchable == bos + normalization(family, text)
