"""Cold start: the table built from a loaded tokenizer's parts plus the vocabulary of the file it
was loaded from must be the table built from ``backend_tokenizer.to_str()``, id for id, and a
tokenizer that no longer matches its file (tokens added, a component or the model swapped, the
file rewritten) must not take that path. No timing is asserted: see benches/bench_cold_start.py."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest

import sftmask
from build_tokenizers import fixture_info, tokenizer_path
from sftmask import _tokenizer

# Texts that cross word starts, special tokens (phantom spaces after them), bytes, accents.
_TEXTS = ("Hello world", " two  spaces\nand a line", "naïve café 東京 🤗", "x\ty")


@pytest.fixture
def spy(monkeypatch):
    """Records, per resolve(), whether the file path gave the table (a Vocab) or not (None)."""
    seen: list = []
    real = _tokenizer._vocab_from_file

    def recording(*args):
        out = real(*args)
        seen.append(out)
        return out

    monkeypatch.setattr(_tokenizer, "_vocab_from_file", recording)
    return seen


def _folder(tmp_path, family, name="tok"):
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(tokenizer_path(family), folder / "tokenizer.json")
    info = fixture_info(family)
    config = {"tokenizer_class": "PreTrainedTokenizerFast"}
    config.update({k: info[k] for k in ("bos_token", "eos_token", "pad_token") if info.get(k)})
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def _load(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def _truth(tok):
    """The table of the path every tokenizer took before: its full JSON, serialized now."""
    return sftmask.Vocab.from_json(tok.backend_tokenizer.to_str())


def assert_same_table(got, want, tok):
    assert len(got) == len(want)
    assert (got.decoding, got.phantom) == (want.decoding, want.phantom)
    assert got.fingerprint == want.fingerprint
    for i in range(len(want) + 2):
        assert got.token_bytes(i) == want.token_bytes(i), i
        assert got.is_added(i) == want.is_added(i), i
    specials = [t for t in tok.all_special_tokens if t]
    for text in _TEXTS:
        assert got.normalize(text) == want.normalize(text)
        # Searchable text, phantom spaces included: plain, and after each special token.
        for s in ["", *specials]:
            ids = tok.encode(s + text, add_special_tokens=True)
            assert got.text(ids) == want.text(ids), (s, text)
    for t in specials:
        assert got.token_id(t) == want.token_id(t)


def test_every_family_takes_the_file_path_and_gets_the_same_table(tmp_path, family, spy):
    tok = _load(_folder(tmp_path, family))
    info = _tokenizer.resolve(tok)
    assert spy and spy[-1] is not None, "the tokenizer.json it was loaded from was used"
    assert info.vocab is spy[-1]
    assert_same_table(info.vocab, _truth(tok), tok)
    assert info.pad_token_id == tok.pad_token_id


@pytest.mark.parametrize("family", ["gpt2", "mistral_v1"])
def test_tokens_added_after_load_are_in_the_table(tmp_path, family, spy):
    tok = _load(_folder(tmp_path, family))
    before = _tokenizer.resolve(tok).vocab
    tok.add_special_tokens({"pad_token": "<my_pad>"})
    tok.add_tokens(["brandnewword", "▁spaced"])
    after = _tokenizer.resolve(tok).vocab
    assert after is not before and len(after) == len(before) + 3
    assert after.token_bytes(tok.pad_token_id) == b"<my_pad>"
    assert after.is_added(tok.convert_tokens_to_ids("brandnewword"))
    assert_same_table(after, _truth(tok), tok)
    assert spy[-1] is after, "the added tokens come from the loaded tokenizer, the rest still from the file"


def test_a_component_swapped_after_load_is_seen(tmp_path):
    from tokenizers import decoders, pre_tokenizers

    tok = _load(_folder(tmp_path, "mistral_v3"))
    before = _tokenizer.resolve(tok).vocab
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
    tok.backend_tokenizer.decoder = decoders.Metaspace(prepend_scheme="always")
    after = _tokenizer.resolve(tok).vocab
    assert after is not before and after.phantom != before.phantom
    assert_same_table(after, _truth(tok), tok)


def test_a_model_swapped_after_load_is_not_taken_from_the_file(tmp_path, spy):
    from tokenizers import models

    tok = _load(_folder(tmp_path, "gpt2"))
    vocab = {tok.backend_tokenizer.model.id_to_token(i): i for i in range(500)}
    tok.backend_tokenizer.model = models.BPE(vocab=vocab, merges=[])
    got = _tokenizer.resolve(tok).vocab
    assert spy[-1] is None
    assert_same_table(got, _truth(tok), tok)


def test_one_token_changed_in_a_swapped_model_is_caught_by_the_sample(tmp_path, spy):
    """Same size, same type: only the sampled ids tell. Change a sampled one."""
    from tokenizers import models

    tok = _load(_folder(tmp_path, "gpt2"))
    model = tok.backend_tokenizer.model
    n = tok.backend_tokenizer.get_vocab_size(with_added_tokens=False)
    vocab = {model.id_to_token(i): i for i in range(n)}
    del vocab[model.id_to_token(0)]
    vocab["zzz-not-gpt2"] = 0  # the file's first entry is always sampled
    tok.backend_tokenizer.model = models.BPE(vocab=vocab, merges=[])
    got = _tokenizer.resolve(tok).vocab
    assert spy[-1] is None
    assert got.token_bytes(0) == b"zzz-not-gpt2"
    assert_same_table(got, _truth(tok), tok)


def test_a_file_rewritten_after_load_is_not_used(tmp_path, spy):
    folder = _folder(tmp_path, "qwen2")
    tok = _load(folder)
    shutil.copy(tokenizer_path("gpt2"), folder / "tokenizer.json")
    got = _tokenizer.resolve(tok).vocab
    assert spy[-1] is None
    assert_same_table(got, _truth(tok), tok)


def test_no_file_at_hand_takes_to_str(tmp_path, spy):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer.from_file(str(tokenizer_path("phi3")))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw)
    folder = _folder(tmp_path, "phi3")
    gone = _load(folder)
    shutil.rmtree(folder)
    for t in (tok, gone):
        assert_same_table(_tokenizer.resolve(t).vocab, _truth(t), t)
    assert spy == [], "no candidate file: the file path is not even tried"
    assert_same_table(_tokenizer.resolve(raw).vocab, sftmask.Vocab.from_json(raw.to_str()), tok)


def test_converted_at_load_does_not_use_the_file(tmp_path):
    tok = _load(_folder(tmp_path, "gpt2"))
    tok.init_kwargs["from_slow"] = True
    assert _tokenizer._source_file(tok) is None


def test_a_hub_id_is_looked_up_in_the_local_cache(tmp_path, monkeypatch, spy):
    from huggingface_hub import constants

    folder = _folder(tmp_path, "tekken")
    tok = _load(folder)
    repo = tmp_path / "hub" / "models--someorg--somemodel"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    shutil.copy(folder / "tokenizer.json", repo / "snapshots" / ("0" * 40) / "tokenizer.json")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    tok.name_or_path = "someorg/somemodel"
    shutil.rmtree(folder)
    got = _tokenizer.resolve(tok).vocab
    assert spy[-1] is got
    assert_same_table(got, _truth(tok), tok)


def test_a_pickled_collator_rebuilds_from_the_file(tmp_path, spy):
    tok = _load(_folder(tmp_path, "llama3"))
    c = sftmask.DataCollatorForCompletionOnlyLM("<|start_header_id|>assistant<|end_header_id|>\n\n", tokenizer=tok)
    worker = pickle.loads(pickle.dumps(c))
    assert worker.tokenizer is not tok
    assert spy[-1] is not None and worker._vocab is spy[-1]
    assert_same_table(worker._vocab, _truth(tok), tok)
    text = (
        "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nhello<|eot_id|>"
    )
    ids = tok.encode(text, add_special_tokens=True)
    labels = worker([{"input_ids": ids}])["labels"]
    assert (labels == c([{"input_ids": ids}])["labels"]).all()
    assert tok.decode([i for i in labels[0].tolist() if i != -100]) == "hello<|eot_id|>"


# The preprocessing encoder (a whole `tokenizers` tokenizer, merges included) takes the same path:
# built from the file plus the loaded tokenizer's parts, it must encode as the loaded tokenizer does.


def _encodes_alike(encoder, tok):
    backend = tok.backend_tokenizer
    specials = [t for t in tok.all_special_tokens if t]
    for text in [*_TEXTS, *(s + t for s in specials for t in _TEXTS)]:
        for add in (False, True):
            want = backend.encode(text, add_special_tokens=add).ids
            assert encoder.encode_batch([text], add_special_tokens=add)[0] == want, (text, add)


def test_every_family_builds_its_encoder_from_the_file(tmp_path, family):
    tok = _load(_folder(tmp_path, family))
    encoder = _tokenizer.encoder_from_file(tok)
    if type(tok.backend_tokenizer.model).__name__ != "BPE":
        assert encoder is None, "only BPE models are rebuilt from the file"
        return
    assert encoder is not None
    _encodes_alike(encoder, tok)


@pytest.mark.parametrize("family", ["gpt2", "mistral_v1", "llama3"])
def test_the_encoder_has_the_tokens_added_after_load(tmp_path, family):
    tok = _load(_folder(tmp_path, family))
    tok.add_special_tokens({"pad_token": "<my_pad>"})
    tok.add_tokens(["brandnewword"])
    encoder = _tokenizer.encoder_from_file(tok)
    assert encoder is not None
    _encodes_alike(encoder, tok)
    assert encoder.encode_batch(["<my_pad>brandnewword"], add_special_tokens=False)[0] == [
        tok.pad_token_id,
        tok.convert_tokens_to_ids("brandnewword"),
    ]


def test_the_encoder_has_a_component_swapped_after_load(tmp_path):
    from tokenizers import normalizers

    tok = _load(_folder(tmp_path, "qwen2"))
    tok.backend_tokenizer.normalizer = normalizers.Lowercase()
    encoder = _tokenizer.encoder_from_file(tok)
    assert encoder is not None
    _encodes_alike(encoder, tok)
    assert encoder.encode_batch(["HELLO"], add_special_tokens=False) == encoder.encode_batch(["hello"])


def test_a_model_with_other_merges_is_caught_by_the_probe(tmp_path):
    # Same vocabulary (so the sample passes), no merges: only encoding tells.
    from tokenizers import models

    tok = _load(_folder(tmp_path, "gpt2"))
    model = tok.backend_tokenizer.model
    n = tok.backend_tokenizer.get_vocab_size(with_added_tokens=False)
    tok.backend_tokenizer.model = models.BPE(vocab={model.id_to_token(i): i for i in range(n)}, merges=[])
    assert _tokenizer.encoder_from_file(tok) is None
    out = sftmask.tokenize_and_mask(["Hello world"], tok, "world")
    assert out["input_ids"][0] == tok("Hello world")["input_ids"]


def test_no_file_or_a_call_state_takes_to_str(tmp_path):
    folder = _folder(tmp_path, "qwen2")
    tok = _load(folder)
    tok(["a b c d e f"], truncation=True, max_length=2)
    assert _tokenizer.encoder_from_file(tok) is None
    text = "a b c d e f"
    assert sftmask.tokenize_and_mask([text], tok, "c")["input_ids"][0] == _load(folder)(text)["input_ids"]
    gone = _load(folder)
    shutil.rmtree(folder)
    assert _tokenizer.encoder_from_file(gone) is None
