"""Prefix renders taken from one traced run equal the renders of the prefixes themselves.

Locating a conversation's turns (docs/masking.md rule 45) needs ``render(messages[:k],
add_generation_prompt)`` for every ``k``. Where a template has a plan (docs/chat-templates.md,
"Prefix renders") they are made from one traced full run, not one render per prefix
(``src/chat/prefix.rs``). Independent truth: transformers' own Jinja2 render of each prefix, on
every corpus template and generated conversation. The plans must also reach the templates the
benchmarks time (Qwen2.5, Llama-3.1).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))

from build_chat_templates import chat_templates, conversations, special_tokens

chat_template_utils = pytest.importorskip("transformers.utils.chat_template_utils")
jinja2 = pytest.importorskip("jinja2")

from sftmask import _core  # noqa: E402

CONVERSATIONS = conversations(seed=7, count=8)
_TEMPLATES = chat_templates()


def _template(name: str) -> Any:
    special = special_tokens(name)
    return _core.ChatTemplate(_TEMPLATES[name], bos_token=special.get("bos_token"), eos_token=special.get("eos_token"))


def _render(name: str, messages: list[dict[str, Any]], tools: Any, agp: bool) -> str | None:
    try:
        rendered, _ = chat_template_utils.render_jinja_template(
            conversations=[messages],
            tools=tools,
            chat_template=_TEMPLATES[name],
            add_generation_prompt=agp,
            **special_tokens(name),
        )
    except Exception:  # the template refuses this prefix (e.g. roles must alternate)
        return None
    return str(rendered[0])


@pytest.mark.parametrize("name", sorted(_TEMPLATES))
def test_prefix_renders_equal_the_prefix_rendered(name: str) -> None:
    template = _template(name)
    if template.unsupported:
        pytest.skip(f"the Rust renderer does not render this template: {template.unsupported}")
    checked = planned = 0
    for conv in CONVERSATIONS:
        try:
            renders = template.prefix_renders(json.dumps(conv))
        except ValueError:
            continue  # the full conversation (or a prefix) raises in the template
        for k, agp, text, from_trace in renders:
            want = _render(name, conv["messages"][:k], conv["tools"], agp)
            if want is None:
                continue
            assert text == want, (name, k, agp, from_trace)
            checked += 1
            planned += from_trace
    if template.prefix_renders_in_full is not None:
        assert planned == 0, name
    # A planned template serves from the trace the prefixes that do not part from the full run
    # before its loop (one that reads the last message or the length there has none).


@pytest.mark.parametrize("name", ["llama_cpp/Qwen-Qwen2.5-7B-Instruct", "llama_cpp/meta-llama-Llama-3.1-8B-Instruct"])
def test_the_benchmarked_templates_have_a_plan(name: str) -> None:
    template = _template(name)
    assert template.prefix_renders_in_full is None
    conv = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            *[{"role": role, "content": f"{role} says {i}"} for i in range(6) for role in ("user", "assistant")],
        ],
        "tools": None,
    }
    renders = template.prefix_renders(json.dumps(conv))
    assert all(from_trace for _, _, _, from_trace in renders)
    for k, agp, text, _ in renders:
        assert text == _render(name, conv["messages"][:k], None, agp)


def test_state_carried_from_turn_to_turn_is_put_back() -> None:
    # A namespace the loop writes is kept at each turn's start and put back in a run that
    # starts its loop at that turn; a macro that writes a namespace it is given gets no plan.
    counting = _core.ChatTemplate(
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{{ ns.n }}{{ m.content }}"
        "{% if loop.last %}.{% endif %}{% endfor %}{% if add_generation_prompt %}>{{ ns.n }}{% endif %}"
    )
    assert counting.prefix_renders_in_full is None
    conv = {"messages": [{"role": "user", "content": c} for c in "abcd"]}
    renders = counting.prefix_renders(json.dumps(conv))
    want = {
        (k, agp): "".join(f"{i + 1}{c}" for i, c in enumerate("abcd"[:k])) + "." + (f">{k}" if agp else "")
        for k in range(1, 5)
        for agp in (False, True)
    }
    assert {(k, agp): text for k, agp, text, _ in renders} == want
    assert all(planned for *_, planned in renders)
    given = _core.ChatTemplate(
        "{% macro bump(ns) %}{% set ns.n = ns.n + 1 %}{% endmacro %}{% set s = namespace(n=0) %}"
        "{% for m in messages %}{{ bump(s) }}{{ s.n }}{% endfor %}"
    )
    assert "macro" in given.prefix_renders_in_full
    assert [t for k, agp, t, p in given.prefix_renders(json.dumps(conv)) if not agp] == ["1", "12", "123", "1234"]


def test_plans_cover_most_of_the_corpus() -> None:
    """How many corpus templates get a plan (reported by ``python tests/test_prefix_renders.py``);
    the reasons the others do not are documented in docs/chat-templates.md."""
    rendered = [name for name in _TEMPLATES if not _template(name).unsupported]
    planned = [name for name in rendered if _template(name).prefix_renders_in_full is None]
    assert len(planned) >= len(rendered) // 2, (len(planned), len(rendered))


if __name__ == "__main__":
    from collections import Counter

    reasons: Counter[str] = Counter()
    for name in sorted(_TEMPLATES):
        t = _template(name)
        why = (t.unsupported and "not rendered in Rust") or t.prefix_renders_in_full or "planned"
        reasons[why] += 1
        print(f"{name:70} {why}")
    print()
    for why, n in reasons.most_common():
        print(f"{n:4}  {why}")
