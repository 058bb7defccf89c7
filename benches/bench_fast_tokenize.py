#!/usr/bin/env python3
"""Tokenization speed of preprocessing: sftmask's fast byte-level BPE path against ``tokenizers``
(issue 13), and against tiktoken with the same vocabulary.

Data: for Llama-3 and Qwen2 (the real fixture tokenizers, with Llama-3.1-8B-Instruct's and
Qwen2.5-7B-Instruct's chat templates), ``--rows`` chats of about 1,000 tokens each, from the
user/assistant exchanges of the test-corpus generator (``tests/fixtures/build_chat_templates.py``),
in two shapes: ``many`` short exchanges appended until the rendered chat reaches 1,000 tokens
(~10 assistant turns: the messages path renders prefixes to locate every turn), and ``one``
exchange whose answer is the corpus' answers appended (one long answer).

Methods, all on the same rendered texts (``add_special_tokens=False``) or their conversations:

* ``tokenizers encode_batch``: the floor of SPEC's performance contract, tokenizing alone.
* ``sftmask Encoder.encode_batch``: sftmask's engine alone (no masking), ``engine="fast"``.
* ``tokenize_and_mask`` on texts (a response template) and on conversations (render, locate,
  tokenize, label), each with ``engine="fast"`` and ``engine="tokenizers"``.
* ``tiktoken``: an ``Encoding`` built offline from the tokenizer.json's own vocabulary, pattern
  and added tokens, ``encode_batch(num_threads=N)``.

Each thread count runs in its own process, with ``RAYON_NUM_THREADS`` and
``RAYON_RS_NUM_THREADS`` (the ``tokenizers`` library's pool) set to it and ``num_threads=N``
for sftmask and tiktoken. Timing: one warm-up call on other chats of the same kind (so that
caches hold the same kind of text, not the timed text), then one timed run per method. Writes its
section of ``benches/RESULTS.md`` (between the ``bench_fast_tokenize`` markers) unless
``--no-write``.

Usage::

    python benches/bench_fast_tokenize.py [--rows 400] [--threads 2,1]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))

from results_md import write_section  # noqa: E402

from build_chat_templates import chat_templates, conversation  # noqa: E402
from build_tokenizers import tokenizer_path  # noqa: E402

FAMILIES = {
    "llama3": ("llama_cpp/meta-llama-Llama-3.1-8B-Instruct", "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    "qwen2": ("llama_cpp/Qwen-Qwen2.5-7B-Instruct", "<|im_start|>assistant\n"),
}


def _exchanges(seed: int) -> Any:
    """User/assistant pairs with text contents, forever."""
    import random

    rng = random.Random(seed)
    while True:
        msgs = conversation(rng)["messages"]
        for a, b in zip(msgs, msgs[1:]):
            if a["role"] == "user" and b["role"] == "assistant" and isinstance(a["content"], str) and b["content"]:
                yield [{"role": "user", "content": a["content"]}, {"role": "assistant", "content": b["content"]}]


def make_chats(tok: Any, backend: Any, rows: int, shape: str, target: int = 1000) -> list[list[dict[str, str]]]:
    """``rows`` chats of about ``target`` tokens: ``many`` short exchanges appended, or ``one``
    exchange whose answer is the corpus' texts appended (a long answer)."""
    pairs = _exchanges(seed=13)

    def tokens(chat: list[dict[str, str]]) -> int:
        return len(backend.encode(tok.apply_chat_template(chat, tokenize=False), add_special_tokens=False).ids)

    chats = []
    for _ in range(rows):
        chat: list[dict[str, str]] = []
        while not chat or tokens(chat) < target:
            pair = next(pairs)
            if shape == "many" or not chat:
                chat += pair
            else:
                chat[-1] = {"role": "assistant", "content": chat[-1]["content"] + "\n\n" + pair[1]["content"]}
        chats.append(chat)
    return chats


def tiktoken_encoding(path: Path) -> Any:
    """tiktoken over the tokenizer.json's vocabulary (byte-level pieces back to bytes)."""
    import tiktoken

    spec = json.loads(path.read_text(encoding="utf-8"))
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    ranks = {bytes(chars[c] for c in tok): i for tok, i in spec["model"]["vocab"].items()}
    specials = {t["content"]: t["id"] for t in spec["added_tokens"]}
    pattern = spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]
    return tiktoken.Encoding(path.parent.name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)


