"""The collator's labels equal the ground truth of the masking rule, on real tokenizers.

Conversations are rendered in each family's chat format; the truth is computed on the original
string and mapped to tokens through the tokenizer's character offsets (tests/ground_truth.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from build_tokenizers import fixture_info
from chat_formats import FORMATS, PLAIN, render
from conftest import ROWS_CHECKED, load_tokenizer
from ground_truth import kept_text, truth_for
from sftmask import DataCollatorForCompletionOnlyLM

CHAT_FAMILIES = sorted(FORMATS)

# Message text: anything but the characters templates and special tokens are made of, so a
# message never contains a template by accident. Starts with a newline or a space often:
# that is where token-level matching breaks.
_ALPHABET = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="<>[]#|") | st.sampled_from(
    list("\n\n\t  😀你好é")
)
content = st.tuples(st.sampled_from(["", "", "\n", " ", "\n\n", "  ", "\t"]), st.text(_ALPHABET, max_size=40)).map(
    "".join
)


@st.composite
def conversations(draw, fmt, multi_turn=True, tools=True):
    messages = []
    if fmt.system and draw(st.booleans()):
        messages.append({"role": "system", "content": draw(content)})
    turns = draw(st.integers(1, 4 if multi_turn else 1))
    for _ in range(turns):
        messages.append({"role": "user", "content": draw(content)})
        messages.append({"role": "assistant", "content": draw(content)})
        if tools and fmt.tool_role and draw(st.integers(0, 3)) == 0:
            messages.append({"role": fmt.tool_role, "content": draw(content)})
            messages.append({"role": "assistant", "content": draw(content)})
    return messages


def pad_id(family: str) -> int:
    info = fixture_info(family)
    return info["pad_token_id"] if info["pad_token_id"] is not None else info["eos_token_id"]


def collator_for(family, fmt, *, instructions=True, **kw):
    return DataCollatorForCompletionOnlyLM(
        fmt.response,
        list(fmt.instructions) if instructions else None,
        tokenizer=load_tokenizer(family),
        pad_token_id=pad_id(family),
        return_tensors="np",
        on_missing="ignore",
        **kw,
    )


def rows_of(batch, n, family=None):
    """The unpadded label rows of a padded batch (counted for the run's summary)."""
    mask = batch["attention_mask"].astype(bool)
    ROWS_CHECKED[family or "?"] += n
    return [batch["labels"][i][mask[i]].tolist() for i in range(n)]


@pytest.mark.parametrize("family", CHAT_FAMILIES)
@given(data=st.data())
def test_multi_turn_matches_ground_truth(family, data):
    fmt = FORMATS[family]
    tok = load_tokenizer(family)
    chats = data.draw(st.lists(conversations(fmt), min_size=1, max_size=4))
    side = data.draw(st.sampled_from(["left", "right"]))
    collator = collator_for(family, fmt, padding_side=side)
    truths = [truth_for(tok, render(fmt, c), fmt) for c in chats]
    batch = collator([{"input_ids": ids} for ids, _ in truths])
    assert rows_of(batch, len(chats), family) == [labels for _, labels in truths]
    # Padding sits on the requested side.
    lengths = [len(ids) for ids, _ in truths]
    width = batch["input_ids"].shape[1]
    for i, n in enumerate(lengths):
        row_mask = batch["attention_mask"][i]
        expected = np.r_[np.zeros(width - n), np.ones(n)] if side == "left" else np.r_[np.ones(n), np.zeros(width - n)]
        assert row_mask.tolist() == expected.tolist()


@pytest.mark.parametrize("family", CHAT_FAMILIES)
@given(data=st.data())
def test_single_turn_without_instruction_template(family, data):
    """No instruction template: only the text after the last response template is trained."""
    fmt = FORMATS[family]
    tok = load_tokenizer(family)
    chats = data.draw(st.lists(conversations(fmt, multi_turn=data.draw(st.booleans())), min_size=1, max_size=3))
    collator = collator_for(family, fmt, instructions=False)
    truths = [truth_for(tok, render(fmt, c), fmt, instructions=False) for c in chats]
    batch = collator([{"input_ids": ids} for ids, _ in truths])
    assert rows_of(batch, len(chats), family) == [labels for _, labels in truths]


@pytest.mark.parametrize("family", CHAT_FAMILIES)
@given(data=st.data())
def test_train_on_last_turn(family, data):
    fmt = FORMATS[family]
    tok = load_tokenizer(family)
    chat = data.draw(conversations(fmt))
    collator = collator_for(family, fmt, train_on="last")
    ids, labels = truth_for(tok, render(fmt, chat), fmt, train_on="last")
    batch = collator([ids])
    assert rows_of(batch, 1, family) == [labels]


@pytest.mark.parametrize("family", CHAT_FAMILIES)
@given(data=st.data())
def test_truncated_rows(family, data):
    """Rows cut anywhere, also inside or before the response template."""
    fmt = FORMATS[family]
    tok = load_tokenizer(family)
    chat = data.draw(conversations(fmt))
    text = render(fmt, chat)
    n = len(tok.encode(text, add_special_tokens=False).ids)
    keep = data.draw(st.integers(0, n))
    ids, labels = truth_for(tok, text, fmt, keep=keep)
    collator = collator_for(family, fmt)
    batch = collator([ids, [1, 2, 3]])
    assert rows_of(batch, 1, family) == [labels]
    if fmt.response not in kept_text(tok, text, keep):
        assert all(label == -100 for label in labels)
        assert collator.stats.rows_without_template == 2  # this row and the [1, 2, 3] row


@pytest.mark.parametrize("family", CHAT_FAMILIES)
@given(data=st.data())
def test_padding_free_matches_ground_truth(family, data):
    fmt = FORMATS[family]
    tok = load_tokenizer(family)
    chats = data.draw(st.lists(conversations(fmt), min_size=1, max_size=4))
    collator = collator_for(family, fmt, padding_free=True)
    truths = [truth_for(tok, render(fmt, c), fmt) for c in chats]
    batch = collator([{"input_ids": ids} for ids, _ in truths])
    lengths = [len(ids) for ids, _ in truths]
    cu = np.r_[0, np.cumsum(lengths)]
    assert batch["cu_seq_lens_q"].tolist() == cu.tolist()
    assert batch["cu_seq_lens_q"].dtype == np.int32 and batch["cu_seq_lens_q"].ndim == 1
    assert batch["max_length_q"] == batch["max_length_k"] == max(lengths)
    assert batch["input_ids"].shape == (1, sum(lengths))
    flat_truth, flat_ids, positions = [], [], []
    for ids, labels in truths:
        flat_ids += ids
        flat_truth += ([-100, *labels[1:]]) if labels else []
        positions += list(range(len(ids)))
    assert batch["input_ids"][0].tolist() == flat_ids
    assert batch["labels"][0].tolist() == flat_truth
    ROWS_CHECKED[family] += len(truths)
    assert batch["position_ids"][0].tolist() == positions


@pytest.mark.parametrize("family", ["gpt2", "mistral_v1", "llama3", "qwen2"])
@given(data=st.data())
def test_plain_text_template_on_any_tokenizer(family, data):
    """TRL's documented ``### Assistant:`` template, on byte-level and Llama-2-style tokenizers."""
    tok = load_tokenizer(family)
    chats = data.draw(st.lists(conversations(PLAIN), min_size=1, max_size=3))
    collator = collator_for(family, PLAIN)
    truths = [truth_for(tok, render(PLAIN, c), PLAIN) for c in chats]
    batch = collator([{"input_ids": ids} for ids, _ in truths])
    assert rows_of(batch, len(chats), family) == [labels for _, labels in truths]


def test_ground_truth_is_not_trivial():
    """The truth used above trains something and masks something on a plain example."""
    fmt = FORMATS["llama3"]
    tok = load_tokenizer("llama3")
    text = render(fmt, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "\nHello"}])
    ids, labels = truth_for(tok, text, fmt)
    trained = [i for i, label in enumerate(labels) if label != -100]
    assert trained and len(trained) < len(ids)
    assert tok.decode([ids[i] for i in trained], skip_special_tokens=False).endswith("Hello<|eot_id|>")
