#!/usr/bin/env python3
"""Side-by-side benchmark of completion-only collators, in one run on one machine.

Methods (all on the same Llama-3 chat rows, rendered here in Llama-3's chat format):

* ``floor``: copying the rows' ids into one padded int64 numpy array (``np.full`` then one slice
  assignment per row; a flat ``np.empty`` for padding-free). No labels: the cost of touching the
  ids once, which any collator pays.
* ``trl``: TRL 0.19.1's ``DataCollatorForCompletionOnlyLM`` over a transformers fast tokenizer
  (torch output; its numpy path does not mask).
* ``seed``: the seed fix (the llama3-sft README; ``docs/masking.md#background``), written from its
  description: TRL's padding, then per row ``decode``, ``str.find`` of the response template, and
  re-tokenization of the prefix and the suffix to turn the character position into a token
  position. It is single-turn only: on multi-turn data it trains everything after the first
  assistant header, which is what the seed's code does.
* ``sftmask-exact-np`` / ``-pt`` and ``sftmask-trl-np`` / ``-pt``: ``sftmask.DataCollatorForCompletionOnlyLM``
  with ``compat="exact"`` / ``"trl"`` and ``return_tensors="np"`` / ``"pt"``.

Grid: batch 1/8/64 x ~512/1k/2k/8k tokens per row (each row 0.7-1.2x the nominal length, drawn
uniformly) x single/multi-turn x padded/padding-free x list/numpy input (numpy input: rows of
``datasets.Dataset.from_dict(...).with_format("numpy")``, taken out of the dataset before timing).
Single-turn collators get only the response template; multi-turn ones also the user header as
instruction template.

Timing: every call is timed alone (``time.perf_counter``); a *pass* is one call per batch of the
case (8 batches of 1 row, 8 batches of 8 rows, or 1 batch of 64 rows). Methods are interleaved
pass by pass, so a load change on the machine hits all of them. Reported: the **median** pass
(best pass in results JSON). Slow methods get fewer passes (see ``_PLAN``). Nothing is asserted.

Peak memory: each method's first batch is collated once more in a forked child process, with glibc's
mmap threshold pinned to 64 KiB so big buffers come fresh from the kernel; the figure is the rise of
the child's peak RSS over its RSS before the call (output arrays included).

Exactness: the labels of each method's first pass, row by row, against sftmask exact's and against a
ground truth computed here on the rendered string (template occurrences found with ``str.find``,
the region rule of ``docs/masking.md#response-regions``, mapped to tokens through the tokenizer's
character offsets).

Usage::

    python benches/bench_collators.py            # full grid, writes benches/RESULTS.md (~3-4 min, 2 cores)
    python benches/bench_collators.py --quick    # smoke run (<1 min), prints only (or --out FILE)
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import time
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]

RESPONSE = "<|start_header_id|>assistant<|end_header_id|>\n\n"
USER = "<|start_header_id|>user<|end_header_id|>\n\n"
SYSTEM = "<|start_header_id|>system<|end_header_id|>\n\n"
EOT = "<|eot_id|>"
BOS = "<|begin_of_text|>"
IGNORE = -100

LENGTHS = {"512": 512, "1k": 1000, "2k": 2048, "8k": 8192}
BATCHES = (1, 8, 64)
POOL = 64  # rows per (length, turns); batch 1 uses the first 8 of them
METHODS = ("floor", "trl", "seed", "sftmask-exact-np", "sftmask-exact-pt", "sftmask-trl-np", "sftmask-trl-pt")
SFTMASK = tuple(m for m in METHODS if m.startswith("sftmask"))

# Share of turns whose text starts with a newline. Llama-3 merges the header's "\n\n" with it
# ("\n\n\n" is one token), so TRL's token-level search misses the template there. The official
# Llama-3 chat template trims contents (no such turns); raw `formatting_func` data has them.
LEADING_NEWLINE_ASSISTANT = 0.15
LEADING_NEWLINE_USER = 0.10


# ---------------------------------------------------------------------------------------------
# Data: synthetic Llama-3 chats, tokenized with the real Llama-3 tokenizer.

_WORDS = [
    *(
        "the a of to and in is it that for on with as this be are was by from or an at which not but "
        "model answer data training function returns value because token sequence example should would "
        "could about between result python error memory batch question explain simple important "
        "different people history river mountain energy system language number first second however "
        "therefore algorithm request server client performance gradient loss layer attention dataset "
        "Paris London tokenizer learning rate schedule optimizer checkpoint evaluate metric accuracy"
    ).split(),
    *["café", "naïve", "Zürich", "résumé", "東京", "数据", "🙂", "señor", "Größe"],
]

_CODE = (
    "```python\ndef collate(rows, pad=0):\n    width = max(map(len, rows))\n"
    "    return [r + [pad] * (width - len(r)) for r in rows]\n```"
)


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(5, 18))]
    for i in range(len(words)):
        if rng.random() < 0.05:
            words[i] += f" {rng.randint(0, 99999)}"
        elif rng.random() < 0.06:
            words[i] += ","
    words[0] = words[0][:1].upper() + words[0][1:]
    return " ".join(words) + rng.choice(".....?!:")


def _content(rng: random.Random, chars: int, newline_p: float) -> str:
    first = _sentence(rng)
    parts = ["\n" + first if rng.random() < newline_p else first]
    size = len(parts[0])
    while size < chars:
        r = rng.random()
        if r < 0.06:
            piece = "\n\n" + _CODE + "\n\n"
        elif r < 0.16:
            piece = f"\n{rng.randint(1, 9)}. " + _sentence(rng)
        elif r < 0.25:
            piece = "\n\n" + _sentence(rng)
        else:
            piece = " " + _sentence(rng)
        parts.append(piece)
        size += len(piece)
    return "".join(parts)


def _render(messages: list[tuple[str, str]]) -> str:
    return BOS + "".join(f"<|start_header_id|>{role}<|end_header_id|>\n\n{text}{EOT}" for role, text in messages)


def _chat(rng: random.Random, tokens: int, multi: bool, chars_per_token: float) -> str:
    system = "You are a helpful assistant. Answer precisely."
    budget = max(tokens - 20, 40) * chars_per_token
    pairs = 1 if not multi else max(2, min(10, round(tokens / 800) + rng.randint(0, 2)))
    messages = [("system", system)]
    for _ in range(pairs):
        share = budget / pairs
        messages.append(("user", _content(rng, int(share * 0.25), LEADING_NEWLINE_USER)))
        messages.append(("assistant", _content(rng, int(share * 0.75), LEADING_NEWLINE_ASSISTANT)))
    return _render(messages)


@dataclass
class Rows:
    texts: list[str]
    ids: list[list[int]]
    offsets: list[list[tuple[int, int]]]


def make_rows(tok: Any, nominal: int, multi: bool, n: int, seed: int, cpt: float) -> Rows:
    rng = random.Random(seed)
    targets = [rng.randint(int(nominal * 0.7), int(nominal * 1.2)) for _ in range(n)]
    texts = [_chat(rng, t, multi, cpt) for t in targets]
    encs = tok.encode_batch(texts, add_special_tokens=False)
    return Rows(texts, [list(e.ids) for e in encs], [list(e.offsets) for e in encs])


def calibrate(tok: Any) -> float:
    """Characters per token of the generator's text (so rows land near their target length)."""
    rng = random.Random(0)
    texts = [_content(rng, 4000, 0.0) for _ in range(8)]
    n = sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False))
    return sum(map(len, texts)) / n


