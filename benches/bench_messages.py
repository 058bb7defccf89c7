#!/usr/bin/env python3
"""Conversations -> ``input_ids`` + ``labels``: sftmask against the floor and against transformers.

Data: 2,000 Qwen2.5 conversations from the test corpus generator (``tests/fixtures/
build_chat_templates.py``: 1-4 exchanges, system prompts, reasoning fields, Unicode, quoted
headers), text contents only (Qwen2.5's template cannot render content parts) and no tools
(transformers takes one tools list per call). Tokenizer: the real Qwen2 tokenizer of the test
fixtures (151,665 ids) with Qwen2.5-7B-Instruct's chat template.

Methods, all producing token ids of the same rendered texts:

* ``floor``: ``tokenizers.Tokenizer.encode_batch`` of the texts already rendered (by transformers,
  outside the timing), ``add_special_tokens=False``: tokenizing alone, no rendering, no labels.
* ``sftmask``: ``sftmask.tokenize_and_mask(batch, tokenizer)``: render in Rust (every conversation,
  plus the prefix renders that locate each assistant message), tokenize, label.
* ``sftmask, engine='tokenizers'``: the same with the `tokenizers` crate instead of the fast
  path (same rows, checked).
* ``transformers``: ``tokenizer.apply_chat_template(conversations, tokenize=True, return_dict=True,
  return_assistant_tokens_mask=True, chat_template=TRL's qwen2_5_training template)``, the
  labels TRL 1.x's ``assistant_only_loss`` builds on.

Threads: ``RAYON_NUM_THREADS`` (default: all CPUs) for both the floor and sftmask. Timing: best of
``--repeat`` runs for floor and sftmask (after one warm-up call each), a single run for
transformers. Writes a section into ``benches/RESULTS.md`` unless ``--no-write``.

Usage::

    python benches/bench_messages.py
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))

from results_md import write_section  # noqa: E402

from build_chat_templates import chat_templates, conversation  # noqa: E402
from build_tokenizers import tokenizer_path  # noqa: E402

SECTION = "## Conversations: messages -> input_ids + labels (issue 10)"


def make_conversations(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    while len(out) < n:
        c = conversation(rng)
        # One tools list per batch call in transformers: keep the conversations without tools.
        if (
            c["tools"] is None
            and all(isinstance(m["content"], str) for m in c["messages"])
            and any(m["role"] == "assistant" for m in c["messages"])
        ):
            out.append(c)
    return out


def best(fn: Any, repeat: int) -> tuple[float, Any]:
    fn()  # warm-up: caches (the Rust tokenizer, the compiled template)
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    import tokenizers
    import transformers

    import sftmask

    templates = chat_templates()
    path = str(tokenizer_path("qwen2"))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=path, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = templates["llama_cpp/Qwen-Qwen2.5-7B-Instruct"]
    training_template = templates["trl/qwen2_5_training"]
    backend = tokenizers.Tokenizer.from_file(path)
    convs = make_conversations(args.rows)
    batch = {"messages": [c["messages"] for c in convs]}
    texts = [tok.apply_chat_template(c["messages"], tokenize=False) for c in convs]  # the floor's input, untimed
    threads = int(os.environ.get("RAYON_NUM_THREADS") or os.cpu_count() or 1)

    t_floor, floor_enc = best(lambda: backend.encode_batch(texts, add_special_tokens=False), args.repeat)
    t_ours, (ours, stats) = best(lambda: sftmask.tokenize_and_mask(batch, tok, return_stats=True), args.repeat)
    t_slow, (slow, _) = best(
        lambda: sftmask.tokenize_and_mask(batch, tok, return_stats=True, engine="tokenizers"), args.repeat
    )
    assert slow == ours, "the two engines must give the same rows"
    floor_ids = [e.ids for e in floor_enc]
    same_ids = sum(a == b for a, b in zip(floor_ids, ours["input_ids"]))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        theirs = tok.apply_chat_template(
            batch["messages"],
            tools=None,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            chat_template=training_template,
        )
        t_hf = time.perf_counter() - t
    tokens = sum(len(i) for i in floor_ids)
    hf_tokens = sum(len(i) for i in theirs["input_ids"])

    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    load = os.getloadavg()[0]
    rows = [
        ("floor (tokenizers encode_batch, pre-rendered)", t_floor, tokens),
        ("sftmask tokenize_and_mask (render + locate + tokenize + labels), engine='auto' (fast path)", t_ours, tokens),
        ("sftmask tokenize_and_mask, engine='tokenizers'", t_slow, tokens),
        ("transformers apply_chat_template(return_assistant_tokens_mask=True), TRL qwen2_5_training", t_hf, hf_tokens),
    ]
    lines = [
        SECTION,
        "",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}; "
        f"command: `python benches/bench_messages.py`; commit {commit}",
        f"- Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{load:.2f} before the last run (shared machine: expect noise); threads {threads} (floor and sftmask)",
        f"- Software: Python {platform.python_version()}, transformers {transformers.__version__}, tokenizers "
        f"{tokenizers.__version__}, sftmask {sftmask.__version__}",
        f"- Data: {len(convs)} Qwen2.5 conversations from the test-corpus generator, {tokens:,} tokens "
        f"({tokens / len(convs):.0f}/row); Qwen2 fixture tokenizer, Qwen2.5-7B-Instruct chat template. "
        f"Best of {args.repeat} (floor, sftmask), one run (transformers).",
        f"- sftmask ids equal the floor's on {same_ids}/{len(convs)} rows; stats: {stats.trained_tokens:,} trained "
        f"tokens, rows_not_located {stats.rows_not_located}, turns_without_end_marker "
        f"{stats.turns_without_end_marker}. transformers renders TRL's training variant of the template "
        f"({hf_tokens:,} tokens).",
        "",
        "| method | seconds | rows/s | tokens/s | x floor |",
        "|---|---|---|---|---|",
    ]
    for name, secs, n in rows:
        lines.append(
            f"| {name} | {secs:.3f} | {len(convs) / secs:,.0f} | {n / secs / 1e6:.2f}M | {secs / t_floor:.2f}x |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_section("bench_messages", text)


if __name__ == "__main__":
    main()
