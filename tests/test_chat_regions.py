"""Assistant regions located in Rust equal the SPEC's rule computed here with transformers.

Truth (a) of issue 10: the rule of docs/masking.md rule 45 (start: S1 the generation prompt is a
prefix, S2 the whole pieces of a prompt that opens a block, S3 renders compared without the parts
earlier turns leave out; end: E1 the message rendered last is a prefix, E2 the turn as written
when followed, or less an end-of-conversation suffix, E3 a turn the history rewrites by leaving
one part out), implemented independently in ``tests/region_rule.py`` and run with transformers' own
renderer. It is compared with ``ChatTemplate::render_with_regions`` (byte offsets) on every
template and conversation of the corpus.

Truth (b), transformers' ``return_assistant_tokens_mask`` on TRL's ``*_training`` templates, is
asserted on tokens in ``tests/test_messages.py``; the script mode here
(``python tests/test_chat_regions.py``) also prints per template how many conversations the
rule locates and why the others are not.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
sys.path.insert(0, str(Path(__file__).parent))

from build_chat_templates import chat_templates, conversations, special_tokens
from region_rule import rule_regions

jinja2 = pytest.importorskip("jinja2")
chat_template_utils = pytest.importorskip("transformers.utils.chat_template_utils")

from sftmask import _core  # noqa: E402

CONVERSATIONS = conversations(seed=1, count=30)
_TEMPLATES = chat_templates()

#: Strings that look like special tokens in a template's source: `<|x|>`, `<｜x｜>`, `<x_y>`,
#: `</s>`, `[INST]`... They decide which end of turn is reported as a marker, and where a
#: generation prompt may be cut into pieces (rule S2).
_TOKEN_RE = re.compile(r"<\|[^|<>\s]{1,40}\|>|<｜[^｜\s]{1,40}｜>|</?[a-z_]{1,30}>|\[/?[A-Z_]{2,30}\]|<[A-Z_]{3,40}>")


def token_strings(name: str) -> list[str]:
    found = set(_TOKEN_RE.findall(_TEMPLATES[name]))
    found.update(special_tokens(name).values())
    return sorted(found)


def _render(source: str, messages: list[dict[str, Any]], tools: Any, agp: bool, special: dict[str, str]) -> str:
    rendered, _ = chat_template_utils.render_jinja_template(
        conversations=[messages], tools=tools, chat_template=source, add_generation_prompt=agp, **special
    )
    return rendered[0]


def truth(name: str, conv: dict[str, Any]) -> tuple[str, Any]:
    """("ok", (text, regions)), ("not_located", message index) or ("error", why)."""
    source, special, tools = _TEMPLATES[name], special_tokens(name), conv["tools"]
    return rule_regions(
        lambda messages, agp: _render(source, messages, tools, agp, special), conv["messages"], token_strings(name)
    )


def rust(name: str, convs: list[dict[str, Any]]) -> list[tuple[str, str, list[Any]]]:
    special = special_tokens(name)
    template = _core.ChatTemplate(
        _TEMPLATES[name], bos_token=special.get("bos_token"), eos_token=special.get("eos_token")
    )
    return template.regions(json.dumps(convs), token_strings(name))


def compare(name: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for i, (conv, (kind, text, regions)) in enumerate(zip(CONVERSATIONS, rust(name, CONVERSATIONS))):
        want_kind, want = truth(name, conv)
        if want_kind == "error" or kind == "unsupported":
            counts["skipped"] += 1
            continue
        if want_kind == "not_located":
            assert kind == "not_located", f"{name} conversation {i}: Rust located {regions}, truth cannot"
            assert text.startswith(f"message {want}:"), (name, i, text)
            counts["not located (both)"] += 1
            continue
        assert kind == "ok", f"{name} conversation {i}: {kind} {text}"
        assert (text, [tuple(r) for r in regions]) == want, f"{name} conversation {i}"
        counts["conversations located"] += 1
        counts["regions"] += len(regions)
    return counts


@pytest.mark.parametrize("name", sorted(_TEMPLATES))
def test_regions_match_rule(name: str) -> None:
    compare(name)


def test_region_text_is_the_answer() -> None:
    # A hand-checked case: Qwen-2.5's region is the answer plus <|im_end|>, not the "\n" after it.
    name = "llama_cpp/Qwen-Qwen2.5-7B-Instruct"
    conv = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], "tools": None}
    [(kind, text, regions)] = rust(name, [conv])
    assert kind == "ok"
    [(message, start, end, marker)] = regions
    raw = text.encode()
    assert (message, raw[start:end].decode(), marker) == (1, "Hello!<|im_end|>", "<|im_end|>")
    assert raw[:start].decode().endswith("<|im_start|>assistant\n") and raw[end:].decode() == "\n"


if __name__ == "__main__":
    totals: Counter[str] = Counter()
    for name in sorted(_TEMPLATES):
        try:
            c = compare(name)
            status = "ok"
        except AssertionError as e:
            c, status = Counter(), f"FAIL {str(e)[:300]}"
        totals.update(c)
        print(f"{name:60} {status} {dict(c)}")
    print(dict(totals))


def _region_texts(name: str, messages: list[dict[str, Any]]) -> list[str]:
    [(kind, text, regions)] = rust(name, [{"messages": messages, "tools": None}])
    assert kind == "ok", text
    raw = text.encode()
    return [raw[s:e].decode() for _, s, e, _ in regions]


EXCHANGES = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!", "reasoning_content": "Greet back."},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4", "reasoning_content": "Add."},
]


def test_rewritten_history_hand_checked() -> None:
    # Qwen3 drops the reasoning of answers before the last question: the earlier region is the
    # answer as the text shows it (E3), the last one keeps its reasoning.
    assert _region_texts("trl/qwen3", EXCHANGES) == [
        "Hello!<|im_end|>",
        "<think>\nAdd.\n</think>\n\n4<|im_end|>",
    ]
    # DeepSeek-R1's prompt opens "<think>\n", which the text never continues with (S2): regions
    # start after <｜Assistant｜>.
    plain = [{k: v for k, v in m.items() if k != "reasoning_content"} for m in EXCHANGES]
    eos = "<｜end▁of▁sentence｜>"
    assert _region_texts("llama_cpp/deepseek-ai-DeepSeek-R1-Distill-Llama-8B", plain) == [f"Hello!{eos}", f"4{eos}"]
    # Phi-3 writes its eos after the last message only (E2): the earlier turn ends at <|end|>.
    assert _region_texts("trl/phi3", plain) == ["Hello!<|end|>", "4<|end|>\n<|endoftext|>"]
    # GPT-OSS ends the last answer with <|return|>, the others with <|end|> (E2).
    first, last = _region_texts("trl/gptoss", plain)
    assert (first, last) == ("<|channel|>final<|message|>Hello!<|end|>", "<|channel|>final<|message|>4<|return|>")
    # GPT-OSS writes a tool-calling turn's analysis until a final answer follows (S3): the answer
    # after the tool result is located once the call's turn, without its analysis, is.
    call = {"type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}
    tool_turn = [
        {"role": "user", "content": "1+2?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [call]},
        {"role": "tool", "content": "3"},
        {"role": "assistant", "content": "3."},
        {"role": "user", "content": "Sure?"},
        {"role": "assistant", "content": "Yes."},
    ]
    assert _region_texts("trl/gptoss", tool_turn) == [
        ' to=functions.add<|channel|>commentary json<|message|>{"a": 1, "b": 2}<|call|>',
        "<|channel|>final<|message|>3.<|end|>",
        "<|channel|>final<|message|>Yes.<|return|>",
    ]


def test_moved_part_is_not_located() -> None:
    # A template that writes an earlier answer's reasoning after the next question: the earlier
    # turn in the text is its last rendering with the reasoning left out, but the reasoning moved
    # rather than dropped, so the turn has no exact region.
    source = (
        "{% for m in messages %}"
        "{% if m.role == 'user' %}<u>{{ m.content }}"
        "{% if not loop.first %}{{ messages[loop.index0 - 1].reasoning_content }}{% endif %}"
        "{% elif loop.last %}<a><r>{{ m.reasoning_content }}</r>{{ m.content }}</a>"
        "{% else %}<a>{{ m.content }}</a>{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}<a>{% endif %}"
    )
    template = _core.ChatTemplate(source)
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "x", "reasoning_content": "why"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "y", "reasoning_content": "because"},
    ]
    tokens = ["<u>", "<a>", "</a>", "<r>", "</r>"]
    [(kind, text, _)] = template.regions(json.dumps([{"messages": messages, "tools": None}]), tokens)
    assert kind == "not_located" and "moved" in text, text
    # The same template with the reasoning dropped for good: located.
    dropped = source.replace("{{ messages[loop.index0 - 1].reasoning_content }}", "")
    [(kind, text, regions)] = _core.ChatTemplate(dropped).regions(
        json.dumps([{"messages": messages, "tools": None}]), tokens
    )
    assert kind == "ok", text
    raw = text.encode()
    assert [raw[s:e].decode() for _, s, e, _ in regions] == ["x</a>", "<r>because</r>y</a>"]
