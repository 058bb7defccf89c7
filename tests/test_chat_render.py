"""The Rust chat-template renderer is byte-identical to transformers' on real templates.

Truth is transformers' own renderer (``render_jinja_template``, what
``tokenizer.apply_chat_template(tokenize=False)`` calls, with the special tokens passed as
``special_tokens_map`` passes them), run on every template of the corpus
(``fixtures/build_chat_templates.py``: llama.cpp's and TRL's templates) and every generated
conversation, with and without ``add_generation_prompt``.

* transformers renders: the Rust text must be equal, byte for byte.
* the template calls ``raise_exception(msg)``: Rust must raise too, with the same message.
* transformers fails otherwise (a missing kwarg, a Python error on our conversation): that
  case is skipped and listed in the summary printed at the end.

A template Rust cannot render at all ("unsupported": the caller falls back to transformers)
is allowed only where ``UNSUPPORTED`` names it with the reason.

Run as a script for the per-template table::

    python tests/test_chat_render.py
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))

from build_chat_templates import chat_templates, conversations, special_tokens

jinja2 = pytest.importorskip("jinja2")
chat_template_utils = pytest.importorskip("transformers.utils.chat_template_utils")

from sftmask import _core  # noqa: E402

#: Templates the Rust renderer cannot render, with why (these fall back to transformers).
UNSUPPORTED: dict[str, str] = {
    "llama_cpp/meetkai-functionary-medium-v3.1": "`'text'|safe + x`: Jinja2's Markup HTML-escapes x; minijinja cannot",
}

#: Template kwargs each conversation is also rendered with (besides none at all).
KWARGS: tuple[dict[str, Any], ...] = ({}, {"enable_thinking": False, "date_string": "26 Jul 2024"})

CONVERSATIONS = conversations(seed=0, count=60)
_TEMPLATES = chat_templates()
_SUMMARY: list[str] = []


def _truth(
    source: str, conv: dict[str, Any], special: dict[str, str], agp: bool, kwargs: dict[str, Any] | None = None
) -> tuple[str, str]:
    """transformers' rendering: ("ok", text), ("raised", message) or ("error", description)."""
    try:
        rendered, _ = chat_template_utils.render_jinja_template(
            conversations=[conv["messages"]],
            tools=conv["tools"],
            chat_template=source,
            add_generation_prompt=agp,
            # As apply_chat_template: {**special_tokens_map, **kwargs}.
            **{**special, **(kwargs or {})},
        )
        return "ok", rendered[0]
    except jinja2.TemplateError as e:
        # raise_exception raises the base class itself; Jinja's own errors are subclasses.
        if type(e) is jinja2.TemplateError:
            return "raised", str(e)
        return "error", f"{type(e).__name__}: {e}"
    except Exception as e:  # a Python error inside the template (e.g. TypeError in a filter)
        return "error", f"{type(e).__name__}: {e}"


def _rust(
    source: str, convs: list[dict[str, Any]], special: dict[str, str], agp: bool, kwargs: dict[str, Any] | None = None
) -> list[tuple[str, str]]:
    return _core.render_chat(
        source,
        json.dumps(convs),
        bos=special.get("bos_token"),
        eos=special.get("eos_token"),
        add_generation_prompt=agp,
        kwargs_json=json.dumps(kwargs or {}),
    )


def compare(name: str) -> dict[str, Any]:
    """Every conversation of the corpus through both renderers, for one template."""
    source = _TEMPLATES[name]
    special = special_tokens(name)
    counts: Counter[str] = Counter()
    mismatches: list[str] = []
    skipped: list[str] = []
    unsupported: list[str] = []
    for kwargs, agp in [(k, a) for k in KWARGS for a in (False, True)]:
        rust = _rust(source, CONVERSATIONS, special, agp, kwargs)
        for i, (conv, (kind, text)) in enumerate(zip(CONVERSATIONS, rust)):
            want_kind, want = _truth(source, conv, special, agp, kwargs)
            where = f"conversation {i}, add_generation_prompt={agp}, kwargs={kwargs}"
            if want_kind == "error":
                counts["skipped"] += 1
                skipped.append(f"{where}: {want[:120]}")
            elif kind == "unsupported":
                counts["unsupported"] += 1
                unsupported.append(f"{where}: {text[:200]}")
            elif (kind, text) == (want_kind, want):
                counts["identical" if kind == "ok" else "raised alike"] += 1
            else:
                counts["mismatch"] += 1
                mismatches.append(f"{where}: transformers {want_kind} {want!r}\n  rust {kind} {text!r}")
    return {
        "counts": counts,
        "mismatches": mismatches,
        "skipped": skipped,
        "unsupported": unsupported,
    }


@pytest.fixture(scope="module", autouse=True)
def _print_summary(request: pytest.FixtureRequest):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and _SUMMARY:
        reporter.write_line("")
        reporter.write_line("chat templates: cases transformers could not render (skipped):")
        for line in _SUMMARY:
            reporter.write_line("  " + line)


@pytest.mark.parametrize("name", sorted(_TEMPLATES))
def test_render_matches_transformers(name: str) -> None:
    result = compare(name)
    if result["skipped"]:
        _SUMMARY.append(f"{name}: {len(result['skipped'])} skipped, e.g. {result['skipped'][0]}")
    assert not result["mismatches"], "\n".join(result["mismatches"][:3])
    if name in UNSUPPORTED:
        assert result["unsupported"], f"{name} renders now: remove it from UNSUPPORTED"
    else:
        assert not result["unsupported"], "\n".join(result["unsupported"][:3])


def test_corpus_is_real() -> None:
    # Both archives were read, and the TRL training variants are there.
    assert sum(n.startswith("llama_cpp/") for n in _TEMPLATES) >= 60
    assert sum(n.startswith("trl/") and n.endswith("_training") for n in _TEMPLATES) >= 20


def test_raise_exception_and_limits() -> None:
    # A template's own raise_exception comes back as "raised" with its message, as transformers raises it.
    source = "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok"
    conv = [{"messages": [{"role": "system", "content": "x"}], "tools": None}]
    assert _truth(source, conv[0], {}, False) == ("raised", "first must be user")
    assert _rust(source, conv, {}, False) == [("raised", "first must be user")]
    # A template that renders gigabytes stops at the output limit; one that recurses without end
    # stops at minijinja's recursion limit (the loop budget is tested in Rust, with a small budget).
    [(kind, _)] = _rust("{% for i in range(100000) %}{{ 'x' * 10000 }}{% endfor %}", conv, {}, False)
    assert kind == "limit"
    [(kind, text)] = _rust("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", conv, {}, False)
    assert kind == "unsupported" and "recursion" in text


if __name__ == "__main__":
    totals: Counter[str] = Counter()
    for name in sorted(_TEMPLATES):
        r = compare(name)
        totals.update(r["counts"])
        c = r["counts"]
        status = "MISMATCH" if r["mismatches"] else ("UNSUPPORTED" if r["unsupported"] else "ok")
        print(f"{status:11} {name:60} {dict(c)}")
        for line in (r["mismatches"] + r["unsupported"])[:2]:
            print("    " + line.replace("\n", "\n    ")[:600])
    print(dict(totals))
