"""Collator markers derived from real chat templates (sftmask.chat_markers)."""

from __future__ import annotations

import functools
import json
import pickle
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from transformers import PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
sys.path.insert(0, str(Path(__file__).parent))

import sftmask
from build_chat_templates import chat_templates, conversations, special_tokens
from region_rule import rule_regions
from test_chat_regions import token_strings

TEMPLATES = chat_templates()

#: Gemma 4's asymmetric tokens (`<|turn>`, `<turn|>`, `<|"|>`), which token_strings leaves out.
_ASYMMETRIC_RE = re.compile(r'<\|[a-z_"]{1,30}>|<[a-z_"]{1,30}\|>')


def fixture_tokens(name: str) -> list[str]:
    """The strings that are added tokens of the template's fixture tokenizer."""
    return sorted(set(token_strings(name)) | set(_ASYMMETRIC_RE.findall(TEMPLATES[name])))


def fixture_tokenizer(name: str):
    """GPT-2's vocabulary with the template's special tokens as added tokens, and the template."""
    special = special_tokens(name)
    tok = _tokenizer_with(tuple(fixture_tokens(name)), tuple(sorted(special.items())))
    tok.chat_template = TEMPLATES[name]  # templates with the same tokens share one tokenizer
    return tok


@functools.cache
def _tokenizer_with(tokens: tuple[str, ...], special: tuple[tuple[str, str], ...]):
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    from conftest import load_tokenizer

    tok = PreTrainedTokenizerFast(tokenizer_object=load_tokenizer("gpt2"))  # a copy
    added = [AddedToken(t, special=True, normalized=False) for t in tokens]
    tok.add_special_tokens({"additional_special_tokens": added, "pad_token": "<|sftmask_pad|>", **dict(special)})
    return tok


CONVERSATIONS = conversations(seed=3, count=24)

#: Templates chat_markers cannot derive markers for, with why (the OptionError says so too).
NOT_DERIVABLE: dict[str, str] = {
    "llama_cpp/CohereForAI-c4ai-command-r-plus-tool_use": "raises on every probe ('NoneType' object is not iterable)",
    "llama_cpp/fireworks-ai-llama-3-firefunction-v2": "needs a `functions` template kwarg the probes cannot guess",
}


def _strings(value: Any) -> list[str]:
    """Every string inside a message (content, parts, reasoning, tool-call arguments)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)] + [json.dumps(value)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def quotes_a_marker(messages: list[dict[str, Any]], markers: sftmask.ChatMarkers) -> bool:
    """Exception 3: some message's text holds a marker (a user quoting "<|im_start|>assistant\\n")."""
    wanted = [markers.response_template, *markers.instruction_templates]
    return any(m in s for message in messages for s in _strings(message) for m in wanted)


