"""Assistant regions located in Rust equal the SPEC's rule computed here with transformers.

Truth (a) of issue 10: for assistant message ``i`` of the full rendering ``F``, the region
starts at the end of ``render(messages[:i], add_generation_prompt=True)`` and ends at the last
non-whitespace character of ``render(messages[:i+1])``, both prefixes of ``F`` (else the row
cannot be located exactly and is an error). This test computes that with transformers' own
renderer in Python and compares it with ``ChatTemplate::render_with_regions`` (byte offsets),
on every template and conversation of the corpus.

Truth (b), TRL's ``{% generation %}`` spans on its ``*_training`` templates, is reported by the
script mode (``python tests/test_chat_regions.py``), not asserted: TRL's spans differ from the
SPEC's rule at whitespace edges by design.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))

from build_chat_templates import chat_templates, conversations, special_tokens

jinja2 = pytest.importorskip("jinja2")
chat_template_utils = pytest.importorskip("transformers.utils.chat_template_utils")

from sftmask import _core  # noqa: E402

CONVERSATIONS = conversations(seed=1, count=30)
_TEMPLATES = chat_templates()

#: Strings that look like special tokens in a template's source: `<|x|>`, `<｜x｜>`, `<x_y>`,
#: `</s>`, `[INST]`... They only decide which end of turn is reported as a marker.
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


def rule_regions(
    render: Callable[[list[dict[str, Any]], bool], str], messages: list[dict[str, Any]], tokens: list[str]
):
    """The SPEC's rule with ``render(messages, add_generation_prompt)``: ("ok", (text, regions)) with
    regions ``(message index, start byte, end byte, marker)``, ("not_located", index) or ("error", why)."""
    try:
        full = render(messages, False)
    except Exception as e:  # transformers cannot render this conversation at all
        return "error", f"{type(e).__name__}: {e}"
    regions = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        try:
            prompt = render(messages[:i], True)
            turn = render(messages[: i + 1], False)
        except Exception:
            return "not_located", i
        if not (full.startswith(prompt) and full.startswith(turn)) or len(turn) < len(prompt):
            return "not_located", i
        segment = full[len(prompt) : len(turn)].rstrip()
        start = len(prompt.encode())
        ends_with = [t for t in tokens if segment.endswith(t)]
        marker = max(ends_with, key=len) if ends_with else None
        regions.append((i, start, start + len(segment.encode()), marker))
    return "ok", (full, regions)


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


def _trl_generation_report() -> None:
    """Truth (b): TRL's {% generation %} spans vs the regions, on the *_training templates."""
    for name in sorted(n for n in _TEMPLATES if n.endswith("_training")):
        counts: Counter[str] = Counter()
        for conv, (kind, text, regions) in zip(CONVERSATIONS, rust(name, CONVERSATIONS)):
            if kind != "ok":
                counts[kind] += 1
                continue
            special = special_tokens(name)
            try:
                _, spans = chat_template_utils.render_jinja_template(
                    conversations=[conv["messages"]],
                    tools=conv["tools"],
                    chat_template=_TEMPLATES[name],
                    return_assistant_tokens_mask=True,
                    **special,
                )
            except Exception:
                counts["transformers error"] += 1
                continue
            raw = text.encode()
            ours = (
                [raw[:s].decode().__len__() for _, s, _, _ in regions],
                [len(raw[:e].decode()) for _, _, e, _ in regions],
            )
            theirs = [(s, e) for s, e in spans[0] if e > s]
            mine = list(zip(*ours))
            same = len(mine) == len(theirs) and all(
                text[s1:e1].strip() == text[s2:e2].strip() for (s1, e1), (s2, e2) in zip(mine, theirs)
            )
            counts["equal modulo edge whitespace" if same else "different"] += 1
        print(f"{name:45} {dict(counts)}")


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
    _trl_generation_report()