def ground_truth(text: str, ids: list[int], offsets: list[tuple[int, int]], multi: bool) -> list[int]:
    """docs/masking.md's rule, computed on the rendered string: template occurrences by str.find
    (leftmost-first, non-overlapping, response first at a tie), regions, then a token is trained
    iff its character span overlaps a region."""
    templates = [(RESPONSE, True)] + ([(USER, False)] if multi else [])
    occ: list[tuple[int, int, bool]] = []
    pos = 0
    while True:
        best = None
        for t, is_response in templates:
            j = text.find(t, pos)
            if j >= 0 and (best is None or j < best[0]):
                best = (j, j + len(t), is_response)
        if best is None:
            break
        occ.append(best)
        pos = best[1]
    if not multi:
        last = [o for o in occ if o[2]]
        spans = [(last[-1][1], len(text))] if last else []
    else:
        spans = [(e, occ[k + 1][0] if k + 1 < len(occ) else len(text)) for k, (_, e, r) in enumerate(occ) if r]
    spans = [(s, e) for s, e in spans if e > s]
    out = []
    for tid, (cs, ce) in zip(ids, offsets):
        hit = any((cs < re and ce > rs) if ce > cs else (rs <= cs < re) for rs, re in spans)
        out.append(tid if hit else IGNORE)
    return out


# ---------------------------------------------------------------------------------------------
# Methods.


def floor_padded(pad: int) -> Callable[[list[dict]], Any]:
    def collate(examples: list[dict]) -> dict[str, np.ndarray]:
        rows = [e["input_ids"] for e in examples]
        out = np.full((len(rows), max(map(len, rows))), pad, dtype=np.int64)
        for i, ids in enumerate(rows):
            out[i, : len(ids)] = ids
        return {"input_ids": out}

    return collate


def floor_flat(examples: list[dict]) -> dict[str, np.ndarray]:
    rows = [e["input_ids"] for e in examples]
    out = np.empty((1, sum(map(len, rows))), dtype=np.int64)
    at = 0
    for ids in rows:
        out[0, at : at + len(ids)] = ids
        at += len(ids)
    return {"input_ids": out}


def make_seed_class() -> type:
    import torch
    from transformers import DataCollatorForLanguageModeling
    from trl import DataCollatorForCompletionOnlyLM as TrlCollator

    class SeedCollator(TrlCollator):
        """The seed fix (docs/masking.md#background), written from its description (single-turn only)."""

        def torch_call(self, examples: list[Any]) -> dict[str, Any]:
            batch = DataCollatorForLanguageModeling.torch_call(self, examples)  # pad, labels = ids
            template = self.response_template
            for i in range(len(examples)):
                row = batch["input_ids"][i]
                text = self.tokenizer.decode(row)
                at = text.find(template)
                if at < 0:
                    batch["labels"][i, :] = self.ignore_index
                    continue
                cut = at + len(template)
                n_prefix = len(self.tokenizer.tokenize(text[:cut], add_special_tokens=False))
                n_suffix = len(self.tokenizer.tokenize(text[cut:], add_special_tokens=False))
                start = n_prefix + (len(row) - n_prefix - n_suffix)
                batch["labels"][i, :start] = self.ignore_index
            if self.padding_free:
                keep = batch.pop("attention_mask").bool()
                positions = (keep.cumsum(1) - 1)[keep].unsqueeze(0)
                batch["input_ids"] = batch["input_ids"][keep].unsqueeze(0)
                labels = batch["labels"][keep].unsqueeze(0)
                labels[positions == 0] = self.ignore_index
                batch["labels"] = labels
                batch["position_ids"] = positions
                starts = torch.nonzero(positions[0] == 0).flatten().to(torch.int32)
                cu = torch.cat([starts, torch.tensor([positions.shape[1]], dtype=torch.int32)])
                batch["cu_seq_lens_q"] = batch["cu_seq_lens_k"] = cu
                batch["max_length_q"] = batch["max_length_k"] = int(positions.max()) + 1
            return batch

    return SeedCollator


