"""Exact mode against TRL 0.19.1 where TRL is right, and each documented difference on purpose.

Where the template tokenizes the same in context (TRL finds it in every row), exact-mode labels
equal TRL's, except for the differences in docs/masking.md#differences-from-trl (the README's table),
each shown by a test below.
"""

from __future__ import annotations

import copy
import functools
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import sftmask
from chat_formats import CHATML, render
from conftest import load_hf_tokenizer

trl = pytest.importorskip("trl", reason="TRL 0.19.1 is the oracle; .ci/run installs it")

USER = CHATML.instructions[0]
words = st.text(st.sampled_from("abcdefgh ijk.,!?"), min_size=1, max_size=20).filter(lambda s: s[0] not in " \n")


@functools.cache
def tok(pad_is_eos: bool):
    t = copy.deepcopy(load_hf_tokenizer("qwen2"))
    if pad_is_eos:
        t.pad_token = t.eos_token
    return t


@st.composite
def chats(draw):
    messages = []
    for _ in range(draw(st.integers(1, 3))):
        messages += [{"role": "user", "content": draw(words)}, {"role": "assistant", "content": draw(words)}]
    return messages


def both(tokenizer, rows, instruction, **kw):
    examples = [{"input_ids": r} for r in rows]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        theirs = trl.DataCollatorForCompletionOnlyLM(CHATML.response, instruction, tokenizer=tokenizer, **kw)(examples)
    missed = [w for w in caught if "Could not find" in str(w.message)]
    ours = sftmask.DataCollatorForCompletionOnlyLM(CHATML.response, instruction, tokenizer=tokenizer, **kw)(examples)
    return theirs, ours, missed


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_equal_where_trl_finds_the_template(data):
    pad_is_eos = data.draw(st.booleans())
    tokenizer = tok(pad_is_eos)
    conversations = data.draw(st.lists(chats(), min_size=1, max_size=3))
    rows = [tokenizer.encode(render(CHATML, c), add_special_tokens=False) for c in conversations]
    instruction = data.draw(st.sampled_from([None, USER]))
    theirs, ours, missed = both(tokenizer, rows, instruction)
    assume(not missed)
    expected = theirs["labels"].clone()
    if pad_is_eos:
        # The one difference here: TRL masks every EOS because it equals the pad id.
        eos = tokenizer.eos_token_id
        real_eos = (theirs["input_ids"] == eos) & theirs["attention_mask"].bool()
        trained_in_ours = real_eos & (ours["labels"] == eos)
        assert (theirs["labels"][trained_in_ours] == -100).all()
        expected[trained_in_ours] = eos
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["attention_mask"], theirs["attention_mask"])
    assert torch.equal(ours["labels"], expected)


def test_difference_eos_when_pad_is_eos():
    tokenizer = tok(True)
    rows = [tokenizer.encode(render(CHATML, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]))]
    theirs, ours, _ = both(tokenizer, rows, None)
    eos_at = rows[0].index(tokenizer.eos_token_id, rows[0].index(tokenizer.eos_token_id) + 1)  # the answer's
    assert theirs["labels"][0, eos_at] == -100
    assert ours["labels"][0, eos_at] == tokenizer.eos_token_id


