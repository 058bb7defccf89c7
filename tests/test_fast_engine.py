"""The fast tokenization path (``engine="fast"``, docs/fast-tokenization.md) against the
``tokenizers`` library, the truth: the same ids on every fixture family, on generated Unicode and
on llama.cpp's HF-derived test vectors; the same labels as ``engine="tokenizers"`` (so the same
token spans); and a tokenizer.json the fast path does not cover falls back to ``tokenizers``.
"""

from __future__ import annotations

import copy
import json
import sys
import tarfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))

import sftmask
from build_chat_templates import SOURCES, _download, chat_templates, conversations
from build_tokenizers import tokenizer_path
from conftest import load_hf_tokenizer, load_tokenizer

#: The families the fast path takes, by their tokenizer.json; every other one must fall back.
FAST = {"llama3", "qwen2", "gpt2", "tekken"}


def _json(family: str) -> str:
    return tokenizer_path(family).read_text(encoding="utf-8")


def _encoder(family: str, engine: str = "auto") -> sftmask.Encoder:
    return sftmask.Encoder.from_json(_json(family), engine=engine)


def _truth(family: str, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    return [e.ids for e in load_tokenizer(family).encode_batch(texts, add_special_tokens=add_special_tokens)]


def test_engine_per_family(family: str) -> None:
    enc = _encoder(family)
    assert enc.engine == ("fast" if family in FAST else "tokenizers"), enc.fast_refusal
    assert (enc.fast_refusal is None) == (family in FAST)
    if family not in FAST:
        with pytest.raises(sftmask.OptionError, match="engine='fast' does not cover this tokenizer"):
            _encoder(family, "fast")
    assert _encoder(family, "tokenizers").engine == "tokenizers"


# Pieces the pre-tokenizer regexes treat specially, mixed with arbitrary characters.
_PIECES = [
    " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\r", " \n", "\u00a0", "\u3000", "\u2028", "\u0085",
    "'s", "'S", "'t", "'RE", "'ve", "'M", "'ll", "'LL", "'d", "'ſ", "'x", "'",
    "1", "12", "123", "1234", "12345", "٣", "½", "Ⅻ",
    "hello", "World", "HTTP", "ǅ", "ﬁ", "é", "e\u0301", "a\u0308\u0301", "\u0301",
    "👍", "👨\u200d👩\u200d👧\u200d👦", "🏳\ufe0f\u200d🌈", "🇫🇷", "👋🏽",
    "中文字符", "日本語", "한국어", "ภาษาไทย", "ខ្មែរ", "שָׁלוֹם", "مرحبا", "हिन्दी",
    "\u200b", "\u200c", "\u200d", "\ufeff", "\u2060",
    "!!", "...", "?!", "(", ")", "--", "//", "#", "$", "`", "\\", "<", ">",
    "<|im_start|>", "<|im_end|>", "<|eot_id|>", "<|begin_of_text|>", "<|endoftext|>", "<tool_call>", "<s>",
]  # fmt: skip

_texts = st.lists(
    st.one_of(st.sampled_from(_PIECES), st.text(st.characters(exclude_categories=("Cs",)), max_size=6)),
    max_size=30,
).map("".join)


@pytest.mark.parametrize("fam", sorted(FAST))
@given(texts=st.lists(_texts, min_size=1, max_size=8), add_special_tokens=st.booleans())
def test_ids_equal_tokenizers_on_generated_unicode(fam: str, texts: list[str], add_special_tokens: bool) -> None:
    got = _encoder_cached(fam).encode_batch(texts, add_special_tokens=add_special_tokens, num_threads=2)
    assert got == _truth(fam, texts, add_special_tokens)


_ENCODERS: dict[str, sftmask.Encoder] = {}


def _encoder_cached(family: str) -> sftmask.Encoder:
    if family not in _ENCODERS:
        _ENCODERS[family] = _encoder(family, "fast")
    return _ENCODERS[family]


def test_every_family_equals_tokenizers(family: str) -> None:
    """Fast or not, every family's ids are the library's (long texts, the whole piece list)."""
    texts = ["".join(_PIECES), " ".join(_PIECES), "\n".join(_PIECES) * 3, "", " ", "x" * 5000, "1" * 100]
    enc = _encoder(family)
    for special in (False, True):
        assert enc.encode_batch(texts, add_special_tokens=special) == _truth(family, texts, special)


def test_rows_not_in_nfc_fall_back() -> None:
    """Qwen2 normalizes with NFC: a row that NFC changes goes to tokenizers, and still matches."""
    texts = ["cafe\u0301 e\u0301\u0323 A\u030a", "Å ḍ̇ ﬁ", "plain"]
    assert _encoder_cached("qwen2").encode_batch(texts, add_special_tokens=False) == _truth("qwen2", texts, False)


# llama.cpp's tokenizer test vectors: HF's ids for the model the file is named after.
_VECTORS = {"llama-bpe": "llama3", "qwen2": "qwen2", "gpt-2": "gpt2"}


def _vectors(name: str) -> list[tuple[str, list[int]]]:
    archive = _download(SOURCES["llama_cpp"])
    base = f"vendor/llama.cpp/models/ggml-vocab-{name}.gguf"
    files: dict[str, bytes] = {}
    with tarfile.open(archive) as tf:
        for info in tf:
            for ext in (".inp", ".out"):
                if info.name.endswith(base + ext):
                    handle = tf.extractfile(info)
                    assert handle is not None
                    files[ext] = handle.read()
    inputs = files[".inp"].decode("utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    outputs = [[int(i) for i in line.split()] for line in files[".out"].decode("utf-8").split("\n")[: len(inputs)]]
    assert len(inputs) == len(outputs) > 10
    return list(zip(inputs, outputs))


@pytest.mark.parametrize("name", sorted(_VECTORS))
def test_llama_cpp_vectors(name: str) -> None:
    family = _VECTORS[name]
    vectors = _vectors(name)
    texts = [t for t, _ in vectors]
    got = _encoder_cached(family).encode_batch(texts, add_special_tokens=False)
    assert got == _truth(family, texts, False)
    # The fixture vocabularies are the models' own: the vectors hold for them too.
    assert got == [ids for _, ids in vectors]


def _edited(family: str, edit) -> str:
    spec = json.loads(_json(family))
    edit(spec)
    return json.dumps(spec)


def _set_regex(spec: dict) -> None:
    spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = spec["pre_tokenizer"]["pretokenizers"][0][
        "pattern"
    ]["Regex"].replace(r"\p{N}{1,3}", r"\p{N}{1,2}")


def _set_normalizer(spec: dict) -> None:
    spec["normalizer"] = {"type": "NFKC"}


def _set_dropout(spec: dict) -> None:
    spec["model"]["dropout"] = 0.5


def _set_lstrip(spec: dict) -> None:
    spec["added_tokens"][0]["lstrip"] = True


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (_set_regex, "the Split regex"),
        (_set_normalizer, "the NFKC normalizer"),
        (_set_dropout, "BPE dropout 0.5"),
        (_set_lstrip, "with lstrip"),
    ],
)
def test_uncovered_tokenizer_falls_back(edit, reason: str) -> None:
    from tokenizers import Tokenizer

    text = ["x  12345 ﬁ Ǆ 'S\r\n <|begin_of_text|> tail"]
    edited = _edited("llama3", edit)
    enc = sftmask.Encoder.from_json(edited)
    assert enc.engine == "tokenizers"
    assert reason in (enc.fast_refusal or "")
    with pytest.raises(sftmask.OptionError, match=reason):
        sftmask.Encoder.from_json(edited, engine="fast")
    if edit is not _set_dropout:  # dropout makes the library's ids random
        truth = Tokenizer.from_str(edited)
        assert enc.encode_batch(text) == [e.ids for e in truth.encode_batch(text)]


