"""RSS over many collate calls (issue 6): a training-loop-shaped workload that must not grow.

    python tests/memory_loop.py [--calls 10000] [--family qwen2]

Each call collates a batch of 8 chat examples of ~700–1200 tokens (Python lists, as a
`datasets` row gives them) into torch tensors, alternating padded and padding-free collators;
every 10th batch has a row without a template (``on_missing="ignore"``), every 100th call has a
bad id (the error path) and every 50th call goes through ``inspect``/``trained_text``. RSS is
read from ``/proc/self/statm`` after a warm-up and every 1,000 calls; the result is one JSON
line. ``tests/test_memory.py`` runs it (2,000 calls; 10,000 with ``SFTMASK_LONG_TESTS=1``), and
``docs/hostile-inputs.md`` records a 10,000-call run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "fixtures")]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def make_rows(family: str, n: int, seed: int = 0) -> list[list[int]]:
    from tokenizers import Tokenizer

    from build_tokenizers import tokenizer_path
    from chat_formats import CHATML

    tok = Tokenizer.from_file(str(tokenizer_path(family)))
    rng = random.Random(seed)
    words = "the model answers every question with care and precision , then stops".split()
    rows = []
    for _ in range(n):
        turns = []
        for role in ("user", "assistant") * rng.randrange(1, 3):
            turns.append(CHATML.roles[role] + " ".join(rng.choices(words, k=rng.randrange(150, 260))) + CHATML.end)
        rows.append(tok.encode("".join(turns), add_special_tokens=False).ids)
    return rows


def run(calls: int, family: str = "qwen2", report_every: int = 1000) -> dict:
    import warnings

    from build_tokenizers import fixture_info, tokenizer_path
    from chat_formats import CHATML
    from sftmask import DataCollatorForCompletionOnlyLM

    path = str(tokenizer_path(family))
    pad = fixture_info(family)["pad_token_id"] or 0
    kw = {"tokenizer": path, "pad_token_id": pad, "on_missing": "ignore"}
    padded = DataCollatorForCompletionOnlyLM(CHATML.response, list(CHATML.instructions), **kw)
    flat = DataCollatorForCompletionOnlyLM(CHATML.response, padding_free=True, **kw)
    pool = make_rows(family, 64)
    untrained = pool[0][:5]
    rng = random.Random(1)

    def step(i: int) -> None:
        batch = [{"input_ids": pool[rng.randrange(len(pool))]} for _ in range(8)]
        if i % 10 == 0:
            batch[3] = {"input_ids": untrained}
        collator = flat if i % 2 else padded
        if i % 100 == 99:
            bad = [*batch, {"input_ids": [*pool[0], -5]}]
            try:
                collator(bad)
            except ValueError:
                pass
            else:
                raise AssertionError("a negative id was accepted")
            return
        out = collator(batch)
        assert out["labels"].shape[0] == (1 if i % 2 else 8)
        if i % 50 == 0:
            padded.trained_text(pool[i % len(pool)])

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would be a bug here (on_missing="ignore")
        for i in range(200):  # warm-up: allocator pools, torch, the vocabulary cache
            step(i)
        gc.collect()
        start = rss_mb()
        samples = [(0, round(start, 1))]
        t0 = time.perf_counter()
        for i in range(calls):
            step(i)
            if (i + 1) % report_every == 0:
                gc.collect()
                samples.append((i + 1, round(rss_mb(), 1)))
        elapsed = time.perf_counter() - t0
    gc.collect()
    end = rss_mb()
    return {
        "calls": calls,
        "family": family,
        "rss_start_mb": round(start, 1),
        "rss_end_mb": round(end, 1),
        "growth_mb": round(end - start, 1),
        "max_mb": max(s for _, s in samples),
        "samples": samples,
        "seconds": round(elapsed, 1),
        "examples": padded.stats.examples + flat.stats.examples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--family", default="qwen2")
    args = parser.parse_args()
    print(json.dumps(run(args.calls, args.family)))


if __name__ == "__main__":
    main()
