"""`sftmask.ensure_pad_token`: reuse a reserved token (Llama-3.1 and 3.0 naming), else add [PAD]
and grow the model. Truth: the tokenizer.json's own added tokens, the tokenizer's own encode, and
the model's embedding matrix before and after."""

from __future__ import annotations

import json
import re
import warnings

import pytest

import sftmask
from build_tokenizers import FAMILIES, fixture_info, tokenizer_path
from conftest import tiny_llama

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Llama-3.0 has these five named tokens; every other id from 128000 on is reserved.
LLAMA30_NAMED = {"<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"}


def _json(family: str) -> dict:
    return json.loads(tokenizer_path(family).read_text(encoding="utf-8"))


def _llama30_json() -> dict:
    """The llama3 fixture (3.1 naming) renamed to Llama-3.0's: <|finetune_right_pad_id|>,
    <|eom_id|>, <|python_tag|>, … become <|reserved_special_token_N|>, numbered by id."""
    data = _json("llama3")
    k = 0
    for token in sorted(data["added_tokens"], key=lambda t: t["id"]):
        if token["content"] not in LLAMA30_NAMED:
            token["content"] = f"<|reserved_special_token_{k}|>"
            k += 1
    assert k == 251  # reserved_0 … reserved_250, as Llama-3.0 ships them
    return data


def _hf(data_or_family, **kwargs):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    if isinstance(data_or_family, str):
        backend = Tokenizer.from_file(str(tokenizer_path(data_or_family)))
    else:
        backend = Tokenizer.from_str(json.dumps(data_or_family))
    return PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)


def _added_id(data: dict, content: str) -> int:
    return next(t["id"] for t in data["added_tokens"] if t["content"] == content)


LLAMA_SPECIALS = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}


@pytest.fixture(autouse=True)
def _warnings_are_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_llama31_reuses_finetune_right_pad_id_without_resizing():
    data = _json("llama3")
    tok = _hf("llama3", **LLAMA_SPECIALS)
    assert tok.pad_token is None
    model = tiny_llama(len(tok), tie_word_embeddings=False)
    before = model.get_input_embeddings().weight.detach().clone()
    n = len(tok)

    pad = sftmask.ensure_pad_token(tok, model)

    assert pad == _added_id(data, "<|finetune_right_pad_id|>")
    assert tok.pad_token == "<|finetune_right_pad_id|>" and tok.pad_token_id == pad
    assert len(tok) == n, "no token was added"
    after = model.get_input_embeddings().weight
    assert after.shape == before.shape and torch.equal(after, before), "embeddings untouched"
    assert model.config.pad_token_id == pad
    # The tokenizer itself reads the token back as one id.
    assert tok.encode("<|finetune_right_pad_id|>", add_special_tokens=False) == [pad]


def test_llama30_reuses_the_highest_reserved_token():
    data = _llama30_json()
    tok = _hf(data, **LLAMA_SPECIALS)
    assert "<|finetune_right_pad_id|>" not in tok.get_vocab()
    n = len(tok)

    pad = sftmask.ensure_pad_token(tok)

    assert pad == _added_id(data, "<|reserved_special_token_250|>")
    assert tok.pad_token == "<|reserved_special_token_250|>"
    assert len(tok) == n and pad < n
    assert pad not in (tok.bos_token_id, tok.eos_token_id)


def test_llama30_skips_reserved_tokens_that_have_a_role():
    data = _llama30_json()
    tok = _hf(
        data,
        additional_special_tokens=["<|reserved_special_token_250|>"],  # a role token of some fine-tune
        **LLAMA_SPECIALS,
    )
    tok.chat_template = "{% for m in messages %}<|reserved_special_token_249|>{{ m.content }}{% endfor %}"
    used_as_eos = _added_id(data, "<|reserved_special_token_248|>")
    model = tiny_llama(len(tok), tie_word_embeddings=False, eos_token_id=[tok.eos_token_id, used_as_eos])
    before = model.get_input_embeddings().weight.detach().clone()

    pad = sftmask.ensure_pad_token(tok, model)

    assert pad == _added_id(data, "<|reserved_special_token_247|>")
    assert torch.equal(model.get_input_embeddings().weight, before)


