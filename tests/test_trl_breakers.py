"""The cases that break TRL 0.19.1's collator, run against TRL itself and against sftmask.

TRL tokenizes the template alone and looks for those ids in the example; context-dependent
tokenization hides the template, and the whole example silently drops out of the loss.
sftmask must give the ground-truth labels in every case.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import sftmask
from build_tokenizers import fixture_info
from chat_formats import FORMATS, PLAIN, render
from conftest import load_hf_tokenizer, load_tokenizer
from ground_truth import truth_for

trl = pytest.importorskip("trl", reason="TRL 0.19.1 is the oracle; .ci/run installs it")

LLAMA3 = FORMATS["llama3"]


def trl_labels(tokenizer, response, instruction, rows):
    had_pad = tokenizer.pad_token is not None
    if not had_pad:  # TRL's tokenizer.pad refuses to run without one, even for a single row
        tokenizer.pad_token = tokenizer.eos_token
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            collator = trl.DataCollatorForCompletionOnlyLM(response, instruction, tokenizer=tokenizer, mlm=False)
            batch = collator([{"input_ids": r} for r in rows])
    finally:
        if not had_pad:
            tokenizer.pad_token = None
    missed = [w for w in caught if "Could not find" in str(w.message)]
    return batch["labels"], missed


def ours(family, fmt, rows, instructions=True, **kw):
    tok = load_hf_tokenizer(family)
    collator = sftmask.DataCollatorForCompletionOnlyLM(
        fmt.response, list(fmt.instructions) if instructions else None, tokenizer=tok, on_missing="error", **kw
    )
    return collator, collator([{"input_ids": r} for r in rows])


@pytest.mark.parametrize("answer", ["\nHello there.", "\n\n```python\nx = 1\n```", "\n- a\n- b"])
def test_llama3_response_starting_with_newline(answer):
    tok = load_tokenizer("llama3")
    text = render(LLAMA3, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": answer}])
    ids, truth = truth_for(tok, text, LLAMA3, instructions=False)

    labels, missed = trl_labels(load_hf_tokenizer("llama3"), LLAMA3.response, None, [ids])
    assert missed, "TRL finds the template here; this case would not show the bug"
    assert (labels == -100).all(), "TRL drops the whole example"

    collator, batch = ours("llama3", LLAMA3, [ids], instructions=False)
    assert batch["labels"][0].tolist() == truth
    trained = collator.trained_text(ids)
    assert len(trained) == 1 and trained[0].endswith(answer + "<|eot_id|>")


def test_llama3_multi_turn_official_header():
    """Multi-turn chats where some turns start with a newline: TRL drops rows, sftmask trains
    every assistant turn."""
    tok = load_tokenizer("llama3")
    chats = [
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Code?"},
            {"role": "assistant", "content": "\n```\nprint(1)\n```"},
            {"role": "user", "content": "Thanks"},
            {"role": "assistant", "content": "You're welcome."},
        ],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
    ]
    rows, truths = zip(*(truth_for(tok, render(LLAMA3, c), LLAMA3) for c in chats))
    labels, _ = trl_labels(load_hf_tokenizer("llama3"), LLAMA3.response, LLAMA3.instructions[0], list(rows))
    # TRL never sees the first turn's header, so the first answer is not trained.
    first_answer = next(i for i, t in enumerate(truths[0]) if t != -100)
    assert labels[0][first_answer] == -100
    assert labels[0][: len(rows[0])].tolist() != list(truths[0])
    _, batch = ours("llama3", LLAMA3, list(rows))
    mask = batch["attention_mask"].bool()
    assert [batch["labels"][i][mask[i]].tolist() for i in range(2)] == list(truths)


@pytest.mark.parametrize("family", ["mistral_v1", "gpt2"])
def test_plain_text_template(family):
    """TRL's own docs' ``### Assistant:`` template with a Llama-2-style tokenizer."""
    tok = load_tokenizer(family)
    text = render(
        PLAIN,
        [
            {"role": "user", "content": " What is 2+2?"},
            {"role": "assistant", "content": " 4"},
            {"role": "user", "content": " And 3+3?"},
            {"role": "assistant", "content": " 6"},
        ],
    )
    ids, truth = truth_for(tok, text, PLAIN)
    if family == "mistral_v1":
        labels, missed = trl_labels(load_hf_tokenizer(family), PLAIN.response, PLAIN.instructions[0], [ids])
        assert missed and (labels == -100).all(), "TRL misses '▁###' vs '##','#' (trl#598)"
    info = fixture_info(family)
    _, batch = ours(family, PLAIN, [ids], pad_token_id=info["pad_token_id"] or info["eos_token_id"])
    assert batch["labels"][0].tolist() == truth


def test_pad_equal_to_eos_keeps_eos_trained():
    """GPT-2 has no pad token; padding with EOS must not erase the EOS labels (trl#976)."""
    hf = load_hf_tokenizer("gpt2")
    eos = hf.eos_token_id
    fmt = PLAIN
    text = render(fmt, [{"role": "user", "content": " Hi"}, {"role": "assistant", "content": " Bye<|endoftext|>"}])
    ids, truth = truth_for(load_tokenizer("gpt2"), text, fmt, instructions=False)
    assert eos in ids and truth[ids.index(eos)] == eos

    hf.pad_token = hf.eos_token
    try:
        labels, _ = trl_labels(hf, fmt.response, None, [ids, ids[:5]])
        assert labels[0][ids.index(eos)] == -100, "TRL masks every EOS when pad == eos"
        collator = sftmask.DataCollatorForCompletionOnlyLM(fmt.response, tokenizer=hf, on_missing="ignore")
        batch = collator([{"input_ids": ids}, {"input_ids": ids[:5]}])
    finally:
        hf.pad_token = None
    assert batch["labels"][0].tolist() == truth
    assert batch["labels"][0][ids.index(eos)] == eos
    # The padding of the short row is masked by position, not by id.
    assert (batch["labels"][1][5:] == -100).all()
    assert torch.equal(batch["input_ids"][1][5:], torch.full((len(ids) - 5,), eos))