def compare(name: str, convs: list[dict[str, Any]] = CONVERSATIONS) -> Counter[str]:
    """Collator labels (markers derived from the template) against the region rule, per token.

    A differing token is allowed only where markers cannot know (docs/chat-templates.md, rule 17):
    (1) "separator": trained by the collator, not by the rule, and it starts in the whitespace
        that directly follows a region's end (the "\\n" after <|im_end|>): marker mode trains up
        to the next header;
    (2) "tool answer": trained by the rule, not by the collator, inside the region of an answer
        that directly follows a tool message and has no response template right before it;
    (3) "quotes a marker": any difference in a conversation some message of which holds one of
        the marker strings (such conversations are counted, not compared);
    (4) "reasoning opener": trained by the collator, not by the rule, in the part of the
        generation prompt past the response template, right before a region (the prompt opens
        "<think>" that answers write only sometimes; the response template is what all share);
    (5) "marker inside a region": trained by the rule, not by the collator, inside an occurrence
        of a marker string that starts inside a region (channel headers the model writes itself,
        GPT-OSS-style "<|start|>assistant"; GLM's end of turn, the next "<|user|>").
    Any other difference fails the test.
    """
    tok = fixture_tokenizer(name)
    counts: Counter[str] = Counter()
    markers = sftmask.chat_markers(tok)
    collator = sftmask.DataCollatorForCompletionOnlyLM(tokenizer=tok, return_tensors="np", on_missing="ignore")
    assert collator.chat_markers == markers
    response = markers.response_template
    wanted = [response, *markers.instruction_templates]
    # What the generation prompt holds past the response template (an opened "<think>").
    gp = markers.generation_prompt
    opener = gp[len(response) :] if gp.startswith(response) else ""
    for index, conv in enumerate(convs):
        messages, tools = conv["messages"], conv["tools"]

        def render(msgs: list[dict[str, Any]], agp: bool, tools: Any = tools) -> str:
            return tok.apply_chat_template(msgs, tools=tools, tokenize=False, add_generation_prompt=agp)

        # The plain prefix rule (S1/E1): the exceptions below are those of conversations whose
        # turns are prefixes; turns located in rewritten history (S2, E2, E3) are not compared.
        kind, value = rule_regions(render, messages, fixture_tokens(name), extended=False)
        if kind != "ok":
            counts[f"rule: {kind}"] += 1
            continue
        full, regions = value
        raw = full.encode()
        spans = [(i, len(raw[:s].decode()), len(raw[:e].decode())) for i, s, e, _ in regions]
        enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        if not ids:
            continue
        truth = [any((a < e and b > s) if a < b else s <= a < e for _, s, e in spans) for a, b in offsets]
        got = [int(v) != -100 for v in collator([ids])["labels"][0]]
        counts["tokens"] += len(ids)
        counts["trained (rule)"] += sum(truth)
        if got == truth:
            counts["conversations equal"] += 1
            continue
        if quotes_a_marker(messages, markers):
            counts["conversations quoting a marker"] += 1
            continue
        unexplained = []
        occurrences = [(o.start(), m) for m in wanted for o in re.finditer(re.escape(m), full)]
        for t, ((a, b), want, have) in enumerate(zip(offsets, truth, got)):
            if want == have:
                continue
            if have and any(e <= a and not full[e:a].strip() and full[a:b][:1].isspace() for _, _, e in spans):
                counts["tokens: separator"] += 1
            elif want and any(
                s <= a < e and i > 0 and messages[i - 1].get("role") == "tool" and not full[:s].endswith(response)
                for i, s, e in spans
            ):
                counts["tokens: tool answer"] += 1
            elif have and any(
                s - len(opener) <= a < s and full[:s].endswith(markers.generation_prompt) for _, s, _ in spans
            ):
                counts["tokens: reasoning opener"] += 1
            elif want and any(o <= a < o + len(m) and any(s <= o < e for _, s, e in spans) for o, m in occurrences):
                counts["tokens: marker inside a region"] += 1
            else:
                unexplained.append((t, full[a:b], want, have))
        if unexplained:
            counts["conversations different"] += 1
            assert not unexplained, (
                f"{name} conversation {index}: markers {markers.response_template!r} "
                f"{markers.instruction_templates!r}; tokens (index, text, rule, collator) {unexplained[:6]}\n{full!r}"
            )
        counts["conversations equal modulo exceptions"] += 1
    return counts


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_collator_labels_match_the_rule(name: str) -> None:
    if name in NOT_DERIVABLE:
        with pytest.raises(sftmask.OptionError, match="pass response_template="):
            sftmask.chat_markers(fixture_tokenizer(name))
        return
    compare(name)


if __name__ == "__main__":
    totals: Counter[str] = Counter()
    for name in sorted(TEMPLATES):
        if name in NOT_DERIVABLE:
            print(f"{name:60} not derivable: {NOT_DERIVABLE[name]}")
            continue
        try:
            c = compare(name)
            status = "ok"
        except Exception as e:
            c, status = Counter(), f"FAIL {type(e).__name__}: {str(e)[:600]}"
        totals.update(c)
        print(f"{name:60} {status} {dict(c)}")
    print(dict(totals))


