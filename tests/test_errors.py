"""sftmask's exception tree: what each error is, the row it carries, and that hostile calls to
every entry point raise a SftmaskError or TypeError (never a PanicException, never a crash)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sftmask
from build_tokenizers import tokenizer_path
from chat_formats import CHATML, render
from conftest import load_hf_tokenizer


def test_the_tree_is_exported_and_keeps_builtin_bases():
    s = sftmask
    assert issubclass(s.RowError, s.SftmaskError) and issubclass(s.RowError, ValueError)
    assert issubclass(s.RowTypeError, s.RowError) and issubclass(s.RowTypeError, TypeError)
    assert issubclass(s.OptionError, s.SftmaskError) and issubclass(s.OptionError, ValueError)
    assert issubclass(s.OptionTypeError, s.OptionError) and issubclass(s.OptionTypeError, TypeError)
    assert issubclass(s.TokenizerError, s.SftmaskError) and issubclass(s.TokenizerError, ValueError)
    assert issubclass(s.InternalError, s.SftmaskError) and issubclass(s.InternalError, RuntimeError)
    assert issubclass(s.MissingTemplateWarning, UserWarning)
    for cls in (s.SftmaskError, s.RowError, s.OptionError, s.TokenizerError, s.MissingTemplateWarning):
        assert cls.__module__ == "sftmask" and cls.__doc__


@pytest.fixture(scope="module")
def qwen():
    return load_hf_tokenizer("qwen2")


def test_row_error_carries_row_position_and_reason(qwen):
    collator = sftmask.DataCollatorForCompletionOnlyLM(CHATML.response, tokenizer=qwen)
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    good = qwen.encode(render(CHATML, chat), add_special_tokens=False)
    with pytest.raises(sftmask.RowError) as info:
        collator([good, good, [*good[:3], len(qwen) + 7]])
    e = info.value
    assert (e.row, e.position) == (2, 3)
    assert str(e).startswith("row 2: ") and e.reason == str(e)[len("row 2: ") :]
    assert "not in the vocabulary" in e.reason

    with pytest.raises(sftmask.RowTypeError) as info:
        collator([good, [1, "x"]])
    assert (info.value.row, isinstance(info.value, TypeError)) == (1, True)

    strict = sftmask.DataCollatorForCompletionOnlyLM(CHATML.response, tokenizer=qwen, on_missing="error")
    with pytest.raises(sftmask.RowError) as info:
        strict([good, good[:4]])
    assert info.value.row == 1 and info.value.position is None

    with pytest.raises(sftmask.RowError) as info:
        sftmask.tokenize_and_mask(["fine", "\ud800"], qwen, CHATML.response)
    assert info.value.row == 1


def test_missing_templates_warn_with_their_own_category(qwen):
    collator = sftmask.DataCollatorForCompletionOnlyLM(CHATML.response, tokenizer=qwen)
    with pytest.warns(sftmask.MissingTemplateWarning, match="1 of 1 examples"):
        collator([[1, 2, 3]])
    with warnings.catch_warnings():
        warnings.simplefilter("error", sftmask.MissingTemplateWarning)
        with pytest.raises(sftmask.MissingTemplateWarning):
            sftmask.tokenize_and_mask(["no template here"], qwen, CHATML.response)


def test_stats_is_one_frozen_type_everywhere(qwen):
    text = render(CHATML, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    out, stats = sftmask.tokenize_and_mask(
        [text, "none"], qwen, CHATML.response, return_stats=True, on_missing="ignore"
    )
    assert isinstance(stats, sftmask.Stats) and (stats.rows, stats.missing_rows) == (2, [1])
    assert stats.trained_tokens == sum(label != -100 for row in out["labels"] for label in row)
    collator = sftmask.DataCollatorForCompletionOnlyLM(CHATML.response, tokenizer=qwen, on_missing="ignore")
    collator(out["input_ids"])
    assert isinstance(collator.stats, sftmask.Stats)
    assert (collator.stats.rows, collator.stats.examples, collator.stats.rows_without_template) == (2, 2, 1)
    assert collator.stats.missing_rows == [], "running totals keep counts, not row indices"
    with pytest.raises(AttributeError):
        collator.stats.rows = 5
    assert sftmask.CollatorStats is sftmask.Stats
    assert set(stats.as_dict()) >= {"rows", "tokens", "trained_tokens", "rows_truncated", "trained_fraction"}


# -- hostile calls to every entry point --------------------------------------------------------------------

HOSTILE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**80), 2**80),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.lists(st.one_of(st.integers(-(2**70), 2**70), st.none(), st.text(max_size=2)), max_size=4),
    st.lists(st.lists(st.integers(-5, 5), max_size=3), max_size=3),
    st.dictionaries(st.sampled_from(["input_ids", "labels", "token_type_ids", "x"]), st.integers(), max_size=3),
    st.sampled_from(
        [
            np.array([1.5]),
            np.array([[1, 2]]),
            np.array([2**64 - 1], dtype=np.uint64),
            np.array(["a"]),
            object(),
            math.inf,
            [{"input_ids": [1, 2], "labels": [1]}],
            [{"input_ids": [1, 2], "token_type_ids": [0]}],
        ]
    ),
)


def _entry_points():
    path = tokenizer_path("gpt2")
    vocab = sftmask.Vocab.from_file(path)
    masker = sftmask.Masker(vocab, "A:", pad_token_id=0)
    keep = sftmask.Masker(vocab, labels="keep", pad_token_id=0)
    encoder = sftmask.Encoder.from_json(path.read_text(encoding="utf-8"))
    collator = sftmask.DataCollatorForCompletionOnlyLM("A:", tokenizer=str(path), pad_token_id=0)
    return {
        "Vocab.from_json": lambda x: sftmask.Vocab.from_json(x),
        "Vocab.token_bytes": lambda x: vocab.token_bytes(x),
        "Vocab.is_added": lambda x: vocab.is_added(x),
        "Vocab.token_id": lambda x: vocab.token_id(x),
        "Vocab.text": lambda x: vocab.text(x),
        "Vocab.normalize": lambda x: vocab.normalize(x),
        "Masker.__new__ template": lambda x: sftmask.Masker(vocab, x),
        "Masker.__new__ options": lambda x: sftmask.Masker(vocab, "A:", pad_token_id=x, pad_to_multiple_of=x),
        "Masker.__new__ ignore_index": lambda x: sftmask.Masker(vocab, "A:", ignore_index=x, num_threads=x),
        "Masker.collate": lambda x: masker.collate(x),
        "Masker.collate row": lambda x: masker.collate([x]),
        "Masker.collate keep": lambda x: keep.collate([x]),
        "Masker.inspect": lambda x: masker.inspect(x),
        "Encoder.from_json": lambda x: sftmask.Encoder.from_json(x),
        "Encoder.encode_batch": lambda x: encoder.encode_batch(x),
        "Encoder.encode_batch threads": lambda x: encoder.encode_batch(["a"], num_threads=x),
        "_core.tokenize_and_mask": lambda x: sftmask._core.tokenize_and_mask(x, encoder, masker, max_length=x),
        "tokenize_and_mask": lambda x: sftmask.tokenize_and_mask(x, str(path), "A:"),
        "tokenize_and_mask template": lambda x: sftmask.tokenize_and_mask(["a"], str(path), x),
        "collator": lambda x: collator(x),
        "collator row": lambda x: collator([x]),
        "collator options": lambda x: sftmask.DataCollatorForCompletionOnlyLM("A:", tokenizer=str(path), train_on=x),
        "collator.render": lambda x: collator.render(x),
        "render": lambda x: sftmask.render(x, str(path), x),
    }


ENTRY_POINTS = _entry_points()


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
@settings(max_examples=60, deadline=None)
@given(value=HOSTILE)
def test_hostile_calls_raise_sftmask_errors_or_type_errors(name, value):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ENTRY_POINTS[name](value)
        except (sftmask.SftmaskError, TypeError):
            pass
        except BaseException as e:  # a PanicException derives from BaseException
            pytest.fail(f"{name}({value!r}) raised {type(e).__module__}.{type(e).__name__}: {e}")