def test_gpt2_gets_a_new_pad_and_the_model_grows():
    tok = _hf("gpt2", eos_token="<|endoftext|>")
    vocab = tok.get_vocab()
    assert not any(name in vocab for name in sftmask.pad.PAD_TOKEN_NAMES)
    assert not any(re.fullmatch(r"<\|reserved_special_token_\d+\|>", t) for t in vocab)
    n = len(tok)
    model = tiny_llama(n, tie_word_embeddings=False)
    emb_before = model.get_input_embeddings().weight.detach().clone()
    head_before = model.get_output_embeddings().weight.detach().clone()

    pad = sftmask.ensure_pad_token(tok, model)

    assert pad == n, "the new token takes the next id"
    assert tok.pad_token == "[PAD]" and len(tok) == n + 1
    assert tok.encode("[PAD]", add_special_tokens=False) == [pad]
    rows = -(-(n + 1) // 64) * 64  # rounded up to a multiple of 64
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert emb.shape == (rows, 16) and head.shape == (rows, 16)
    assert torch.equal(emb[:n], emb_before) and torch.equal(head[:n], head_before), "old rows unchanged"
    assert model.config.vocab_size == rows and model.config.pad_token_id == pad
    # The grown model runs on a padded batch.
    ids = torch.tensor([[15496, 995, pad]])
    assert model(input_ids=ids, attention_mask=torch.tensor([[1, 1, 0]])).logits.shape == (1, 3, rows)


def test_idempotent():
    tok = _hf("gpt2", eos_token="<|endoftext|>")
    model = tiny_llama(len(tok), tie_word_embeddings=False)
    first = sftmask.ensure_pad_token(tok, model)
    weights = model.get_input_embeddings().weight.detach().clone()
    n = len(tok)
    second = sftmask.ensure_pad_token(tok, model)  # no warning (warnings are errors here)
    assert first == second and len(tok) == n
    assert torch.equal(model.get_input_embeddings().weight, weights)


def test_model_given_later_is_grown():
    tok = _hf("gpt2", eos_token="<|endoftext|>")
    n = len(tok)
    with pytest.warns(UserWarning, match=r"resize_token_embeddings"):
        pad = sftmask.ensure_pad_token(tok)
    model = tiny_llama(n, tie_word_embeddings=False)
    assert sftmask.ensure_pad_token(tok, model) == pad
    assert model.get_input_embeddings().weight.shape[0] > pad


def test_pad_equal_to_eos_warns_and_is_kept():
    tok = _hf("llama3", pad_token="<|eot_id|>", **LLAMA_SPECIALS)
    with pytest.warns(UserWarning, match=r"pad token is the EOS token.*trl#976"):
        pad = sftmask.ensure_pad_token(tok)
    assert pad == tok.eos_token_id == _added_id(_json("llama3"), "<|eot_id|>")
    assert tok.pad_token == "<|eot_id|>"


@pytest.mark.parametrize("family", FAMILIES)
def test_never_eos(family):
    info = fixture_info(family)
    tok = _hf(family, **{k: info[k] for k in ("bos_token", "eos_token") if info.get(k)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the [PAD]-added warning
        pad = sftmask.ensure_pad_token(tok)
    assert pad != info.get("eos_token_id") and pad != info.get("bos_token_id")
    assert tok.convert_ids_to_tokens(pad) == tok.pad_token
    assert pad < len(tok)


def test_bare_tokenizers_tokenizer_gets_padding_for_the_collator():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path("llama3")))
    pad = sftmask.ensure_pad_token(tok)
    assert pad == _added_id(_json("llama3"), "<|finetune_right_pad_id|>")
    assert tok.padding["pad_id"] == pad and tok.padding["pad_token"] == "<|finetune_right_pad_id|>"
    collator = sftmask.DataCollatorForCompletionOnlyLM(
        "<|start_header_id|>assistant<|end_header_id|>\n\n", tokenizer=tok, return_tensors="np", on_missing="ignore"
    )
    batch = collator([[128000, 9906], [128000]])
    assert batch["input_ids"][1].tolist() == [128000, pad]

    gpt2 = Tokenizer.from_file(str(tokenizer_path("gpt2")))
    with pytest.warns(UserWarning, match=r"\[PAD\]"):
        pad = sftmask.ensure_pad_token(gpt2)
    assert pad == gpt2.token_to_id("[PAD]") == 50257


def test_rejects_other_objects():
    with pytest.raises(TypeError, match="transformers tokenizer"):
        sftmask.ensure_pad_token(object())