def build_methods(hf_tok: Any, multi: bool, flat: bool) -> dict[str, Callable[[list[dict]], Any]]:
    import trl

    import sftmask

    instruction = USER if multi else None
    seed_cls = make_seed_class()
    out: dict[str, Callable[[list[dict]], Any]] = {
        "floor": floor_flat if flat else floor_padded(hf_tok.pad_token_id),
        "trl": trl.DataCollatorForCompletionOnlyLM(
            RESPONSE, instruction_template=instruction, tokenizer=hf_tok, padding_free=flat
        ),
        "seed": seed_cls(RESPONSE, instruction_template=instruction, tokenizer=hf_tok, padding_free=flat),
    }
    for compat in ("exact", "trl"):
        for rt in ("np", "pt"):
            out[f"sftmask-{compat}-{rt}"] = sftmask.DataCollatorForCompletionOnlyLM(
                RESPONSE, instruction, tokenizer=hf_tok, padding_free=flat, return_tensors=rt, compat=compat
            )
    return out


def row_labels(out: dict[str, Any], lengths: list[int], flat: bool) -> list[list[int]]:
    labels = out["labels"]
    if hasattr(labels, "numpy"):
        labels = labels.numpy()
    labels = np.asarray(labels)
    rows, at = [], 0
    for i, n in enumerate(lengths):
        if flat:
            rows.append(labels[0, at : at + n].tolist())
            at += n
        else:
            rows.append(labels[i, :n].tolist())
    return rows


def out_bytes(out: dict[str, Any]) -> int:
    total = 0
    for v in out.values():
        if hasattr(v, "nbytes"):
            total += int(v.nbytes)
        elif hasattr(v, "element_size"):
            total += int(v.element_size() * v.nelement())
    return total


# ---------------------------------------------------------------------------------------------
# Measurement.

_libc = ctypes.CDLL(None)


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))