def test_unknown_engine_is_an_option_error() -> None:
    with pytest.raises(sftmask.OptionError, match="engine must be"):
        sftmask.Encoder.from_json(_json("gpt2"), engine="tiktoken")
    with pytest.raises(sftmask.OptionError, match="engine must be"):
        sftmask.tokenize_and_mask(["x"], str(tokenizer_path("gpt2")), "x", engine="Fast")


# Labels: engine="fast" must give engine="tokenizers"' labels (ids and token spans both).
_CHAT = {"llama3": "llama_cpp/meta-llama-Llama-3.1-8B-Instruct", "qwen2": "llama_cpp/Qwen-Qwen2.5-7B-Instruct"}


def _convs(seed: int) -> list:
    """Conversations these two templates render: no tools, text contents only."""
    return [
        c["messages"]
        for c in conversations(seed=seed, count=60)
        if c["tools"] is None and all(isinstance(m["content"], str) for m in c["messages"])
    ]


@pytest.mark.parametrize("fam", sorted(_CHAT))
def test_messages_labels_equal_across_engines(fam: str) -> None:
    tok = copy.copy(load_hf_tokenizer(fam))
    tok.chat_template = chat_templates()[_CHAT[fam]]
    convs = _convs(5)
    out = {e: sftmask.tokenize_and_mask(convs, tok, engine=e, on_missing="ignore") for e in ("fast", "tokenizers")}
    assert out["fast"] == out["tokenizers"]
    assert sum(t != -100 for row in out["fast"]["labels"] for t in row) > 0


@pytest.mark.parametrize("fam", sorted(_CHAT))
def test_text_labels_equal_across_engines(fam: str) -> None:
    tok = copy.copy(load_hf_tokenizer(fam))
    tok.chat_template = chat_templates()[_CHAT[fam]]
    convs = _convs(6)
    texts = [tok.apply_chat_template(c, tokenize=False) for c in convs]
    response = "<|im_start|>assistant\n" if fam == "qwen2" else "<|start_header_id|>assistant<|end_header_id|>\n\n"
    for special in (False, True):
        out = {
            e: sftmask.tokenize_and_mask(
                texts, tok, response, engine=e, on_missing="ignore", add_special_tokens=special
            )
            for e in ("fast", "tokenizers")
        }
        assert out["fast"] == out["tokenizers"]
        assert out["fast"]["input_ids"] == _truth(fam, texts, special)