def test_difference_padding_free_shapes():
    tokenizer = tok(False)
    rows = [
        tokenizer.encode(render(CHATML, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b" * n}]))
        for n in (1, 5)
    ]
    examples = [{"input_ids": r, "attention_mask": [1] * len(r)} for r in rows]
    theirs = trl.DataCollatorForCompletionOnlyLM(CHATML.response, tokenizer=tokenizer, padding_free=True)(examples)
    ours = sftmask.DataCollatorForCompletionOnlyLM(CHATML.response, tokenizer=tokenizer, padding_free=True)(examples)
    assert theirs["cu_seq_lens_q"].shape == (1, 3) and ours["cu_seq_lens_q"].shape == (3,)
    assert torch.equal(theirs["cu_seq_lens_q"][0], ours["cu_seq_lens_q"])
    assert isinstance(theirs["max_length_q"], torch.Tensor) and theirs["max_length_q"].shape == (1,)
    assert isinstance(ours["max_length_q"], int) and ours["max_length_q"] == int(theirs["max_length_q"][0])
    for key in ("input_ids", "labels", "position_ids"):
        assert torch.equal(theirs[key], ours[key]), key


def test_difference_numpy_output_is_masked():
    tokenizer = tok(False)
    rows = [tokenizer.encode(render(CHATML, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]))]
    theirs = trl.DataCollatorForCompletionOnlyLM(CHATML.response, tokenizer=tokenizer)(
        [{"input_ids": r} for r in rows], return_tensors="np"
    )
    ours = sftmask.DataCollatorForCompletionOnlyLM(CHATML.response, tokenizer=tokenizer, return_tensors="np")(
        [{"input_ids": r} for r in rows]
    )
    assert (theirs["labels"] != -100).all(), "TRL's numpy path applies no completion mask"
    assert (ours["labels"] == -100).sum() > 0 and (ours["labels"] != -100).sum() > 0
    assert isinstance(ours["labels"], np.ndarray)


def test_difference_several_instruction_templates():
    """TRL takes one instruction template: tool output is trained. Exact mode takes a list."""
    tokenizer = tok(False)
    chat = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "call"},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "It is sunny."},
    ]
    ids = tokenizer.encode(render(CHATML, chat))
    theirs = trl.DataCollatorForCompletionOnlyLM(CHATML.response, USER, tokenizer=tokenizer)([ids])
    ours = sftmask.DataCollatorForCompletionOnlyLM(CHATML.response, list(CHATML.instructions), tokenizer=tokenizer)
    their_text = tokenizer.decode([i for i, label in zip(ids, theirs["labels"][0].tolist()) if label != -100])
    assert "sunny<|im_end|>" in their_text.split("It is")[0], "TRL trains the tool's output"
    assert ours.trained_text(ids) == ["call<|im_end|>\n", "It is sunny.<|im_end|>\n"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_per_token_keys_pass_through_as_trl_pads_them(data):
    """token_type_ids come back padded exactly as TRL 0.19.1's parent pads them (special_tokens_mask,
    which TRL's parent consumes, is dropped by both); padding-free flattens them with the ids
    (TRL leaves them [B, L], a documented difference: docs/masking.md#extra-keys)."""
    tokenizer = copy.deepcopy(tok(False))
    tokenizer.padding_side = data.draw(st.sampled_from(["right", "left"]))
    conversations = data.draw(st.lists(chats(), min_size=1, max_size=3))
    rows = [tokenizer.encode(render(CHATML, c), add_special_tokens=False) for c in conversations]
    examples = [
        {
            "input_ids": r,
            "token_type_ids": data.draw(st.lists(st.integers(0, 1), min_size=len(r), max_size=len(r))),
            "special_tokens_mask": [0] * len(r),
        }
        for r in rows
    ]
    kw = {"tokenizer": tokenizer, "pad_to_multiple_of": data.draw(st.sampled_from([None, 8]))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = trl.DataCollatorForCompletionOnlyLM(CHATML.response, USER, **kw)(copy.deepcopy(examples))
    ours = sftmask.DataCollatorForCompletionOnlyLM(CHATML.response, USER, **kw)(examples)
    assert set(ours) == set(theirs) == {"input_ids", "attention_mask", "labels", "token_type_ids"}
    assert ours["token_type_ids"].dtype == theirs["token_type_ids"].dtype == torch.int64
    assert torch.equal(ours["token_type_ids"], theirs["token_type_ids"])
    assert torch.equal(ours["input_ids"], theirs["input_ids"])

    flat = sftmask.DataCollatorForCompletionOnlyLM(CHATML.response, USER, tokenizer=tokenizer, padding_free=True)
    out = flat(examples)
    assert out["token_type_ids"].shape == out["input_ids"].shape
    assert out["token_type_ids"][0].tolist() == [t for e in examples for t in e["token_type_ids"]]