def peak_memory(
    fn: Callable[[list[dict]], Any], warm: list[dict], batch: list[dict], timeout: float = 120.0
) -> tuple[int, int] | None:
    """(peak RSS rise in bytes, output bytes) of one call, measured in a forked child: glibc's mmap
    threshold is pinned and free heap memory is trimmed (so every block the call uses raises RSS), one
    warm-up call first faults in the code pages the call touches, then the peak RSS is reset
    (/proc/self/clear_refs) and read back (VmHWM) around the measured call."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(r)
            _libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
            fn(warm)
            gc.collect()
            _libc.malloc_trim(0)  # free heap pages go back to the kernel: reusing them shows in RSS
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak RSS to the current RSS
            before = _status_kib("VmRSS:")
            out = fn(batch)
            peak = _status_kib("VmHWM:")
            os.write(w, json.dumps([max(0, peak - before) * 1024, out_bytes(out)]).encode())
        except BaseException as e:
            code = 1
            sys.stderr.write(f"peak_memory: {type(e).__name__}: {e}\n")
        finally:
            os._exit(code)
    os.close(w)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            os.close(r)
            sys.stderr.write(f"peak_memory: no result after {timeout:.0f} s\n")
            return None
        time.sleep(0.002)
    data = os.read(r, 4096)
    os.close(r)
    if status != 0 or not data:
        sys.stderr.write(f"peak_memory: child exited with status {status:#x}\n")
        return None
    peak, nbytes = json.loads(data)
    return peak, nbytes


SLOW = ("trl", "seed")
SLOW_MIN_TOKENS = 32_000  # at batch 1 and 8, slow methods run the case's first batches up to this many tokens


@dataclass
class Plan:
    min_passes: int
    max_passes: int
    budget_s: float


def plan_for(method: str, nominal: str, quick: bool) -> Plan:
    if quick:
        return Plan(1, 1, 0.0) if method in SLOW else Plan(3, 10, 0.02)
    if method == "seed":
        return Plan(1, 1, 0.0) if nominal == "8k" else Plan(2, 3, 0.3)
    if method == "trl":
        return Plan(2, 2, 0.0) if nominal == "8k" else Plan(3, 8, 0.5)
    return Plan(7, 200, 0.1)


@dataclass
class Result:
    case: str
    method: str
    tokens: int = 0  # per pass, padding excluded
    rows: int = 0  # per pass
    passes: list[float] = field(default_factory=list)
    peak_bytes: int | None = None
    out_bytes: int | None = None
    equal_exact: float | None = None  # % rows equal to sftmask exact's labels
    equal_truth: float | None = None  # % rows equal to the ground truth
    equal_trl: float | None = None  # % rows equal to TRL 0.19.1's labels (on the rows TRL ran)
    trained_rows: float | None = None  # % rows with at least one trained label

    @property
    def best(self) -> float:
        return min(self.passes)

    @property
    def median(self) -> float:
        return statistics.median(self.passes)

    @property
    def rate(self) -> float:
        """Tokens/s of the best pass."""
        return self.tokens / self.best

    @property
    def rate_median(self) -> float:
        return self.tokens / self.median


def run_case(
    case: str,
    methods: dict[str, Callable[[list[dict]], Any]],
    batches: list[list[dict]],
    lengths: list[list[int]],
    truth: list[list[int]],
    nominal: str,
    flat: bool,
    quick: bool,
    measure_memory: bool,
) -> dict[str, Result]:
    results = {m: Result(case, m) for m in methods}
    used: dict[str, int] = {}  # how many of the case's batches each method runs per pass
    for m in methods:
        n, tokens = 0, 0
        while n < len(batches) and (m not in SLOW or n == 0 or tokens < SLOW_MIN_TOKENS):
            tokens += sum(lengths[n])
            n += 1
        used[m] = n
        results[m].tokens, results[m].rows = tokens, sum(map(len, lengths[:n]))
    for m, fn in methods.items():  # warm-up, untimed: one batch (slow methods: one row)
        fn(batches[0][:1] if m in SLOW else batches[0])
    labels: dict[str, list[list[int]]] = {}
    plans = {m: plan_for(m, nominal, quick) for m in methods}
    pending = list(methods)
    first = True
    while pending:  # interleaved: one pass of every pending method per round
        for m in list(pending):
            fn = methods[m]
            total = 0.0
            keep: list[list[int]] = []
            for b in range(used[m]):
                t0 = time.perf_counter()
                out = fn(batches[b])
                total += time.perf_counter() - t0
                if first and m != "floor":
                    keep.extend(row_labels(out, lengths[b], flat))
                del out
            if first and m != "floor":
                labels[m] = keep
            res = results[m]
            res.passes.append(total)
            p = plans[m]
            n, spent = len(res.passes), sum(res.passes)
            if n >= p.max_passes or (n >= p.min_passes and spent >= p.budget_s):
                pending.remove(m)
        first = False
    flat_truth = [[IGNORE, *t[1:]] if flat and t else t for t in truth]
    exact, trl = labels["sftmask-exact-np"], labels["trl"]
    for m, rows in labels.items():  # slow methods ran a prefix of the case's rows: zip aligns them
        res = results[m]
        res.equal_exact = 100.0 * sum(a == b for a, b in zip(rows, exact)) / len(rows)
        common = min(len(rows), len(trl))
        res.equal_trl = 100.0 * sum(a == b for a, b in zip(rows, trl)) / common
        res.equal_truth = 100.0 * sum(a == b for a, b in zip(rows, flat_truth)) / len(rows)
        res.trained_rows = 100.0 * sum(any(x != IGNORE for x in r) for r in rows) / len(rows)
    if measure_memory:
        for m, fn in methods.items():
            got = peak_memory(fn, batches[0][:1], batches[0])
            if got is not None:
                results[m].peak_bytes, results[m].out_bytes = got
    return results


# ---------------------------------------------------------------------------------------------
# Report.


def machine_info() -> dict[str, Any]:
    import psutil
    import tokenizers
    import torch
    import transformers
    import trl

    import sftmask

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass

    def git(*args: str) -> str:
        try:
            cmd = ["git", "-C", str(REPO), *args]
            return subprocess.check_output(cmd, text=True, stderr=subprocess.DEVNULL).strip()
        except (OSError, subprocess.CalledProcessError):
            return "?"

    dirty = " + uncommitted changes" if git("status", "--porcelain", "--", "src", "python") else ""
    source, head = git("log", "-1", "--format=%h", "--", "src", "python"), git("rev-parse", "--short", "HEAD")
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "tokenizers": tokenizers.__version__,
        "sftmask": f"{sftmask.__version__}, src/ and python/ at commit {source}{dirty} (checkout {head})",
        "sftmask_threads": os.environ.get("RAYON_NUM_THREADS", f"default ({os.cpu_count()})"),
    }


def fmt_rate(rate: float) -> str:
    return f"{rate / 1e6:.1f}M" if rate >= 1e6 else f"{rate / 1e3:.0f}k"


def fmt_mib(b: int | None) -> str:
    return "–" if b is None else f"{b / 2**20:.1f}"


def fmt_pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.0f}%"


def split_case(case: str) -> tuple[str, str, int, str, str]:
    turns, nominal, b, layout, inp = case.split("-")
    return turns, nominal, int(b[1:]), layout, inp


def headline_rows(all_results: dict[str, dict[str, Result]]) -> list[str]:
    lines = []
    for case, r in all_results.items():
        _, nominal, b, _, _ = split_case(case)
        if nominal != "1k" or b == 1:
            continue
        x, fl, trl, seed = r["sftmask-exact-pt"], r["floor"], r["trl"], r["seed"]
        lines.append(
            f"| {case} | {fmt_rate(x.rate)} | {fmt_rate(x.rate_median)} | {fl.rate / x.rate:.2f}x "
            f"| {fl.rate_median / x.rate_median:.2f}x | {x.rate / trl.rate:.0f}x | {x.rate / seed.rate:.0f}x "
            f"| {fmt_pct(x.equal_truth)} | {fmt_pct(trl.equal_truth)} |"
        )
    return lines


def write_report(
    path: Path | None,
    all_results: dict[str, dict[str, Result]],
    info: dict[str, Any],
    extras: dict[str, Any],
    command: str,
    started: datetime.datetime,
    elapsed: float,
    quick: bool,
) -> str:
    L: list[str] = []
    L.append("# sftmask collator benchmarks" + (" (quick smoke run)" if quick else ""))
    L.append("")
    L.append(f"- Date: {started.isoformat(timespec='seconds')}; whole run {elapsed / 60:.1f} min")
    L.append(f"- Command: `{command}`")
    L.append(
        f"- Machine: {info['cpu']}, {info['cpus']} CPUs, {info['memory_gib']} GiB RAM; {info['os']}. "
        f"1-minute load average before / after the run: {extras['load_before']} / {extras['load_after']}"
        + (" (other jobs shared the CPUs: expect noise)" if float(extras["load_before"]) > 1 else "")
    )
    L.append(
        f"- Software: Python {info['python']}, numpy {info['numpy']}, torch {info['torch']} "
        f"({info['torch_threads']} thread), transformers {info['transformers']}, trl {info['trl']}, "
        f"tokenizers {info['tokenizers']}; sftmask {info['sftmask']}, sftmask threads {info['sftmask_threads']}"
    )
    L.append(
        f"- Tokenizer: Llama-3 (128,256 ids) from the test fixtures ({extras['tokenizer']}); pad token "
        "`<|finetune_right_pad_id|>` (128004), right padding. TRL and the seed get a transformers "
        "`PreTrainedTokenizerFast` over it; so does sftmask."
    )
    L.append(
        f"- Data: synthetic chats rendered in Llama-3's chat format ({extras['chars_per_token']:.2f} chars/token), "
        "each row 0.7-1.2x its nominal length. "
        f"{LEADING_NEWLINE_ASSISTANT:.0%} of assistant and {LEADING_NEWLINE_USER:.0%} of user turns start with "
        "a newline (Llama-3 merges it with the header's `\\n\\n` into one token, which TRL's token search misses; "
        "Llama-3's official chat template trims contents, raw `formatting_func` text does not). Response template "
        "`<|start_header_id|>assistant<|end_header_id|>\\n\\n`; multi-turn collators also get the instruction "
        "template `<|start_header_id|>user<|end_header_id|>\\n\\n`."
    )
    L.append(
        "- Timing: every call timed alone; a pass = one call per batch of the case (8 batches of 1 row, 8 of 8 "
        "rows, or 1 of 64 rows); methods interleaved pass by pass. **Figures are the best pass** (the median is "
        "shown in the headline table and the JSON). floor and sftmask: >= 7 passes and >= 0.1 s; TRL 3-8 passes "
        "(2 at 8k tokens/row), the seed 2-3 passes (a **single pass at 8k tokens/row**); at batch 1 and 8 both "
        f"run only the case's first batches up to {SLOW_MIN_TOKENS:,} tokens. torch runs on 1 thread (as in DataLoader "
        "workers; with 2 threads TRL's padding-free path was 4-5x slower on this loaded 2-CPU machine)."
    )
    L.append(
        "- `x floor` = floor tokens/s over the method's (lower is better; 1.00x = as fast as copying the ids). "
        "For numpy input the floor is a memcpy per row, so compare numpy rows with the list floor too "
        "(targets table). `vs TRL`, `vs seed` = speed-up (tokens/s ratio) over them. `sftmask-trl-*` "
        '(`compat="trl"`) reproduces TRL\'s per-row warnings, which decode each missed row even when warnings are '
        "filtered: that is most of its time here."
    )
    L.append("")

    L.append("## Targets (issue 4)")
    L.append("")
    L.append("| target | measured | met? |")
    L.append("|---|---|---|")
    L.extend(extras["targets"])
    L.append("")

    L.append("## Headline: ~1k tokens/row (700-1200), batch 8 and 64, sftmask exact, torch output")
    L.append("")
    L.append(
        "| case | tok/s best | tok/s median | x floor best | x floor median | vs TRL | vs seed "
        "| = truth | TRL = truth |"
    )
    L.append("|---|---|---|---|---|---|---|---|---|")
    L.extend(headline_rows(all_results))
    L.append("")

    L.append("## Table build and collator construction (Llama-3, 128k ids)")
    L.append("")
    L.append("| what | time |")
    L.append("|---|---|")
    for k, v in extras["construction"].items():
        L.append(f"| {k} | {v} |")
    L.append("")

    L.append("## Full grid: tokens/s of the best pass (x floor)")
    L.append("")
    groups: dict[tuple[str, str, str], list[str]] = {}
    for case in all_results:
        turns, _, _, layout, inp = split_case(case)
        groups.setdefault((turns, layout, inp), []).append(case)
    for (turns, layout, inp), cases in groups.items():
        L.append(f"### {turns}-turn, {'padding-free' if layout == 'free' else 'padded'}, {inp} input")
        L.append("")
        L.append("| batch | tokens/row | " + " | ".join(METHODS) + " | exact-pt vs TRL | exact-pt vs seed |")
        L.append("|---|---|" + "---|" * (len(METHODS) + 2))
        for case in cases:
            r = all_results[case]
            _, nominal, b, _, _ = split_case(case)
            fl = r["floor"].rate
            cells = [f"{fmt_rate(r[m].rate)} ({fl / r[m].rate:.2f}x)" for m in METHODS]
            x = r["sftmask-exact-pt"]
            L.append(
                f"| {b} | {extras['tokens_per_row'][case]:.0f} (~{nominal}) | "
                + " | ".join(cells)
                + f" | {x.rate / r['trl'].rate:.0f}x | {x.rate / r['seed'].rate:.0f}x |"
            )
        L.append("")

    L.append("## Exactness (% of rows)")
    L.append("")
    L.append(
        "Per row, from each method's first pass: `truth` = labels equal the ground truth computed on the "
        "rendered string; `exact` = equal sftmask exact's; `TRL` = equal TRL 0.19.1's; `trained` = rows with "
        "at least one trained label (for TRL: rows where it found its templates). Masks do not depend on batch "
        "size or input type; shown for batch 64 (TRL and the seed: the same 64 rows), list input. The seed is "
        "single-turn only: on multi-turn rows it trains everything after the first assistant header."
    )
    L.append("")
    L.append("| case | " + " | ".join(f"{m} truth / exact / TRL / trained" for m in METHODS[1:]) + " |")
    L.append("|---|" + "---|" * (len(METHODS) - 1))
    for case, r in all_results.items():
        _, _, b, _, inp = split_case(case)
        if b != 64 or inp != "list":
            continue
        cells = [
            f"{fmt_pct(r[m].equal_truth)} / {fmt_pct(r[m].equal_exact)} / {fmt_pct(r[m].equal_trl)} / "
            f"{fmt_pct(r[m].trained_rows)}"
            for m in METHODS[1:]
        ]
        L.append(f"| {case} | " + " | ".join(cells) + " |")
    bad = [
        f"{c} {m}"
        for c, r in all_results.items()
        for m in r
        if m.startswith("sftmask-exact") and r[m].equal_truth != 100
    ]
    L.append("")
    L.append(
        "sftmask exact (np and pt) equals the ground truth on every row of every case of this run."
        if not bad
        else f"sftmask exact differs from the ground truth in: {', '.join(bad)}"
    )
    trl_mode = [
        f"{c} {m}" for c, r in all_results.items() for m in r if m.startswith("sftmask-trl") and r[m].equal_trl != 100
    ]
    L.append(
        'sftmask `compat="trl"` (np and pt) equals TRL 0.19.1\'s labels on every row TRL ran, in every case.'
        if not trl_mode
        else f'sftmask `compat="trl"` differs from TRL 0.19.1\'s labels in: {", ".join(trl_mode)}'
    )
    L.append("")

    L.append("## Peak memory during one call (MiB; output arrays in parentheses)")
    L.append("")
    L.append("The case's first batch, padded, list input, collated once in a forked child.")
    L.append("")
    L.append("| case | " + " | ".join(METHODS) + " |")
    L.append("|---|" + "---|" * len(METHODS))
    for case, r in all_results.items():
        if all(x.peak_bytes is None for x in r.values()):
            continue
        cells = [f"{fmt_mib(r[m].peak_bytes)} ({fmt_mib(r[m].out_bytes)})" for m in METHODS]
        L.append(f"| {case} | " + " | ".join(cells) + " |")
    L.append("")
    text = "\n".join(L)
    if path is not None:
        # Sections other benches keep in the same file (bench_preprocess, bench_cold_start, bench_pack)
        # survive a rewrite.
        old = path.read_text(encoding="utf-8") if path.exists() else ""
        blocks = re.finditer(r"<!-- (\w+):begin -->.*?<!-- \1:end -->\n", old, flags=re.S)
        tail = "".join("\n" + m.group(0) for m in blocks)
        path.write_text(text + "\n" + tail, encoding="utf-8")
    return text


# ---------------------------------------------------------------------------------------------
# Construction costs.


def time_construction(tok_path: Path, hf_factory: Callable[[], Any], quick: bool) -> dict[str, str]:
    import sftmask
    from sftmask._core import Vocab

    out: dict[str, str] = {}
    text = tok_path.read_text(encoding="utf-8")
    reps = 2 if quick else 5
    variants = [text + " " * (k + 1) for k in range(reps)]  # distinct texts: the process-wide cache never hits
    times = []
    for variant in variants:
        t0 = time.perf_counter()
        Vocab.from_json(variant)
        times.append(time.perf_counter() - t0)
    out[f"table build: `Vocab.from_json` of the tokenizer.json text, uncached (median of {reps})"] = (
        f"{statistics.median(times) * 1e3:.1f} ms"
    )
    times = []
    for variant in variants:
        again = variant[:-1] + " "  # equal text, new str object (its UTF-8 form is not cached yet)
        t0 = time.perf_counter()
        Vocab.from_json(again)
        times.append(time.perf_counter() - t0)
    out[f"`Vocab.from_json` of a text already built (cache hit: str to UTF-8 + hash of 17 MB; median of {reps})"] = (
        f"{statistics.median(times) * 1e3:.2f} ms"
    )
    hf = hf_factory()
    t0 = time.perf_counter()
    sftmask.DataCollatorForCompletionOnlyLM(RESPONSE, tokenizer=hf)
    out["first collator on a fresh transformers tokenizer (`to_str()` + table build)"] = (
        f"{(time.perf_counter() - t0) * 1e3:.1f} ms"
    )
    seconds = []
    for _ in range(reps * 4):
        t0 = time.perf_counter()
        sftmask.DataCollatorForCompletionOnlyLM(RESPONSE, tokenizer=hf)
        seconds.append(time.perf_counter() - t0)
    out[f"second collator on the same tokenizer object (median of {reps * 4})"] = (
        f"{statistics.median(seconds) * 1e3:.3f} ms"
    )
    seconds = []
    for _ in range(reps // 2 + 1):
        t0 = time.perf_counter()
        sftmask.DataCollatorForCompletionOnlyLM(RESPONSE, tokenizer=str(tok_path), pad_token_id=128004)
        seconds.append(time.perf_counter() - t0)
    out[
        f"collator from the tokenizer.json path, table cached (reads and parses the file; median of {reps // 2 + 1})"
    ] = f"{statistics.median(seconds) * 1e3:.1f} ms"
    t0 = time.perf_counter()
    hf_factory()
    out["for scale: loading the transformers tokenizer itself"] = f"{(time.perf_counter() - t0) * 1e3:.0f} ms"
    return out


# ---------------------------------------------------------------------------------------------


def find_tokenizer(cache: str | None) -> Path:
    if cache:
        os.environ["SFTMASK_TOKENIZER_CACHE"] = cache
    sys.path.insert(0, str(REPO / "tests" / "fixtures"))
    from build_tokenizers import tokenizer_path  # builds it on first use (downloads from PyPI)

    return Path(tokenizer_path("llama3"))


def targets_table(all_results: dict[str, dict[str, Result]], construction: dict[str, str]) -> list[str]:
    rows: list[str] = []

    def yes(ok: bool) -> str:
        return "yes" if ok else "**no**"

    for turns in ("single", "multi"):
        r = all_results.get(f"{turns}-1k-b8-padded-list")
        if r:
            x, fl, trl, seed = r["sftmask-exact-pt"], r["floor"], r["trl"], r["seed"]
            v, vm = fl.rate / x.rate, fl.rate_median / x.rate_median
            rows.append(
                f"| b8 ~1k {turns}-turn, list, pt: <= 1.5x floor | {v:.2f}x (median {vm:.2f}x) | {yes(v <= 1.5)} |"
            )
            v = x.rate / trl.rate
            rows.append(f"| b8 ~1k {turns}-turn: >= 30x TRL | {v:.0f}x | {yes(v >= 30)} |")
            v = x.rate / seed.rate
            rows.append(f"| b8 ~1k {turns}-turn: >= 150x the seed | {v:.0f}x | {yes(v >= 150)} |")
            rows.append(
                f"| b8 ~1k {turns}-turn: exact masks | {fmt_pct(x.equal_truth)} of rows = ground truth (TRL: "
                f"{fmt_pct(trl.equal_truth)}, trains {fmt_pct(trl.trained_rows)} of rows) "
                f"| {yes(x.equal_truth == 100)} |"
            )
        r = all_results.get(f"{turns}-1k-b64-padded-list")
        if r:
            x, fl = r["sftmask-exact-pt"], r["floor"]
            v, vm = fl.rate / x.rate, fl.rate_median / x.rate_median
            rows.append(
                f"| b64 ~1k {turns}-turn, list, pt: <= 1.2x floor | {v:.2f}x (median {vm:.2f}x) | {yes(v <= 1.2)} |"
            )
        for b in (8, 64):
            rl, rn = all_results.get(f"{turns}-1k-b{b}-padded-list"), all_results.get(f"{turns}-1k-b{b}-padded-numpy")
            if rl and rn:
                x, fl = rn["sftmask-exact-pt"], rl["floor"]
                v = fl.rate / x.rate
                rows.append(
                    f"| b{b} ~1k {turns}-turn: numpy int64 input (pt) faster than the list floor | "
                    f"{v:.2f}x the list floor's time | {yes(v < 1)} |"
                )
    build = next(v for k, v in construction.items() if k.startswith("table build"))
    rows.append(f"| table build, 128k vocabulary: <= 100 ms | {build} | {yes(float(build.split()[0]) <= 100)} |")
    second = next(v for k, v in construction.items() if k.startswith("second collator"))
    rows.append(f"| second collator on the same tokenizer: <= 1 ms | {second} | {yes(float(second.split()[0]) <= 1)} |")
    mem = [
        (c, r["sftmask-exact-pt"])
        for c, r in all_results.items()
        if r["sftmask-exact-pt"].peak_bytes is not None and r["sftmask-exact-pt"].out_bytes
    ]
    if mem:
        c, x = max(mem, key=lambda cx: cx[1].peak_bytes / cx[1].out_bytes)
        rows.append(
            f"| extra memory during a call <= outputs + O(text) | largest peak/outputs: {c}, peak "
            f"{fmt_mib(x.peak_bytes)} MiB for {fmt_mib(x.out_bytes)} MiB of outputs | see the memory table |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: ~1k tokens/row only, 1 pass of TRL/seed")
    parser.add_argument("--out", type=Path, help="markdown report (default: benches/RESULTS.md; none for --quick)")
    parser.add_argument("--json", type=Path, help="also write every measurement as JSON here")
    parser.add_argument(
        "--tokenizer-cache",
        default=os.environ.get("SFTMASK_TOKENIZER_CACHE"),
        help="fixture cache holding llama3/tokenizer.json (default: $SFTMASK_TOKENIZER_CACHE, else "
        "tests/.tokenizer-cache, built on first use)",
    )
    parser.add_argument("--torch-threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument(
        "--no-memory",
        action="store_true",
        help="skip the forked peak-memory measurements (skipped anyway when --torch-threads > 1)",
    )
    args = parser.parse_args(argv)
    started = datetime.datetime.now().astimezone()
    t_start = time.perf_counter()
    load_before = f"{os.getloadavg()[0]:.2f}"
    warnings.simplefilter("ignore")  # TRL warns per missed row (it still decodes the row for the message)

    import datasets
    import torch
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    torch.set_num_threads(args.torch_threads)
    datasets.disable_progress_bars()
    tok_path = find_tokenizer(args.tokenizer_cache)
    fixture = json.loads((tok_path.parent / "sftmask_fixture.json").read_text())

    def hf_factory() -> Any:
        return PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer.from_file(str(tok_path)),
            bos_token=fixture["bos_token"],
            eos_token=fixture["eos_token"],
            pad_token=fixture["pad_token"],
        )

    tok = Tokenizer.from_file(str(tok_path))
    hf_tok = hf_factory()
    info = machine_info()
    construction = time_construction(tok_path, hf_factory, args.quick)
    cpt = calibrate(tok)

    lengths_run = ("1k",) if args.quick else tuple(LENGTHS)
    batches_run = (8, 64) if args.quick else BATCHES
    all_results: dict[str, dict[str, Result]] = {}
    tokens_per_row: dict[str, float] = {}
    for turns in ("single", "multi"):
        multi = turns == "multi"
        for nominal in lengths_run:
            rows = make_rows(tok, LENGTHS[nominal], multi, POOL, zlib.crc32(f"{turns}-{nominal}".encode()), cpt)
            truth = [ground_truth(t, i, o, multi) for t, i, o in zip(rows.texts, rows.ids, rows.offsets)]
            as_list = [{"input_ids": ids} for ids in rows.ids]
            ds = datasets.Dataset.from_dict({"input_ids": rows.ids}).with_format("numpy")
            as_numpy = [ds[i] for i in range(len(ds))]
            gc.collect()
            gc.freeze()  # setup objects leave the collector's scans (full collections took ~0.5 s here)
            for layout in ("padded", "free"):
                flat = layout == "free"
                methods = build_methods(hf_tok, multi, flat)
                for inp in ("list", "numpy"):
                    examples = as_list if inp == "list" else as_numpy
                    for b in batches_run:
                        groups = (
                            [[i] for i in range(8)] if b == 1 else [list(range(s, s + b)) for s in range(0, POOL, b)]
                        )
                        batches = [[examples[i] for i in g] for g in groups]
                        lengths = [[len(rows.ids[i]) for i in g] for g in groups]
                        case_truth = [truth[i] for g in groups for i in g]
                        case = f"{turns}-{nominal}-b{b}-{layout}-{inp}"
                        t0 = time.perf_counter()
                        # (a forked child hangs in torch's OpenMP pool when the parent used several threads)
                        memory = (
                            not args.no_memory
                            and args.torch_threads == 1
                            and inp == "list"
                            and layout == "padded"
                            and b > 1
                        )
                        res = run_case(case, methods, batches, lengths, case_truth, nominal, flat, args.quick, memory)
                        all_results[case] = res
                        tokens_per_row[case] = res["floor"].tokens / res["floor"].rows
                        fl, x = res["floor"], res["sftmask-exact-pt"]
                        print(
                            f"{case:32s} {time.perf_counter() - t0:5.1f}s  floor {fmt_rate(fl.rate):>6s}  "
                            f"trl {fmt_rate(res['trl'].rate):>6s}  seed {fmt_rate(res['seed'].rate):>6s}  "
                            f"exact-pt {fmt_rate(x.rate):>6s} ({fl.rate / x.rate:.2f}x floor)",
                            flush=True,
                        )

    elapsed = time.perf_counter() - t_start
    extras = {
        "load_before": load_before,
        "load_after": f"{os.getloadavg()[0]:.2f}",
        "tokenizer": tok_path,
        "chars_per_token": cpt,
        "construction": construction,
        "targets": targets_table(all_results, construction),
        "tokens_per_row": tokens_per_row,
    }
    out = args.out or (None if args.quick else REPO / "benches" / "RESULTS.md")
    command = "python benches/bench_collators.py" + (" --quick" if args.quick else "")
    text = write_report(out, all_results, info, extras, command, started, elapsed, args.quick)
    print()
    print(text)
    gc.unfreeze()
    print(f"\nwrote {out}" if out else "\n(--quick: no file written; pass --out FILE to keep the report)")
    if args.json:
        records = [
            {
                "case": r.case,
                "method": r.method,
                "tokens_per_pass": r.tokens,
                "rows_per_pass": r.rows,
                "passes_s": r.passes,
                "best_s": r.best,
                "median_s": r.median,
                "peak_bytes": r.peak_bytes,
                "out_bytes": r.out_bytes,
                "equal_exact_pct": r.equal_exact,
                "equal_truth_pct": r.equal_truth,
                "equal_trl_pct": r.equal_trl,
                "trained_rows_pct": r.trained_rows,
            }
            for rs in all_results.values()
            for r in rs.values()
        ]
        payload = {"info": info, "construction": construction, "results": records}
        args.json.write_text(json.dumps(payload, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