# -- the collator without templates, and hostile input ------------------------------------------


def test_collator_uses_the_markers_and_pickles() -> None:
    tok = fixture_tokenizer("trl/llama3_1")
    collator = sftmask.DataCollatorForCompletionOnlyLM(tokenizer=tok, return_tensors="np")
    assert collator.response_template == "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert "<|start_header_id|>user<|end_header_id|>\n\n" in collator.instruction_template
    chat = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Bye!"},
    ]
    ids = tok.apply_chat_template(chat, tokenize=True)
    assert collator.trained_text(ids) == ["Hello!<|eot_id|>", "Bye!<|eot_id|>"]
    restored = pickle.loads(pickle.dumps(collator))
    assert restored.chat_markers == collator.chat_markers
    assert (restored([ids])["labels"] == collator([ids])["labels"]).all()
    # TRL's own mode takes the templates it would be given, never derived ones.
    with pytest.raises(sftmask.OptionError, match="compat='exact'"):
        sftmask.DataCollatorForCompletionOnlyLM(tokenizer=tok, compat="trl")


def test_no_chat_template_names_both_ways_out(tok_path: str) -> None:
    tok = PreTrainedTokenizerFast(tokenizer_file=tok_path, pad_token="<pad>")
    assert tok.chat_template is None
    for given in (tok, tok_path):
        with pytest.raises(sftmask.OptionError) as e:
            sftmask.DataCollatorForCompletionOnlyLM(tokenizer=given)
        assert "response_template=" in str(e.value) and "tokenize_and_mask" in str(e.value)
        assert "chat_template" in str(e.value)
    with pytest.raises(sftmask.OptionError, match="no chat template"):
        sftmask.chat_markers(tok)
    with pytest.raises(sftmask.OptionError, match="needs a transformers tokenizer"):
        sftmask.chat_markers(tok_path)
    # Given templates (or labels="keep") need no chat template.
    sftmask.DataCollatorForCompletionOnlyLM("Bot:", tokenizer=tok)
    sftmask.DataCollatorForCompletionOnlyLM(tokenizer=tok, labels="keep")


def test_template_that_raises_on_the_probes(tok_path: str) -> None:
    tok = PreTrainedTokenizerFast(tokenizer_file=tok_path, pad_token="<pad>")
    tok.chat_template = "{{ raise_exception('this template refuses everything') }}"
    with pytest.raises(sftmask.OptionError, match=r"this template refuses everything.*pass response_template="):
        sftmask.chat_markers(tok)
    with pytest.raises(sftmask.OptionError, match="this template refuses everything"):
        sftmask.DataCollatorForCompletionOnlyLM(tokenizer=tok)
    # A template that raises only on system and tool messages still gives user/assistant markers.
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}"
        "{{ raise_exception('only user and assistant') }}{% endif %}"
        "<|u|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|u|>assistant: {% endif %}"
    )
    markers = sftmask.chat_markers(tok)
    assert (markers.response_template, markers.instruction_templates) == ("<|u|>assistant: ", ("<|u|>user: ",))
    assert any("system" in n and "only user and assistant" in n for n in markers.notes)
    # A template that writes nothing between a question and its answer has no response template.
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(sftmask.OptionError, match="no response template to search for"):
        sftmask.chat_markers(tok)
    with pytest.raises(sftmask.OptionError, match="sets add_generation_prompt itself"):
        sftmask.chat_markers(tok, add_generation_prompt=True)


def test_template_kwargs_reach_the_template() -> None:
    tok = fixture_tokenizer("trl/qwen3")
    assert sftmask.chat_markers(tok).generation_prompt == "<|im_start|>assistant\n"
    no_think = sftmask.chat_markers(tok, enable_thinking=False)
    assert no_think.generation_prompt == "<|im_start|>assistant\n<think>\n\n</think>\n\n"
