#!/usr/bin/env python3
"""Where sftmask's collate spends its time on the headline case (batch 8, ~1k tokens/row, list input).

Prints a per-layer breakdown (each variant timed alone, best of many calls), then, with
``--loop SECONDS``, calls the chosen variant in a loop for an external profiler::

    python benches/profile_collate.py                                  # breakdown
    python benches/profile_collate.py --loop 20 --variant pt > out.txt &   # prints READY after setup
    perf record -e cpu-clock -F 4999 -g -p $! -o perf.data -- sleep 10    # then: perf report -i perf.data
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_collators as bc


def best_us(fn, arg, n: int = 2000) -> float:
    fn(arg)
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        fn(arg)
        best = min(best, time.perf_counter() - t0)
    return best * 1e6


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--multi", action="store_true")
    parser.add_argument("--loop", type=float, default=0.0, help="call --variant for this many seconds")
    parser.add_argument("--variant", default="pt")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    import torch
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    import sftmask
    from sftmask import collator as collator_mod

    torch.set_num_threads(1)
    path = bc.find_tokenizer(None)
    tok = Tokenizer.from_file(str(path))
    hf = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_file(str(path)),
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
    )
    rows = bc.make_rows(tok, 1000, args.multi, args.rows, seed=7, cpt=bc.calibrate(tok))
    tokens = sum(map(len, rows.ids))
    batch = [{"input_ids": ids} for ids in rows.ids]
    batch_np = [{"input_ids": np.asarray(ids, dtype=np.int64)} for ids in rows.ids]
    instruction = bc.USER if args.multi else None
    col = sftmask.DataCollatorForCompletionOnlyLM(bc.RESPONSE, instruction, tokenizer=hf)
    masker = col._masker
    pad = col.pad_token_id
    floor = bc.floor_padded(pad)
    arrays, _ = masker.collate(batch)
    single = sftmask.DataCollatorForCompletionOnlyLM(bc.RESPONSE, instruction, tokenizer=hf, num_threads=1)._masker

    variants = {
        "floor": floor,
        "pt": col,
        "np": lambda b: col(b, return_tensors="np"),
        "masker": masker.collate,
        "masker-1thread": single.collate,
        "masker-numpy-input": lambda _b: masker.collate(batch_np),
        "to_torch": lambda _b: collator_mod._to_torch(dict(arrays)),
        "list-of-lists-only": lambda b: [e["input_ids"] for e in b],
        "np.full-only (3 outputs)": lambda _b: [
            np.full((len(rows.ids), max(map(len, rows.ids))), pad) for _ in range(3)
        ],
    }
    if args.loop:
        fn = variants[args.variant]
        print("READY", flush=True)  # setup done: a profiler may attach now (perf record -p PID)
        end = time.perf_counter() + args.loop
        calls = 0
        while time.perf_counter() < end:
            for _ in range(100):
                fn(batch)
            calls += 100
        print(f"{args.variant}: {calls} calls")
        return 0
    print(f"{len(rows.ids)} rows, {tokens} tokens ({tokens / len(rows.ids):.0f}/row), multi={args.multi}")
    base = best_us(floor, batch)
    for name, fn in variants.items():
        us = best_us(fn, batch)
        print(f"{name:28s} {us:9.1f} us  {tokens / us:7.1f} M tok/s  {us / base:5.2f}x floor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