def timed(fn: Any, warm: Any) -> tuple[float, Any]:
    """``fn(warm)`` once untimed (the Rust tokenizer, the compiled template, the piece caches
    warm up on other chats than the timed ones), then ``fn(timed)`` timed: the caches have
    seen the same kind of text, not the same text."""
    fn(*warm)
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def measure(fam: str, template: str, response: str, rows: int, shape: str, threads: int) -> dict[str, Any]:
    """Every method on one family's chats."""
    import tokenizers
    import transformers

    import sftmask

    path = tokenizer_path(fam)
    backend = tokenizers.Tokenizer.from_file(str(path))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    tok.chat_template = chat_templates()[template]
    both = make_chats(tok, backend, 2 * rows, shape)
    chats, other = both[:rows], both[rows:]
    texts = [tok.apply_chat_template(c, tokenize=False) for c in chats]
    other_texts = [tok.apply_chat_template(c, tokenize=False) for c in other]
    warm_texts, warm_batch = (other_texts,), ({"messages": other},)
    batch = {"messages": chats}

    def floor_fn(x: list[str] = texts) -> Any:
        return backend.encode_batch(x, add_special_tokens=False)

    t_floor, floor = timed(floor_fn, warm_texts)
    floor_ids = [e.ids for e in floor]
    enc = sftmask.Encoder.from_json(path.read_text(encoding="utf-8"), engine="fast")
    methods: dict[str, Any] = {"tokenizers encode_batch (floor)": (t_floor, True)}

    def enc_fn(x: list[str] = texts) -> Any:
        return enc.encode_batch(x, add_special_tokens=False, num_threads=threads)

    t, ids = timed(enc_fn, warm_texts)
    methods["sftmask Encoder.encode_batch, engine=fast"] = (t, ids == floor_ids)
    # A new Encoder starts with empty piece caches: every piece is merged once.
    cold = sftmask.Encoder.from_json(path.read_text(encoding="utf-8"), engine="fast")
    t = time.perf_counter()
    ids = cold.encode_batch(texts, add_special_tokens=False, num_threads=threads)
    methods["sftmask Encoder.encode_batch, engine=fast, cold piece cache"] = (time.perf_counter() - t, ids == floor_ids)
    for engine in ("fast", "tokenizers"):
        options = {"engine": engine, "num_threads": threads}

        def text_fn(x: list[str] = texts, o: dict = options) -> Any:
            return sftmask.tokenize_and_mask(x, tok, response, add_special_tokens=False, **o)

        def messages_fn(x: dict = batch, o: dict = options) -> Any:
            return sftmask.tokenize_and_mask(x, tok, **o)

        t, out = timed(text_fn, warm_texts)
        methods[f"tokenize_and_mask texts, engine={engine}"] = (t, out["input_ids"] == floor_ids)
        t, out = timed(messages_fn, warm_batch)
        methods[f"tokenize_and_mask messages, engine={engine}"] = (t, out["input_ids"] == floor_ids)
    tik = tiktoken_encoding(path)

    def tik_fn(x: list[str] = texts) -> Any:
        return tik.encode_batch(x, num_threads=threads, allowed_special="all")

    t, ids = timed(tik_fn, warm_texts)
    methods["tiktoken encode_batch (same vocabulary)"] = (t, ids == floor_ids)
    turns = sum(len(c) for c in chats) / 2 / len(chats)
    return {"rows": len(texts), "tokens": sum(map(len, floor_ids)), "turns": turns, "methods": methods}


SHAPES = {"many": "many short exchanges", "one": "one exchange, a long answer"}


def worker(rows: int, threads: int) -> dict[str, Any]:
    return {
        f"{fam}/{shape}": measure(fam, template, response, rows, shape, threads)
        for fam, (template, response) in FAMILIES.items()
        for shape in SHAPES
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--threads", default="2,1")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.rows, args.worker)))
        return

    import tiktoken
    import tokenizers

    import sftmask

    runs: dict[int, dict[str, Any]] = {}
    loads: dict[int, float] = {}
    for n in (int(x) for x in args.threads.split(",")):
        env = {**os.environ, "RAYON_NUM_THREADS": str(n), "RAYON_RS_NUM_THREADS": str(n)}
        loads[n] = os.getloadavg()[0]
        cmd = [sys.executable, __file__, "--worker", str(n), "--rows", str(args.rows)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        runs[n] = json.loads(out.strip().splitlines()[-1])
        print(f"threads {n} done", file=sys.stderr)
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    first = next(iter(runs.values()))
    lines = [
        "## Fast tokenization: tokenize_and_mask against tokenizers and tiktoken (issue 13)",
        "",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}; command: "
        f"`python benches/bench_fast_tokenize.py --rows {args.rows} --threads {args.threads}`; commit {commit}",
        f"- Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, shared (expect noise); "
        "load average before each thread count: " + ", ".join(f"{n} threads {v:.2f}" for n, v in loads.items()),
        f"- Software: Python {platform.python_version()}, tokenizers {tokenizers.__version__}, tiktoken "
        f"{tiktoken.__version__}, sftmask {sftmask.__version__} (release build)",
        "- Data: "
        + "; ".join(
            f"{key}: {r['rows']} chats, {r['tokens']:,} tokens ({r['tokens'] / r['rows']:.0f}/chat, "
            f"{r['turns']:.1f} exchanges/chat)"
            for key, r in first.items()
        )
        + ". One timed run per method after one warm-up on as many other chats of the same shape. "
        "`x floor` is tokens/s over the floor's at the same "
        "thread count; `ids` says whether the method's ids equal the floor's on every row.",
        "- Reading: the piece cache warms on the warm-up chats, which come from the same small corpus of texts as "
        "the timed ones, so nearly every piece is a hit; the cold-cache row (a new Encoder) is the first pass over the "
        "data. Conversations with many short exchanges are bound by rendering (sftmask renders each prefix to locate "
        "every assistant turn), not by tokenization: there the two engines differ by the tokenizing time only.",
        "",
    ]
    for key in first:
        fam, shape = key.split("/")
        lines += [
            f"### {fam}, {SHAPES[shape]}",
            "",
            "| method | threads | seconds | tokens/s | x floor | ids |",
            "|---|---|---|---|---|---|",
        ]
        for n, run in runs.items():
            r = run[key]
            floor = r["methods"]["tokenizers encode_batch (floor)"][0]
            for name, (secs, same) in r["methods"].items():
                lines.append(
                    f"| {name} | {n} | {secs:.3f} | {r['tokens'] / secs / 1e6:.2f}M | {floor / secs:.2f}x | "
                    f"{'equal' if same else 'DIFFER'} |"
                )
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("bench_fast_tokenize", text)


if __name__ == "__main__":
    main()
