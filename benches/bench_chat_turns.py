#!/usr/bin/env python3
"""What locating assistant regions costs as conversations grow: render alone vs render + locate.

Locating assistant message ``i`` needs prefixes of the conversation rendered (docs/masking.md rule
45): ``render(messages[:i], add_generation_prompt=True)`` and ``render(messages[:i+1])`` when both
are prefixes of the full rendering, a few more for a turn the history rewrites (Qwen3 drops
earlier reasoning). Rendered one by one, each costs time linear in its length, so a conversation
of ``n`` turns costs about ``n`` full renders; taken from one traced run (a template's prefix
plan, docs/chat-templates.md "Prefix renders"), about two. This bench measures both, on 1 to 64
turns: Qwen2.5 and Llama-3.1 have every prefix served by their plan, Qwen3 (whose code before its
loop scans the whole conversation) none.

Data: a system prompt, then ``turns`` exchanges (a user question, an answer of ~40 words with a
``reasoning_content`` field), the same text in every run. Templates: Qwen2.5-7B-Instruct,
Llama-3.1-8B-Instruct and Qwen3-0.6B from the test corpus (``tests/fixtures/
build_chat_templates.py``). Timing: ``sftmask._core.ChatTemplate.render`` (the full rendering
only) and ``.regions`` (the full rendering and every assistant region), one thread, best of
``--repeat`` over a batch of ``--rows`` conversations, in milliseconds per conversation.

``--json PATH`` saves the figures; ``--before PATH`` adds a saved run (e.g. of an older build) as
columns. Writes a section into ``benches/RESULTS.md`` unless ``--no-write``.

Usage::

    python benches/bench_chat_turns.py --no-write --json /tmp/before.json   # on the old build
    python benches/bench_chat_turns.py --before /tmp/before.json            # on the new one
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))

from results_md import write_section  # noqa: E402

import sftmask  # noqa: E402
from build_chat_templates import chat_templates, special_tokens  # noqa: E402
from sftmask import _core  # noqa: E402

TEMPLATES = {
    "Qwen2.5": "llama_cpp/Qwen-Qwen2.5-7B-Instruct",
    "Llama-3.1": "llama_cpp/meta-llama-Llama-3.1-8B-Instruct",
    "Qwen3": "llama_cpp/Qwen-Qwen3-0.6B",
}
TOKENS = ["<|im_start|>", "<|im_end|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<think>", "</think>"]
TURNS = (1, 4, 16, 64)


def conversation(turns: int) -> dict:
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    for t in range(turns):
        messages.append({"role": "user", "content": f"Question {t}: what is {t} plus {t}, and why?"})
        messages.append(
            {
                "role": "assistant",
                "content": f"{t} plus {t} is {2 * t}. " + "Adding a number to itself doubles it. " * 5,
                "reasoning_content": f"The user asks for {t}+{t}; that is {2 * t}.",
            }
        )
    return {"messages": messages, "tools": None}


def best(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(rows: int, repeat: int) -> dict:
    corpus = chat_templates()
    out: dict = {}
    for label, name in TEMPLATES.items():
        special = special_tokens(name)
        template = _core.ChatTemplate(
            corpus[name], bos_token=special.get("bos_token"), eos_token=special.get("eos_token")
        )
        in_full = _core.ChatTemplate(
            corpus[name],
            bos_token=special.get("bos_token"),
            eos_token=special.get("eos_token"),
            prefix_plan=False,
        )
        for turns in TURNS:
            batch = json.dumps([conversation(turns)] * rows)
            render = best(lambda t=template, b=batch: t.render(b), repeat) / rows
            locate = best(lambda t=template, b=batch: t.regions(b, TOKENS), repeat) / rows
            locate_full = best(lambda t=in_full, b=batch: t.regions(b, TOKENS), repeat) / rows
            [(kind, _, regions)] = template.regions(json.dumps([conversation(turns)]), TOKENS)
            assert in_full.regions(json.dumps([conversation(turns)]), TOKENS) == [(kind, _, regions)]
            out[f"{label}/{turns}"] = {
                "render_ms": render * 1e3,
                "locate_ms": locate * 1e3,
                "locate_full_ms": locate_full * 1e3,
                "located": f"{len(regions)}/{turns}" if kind == "ok" else kind,
            }
            print(
                f"{label:10} {turns:3} turns: render {render * 1e3:8.3f} ms, locate {locate * 1e3:8.3f} ms, "
                f"prefixes in full {locate_full * 1e3:8.3f} ms, {kind}"
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--before", type=Path)
    parser.add_argument("--before-label", default="an earlier build", help="what --before measured")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    now = measure(args.rows, args.repeat)
    if args.json:
        args.json.write_text(json.dumps(now, indent=1))
    before = json.loads(args.before.read_text()) if args.before else None

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    lines = [
        "## Locating regions as conversations grow (`benches/bench_chat_turns.py`)",
        "",
        f"- {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared), one thread; "
        f"sftmask {sftmask.__version__} at {commit.strip()}, release build. On a shared machine the "
        "figures of two runs differ by up to 2x: read the ratios and how they grow, not the digits.",
        f"- A system prompt and N exchanges (answers of ~40 words with `reasoning_content`); best of "
        f"{args.repeat} over {args.rows} conversations, ms per conversation. render: the full rendering alone; "
        "locate: the full rendering and every assistant region (`ChatTemplate.regions`), the prefix renders "
        'taken from one traced run where the template has a plan (docs/chat-templates.md, "Prefix renders"); '
        "in full: the same with every prefix rendered (`prefix_plan=False`, as before plans; same regions, "
        "asserted).",
    ]
    if before:
        lines.append(f"- before: the same run on {args.before_label}.")
    lines.append("")
    head = (
        "| template | turns | render ms | locate ms | locate / render | in full: locate ms | in full / locate "
        "| located |"
    )
    rule = "|---|---|---|---|---|---|---|---|"
    if before:
        head += " before: locate ms | before: located |"
        rule += "---|---|"
    lines += [head, rule]
    for key, row in now.items():
        label, turns = key.split("/")
        line = (
            f"| {label} | {turns} | {row['render_ms']:.3f} | {row['locate_ms']:.3f} | "
            f"{row['locate_ms'] / row['render_ms']:.1f}x | {row['locate_full_ms']:.3f} | "
            f"{row['locate_full_ms'] / row['locate_ms']:.1f}x | {row['located']} |"
        )
        if before and key in before:
            line += f" {before[key]['locate_ms']:.3f} | {before[key]['located']} |"
        lines.append(line)
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_section("bench_chat_turns", text)


if __name__ == "__main__":
    main()
