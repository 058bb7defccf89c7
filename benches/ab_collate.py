"""A/B of the collator's speed between two builds on one machine (e.g. before/after a refactor).

Run it once per build, alternating, in fresh processes; the old build from a wheel:

    pip install --no-deps --target /tmp/oldpkg OLD.whl
    PYTHONPATH=/tmp/oldpkg python benches/ab_collate.py; python benches/ab_collate.py

Prints best and median tokens/s of 15 passes of 20 calls, batch 8 and 64, ~1k-token Llama-3
rows (bench_collators.py's data), padded, torch output.
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_collators as bc
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

import sftmask

print(sftmask.__file__)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures"))
from build_tokenizers import tokenizer_path  # noqa: E402

path = str(tokenizer_path("llama3"))
tok = Tokenizer.from_file(path)
hf = PreTrainedTokenizerFast(
    tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<|finetune_right_pad_id|>"
)
rows = bc.make_rows(tok, 1000, False, 64, seed=7, cpt=bc.calibrate(tok))
col = sftmask.DataCollatorForCompletionOnlyLM(bc.RESPONSE, tokenizer=hf)
for bs in (8, 64):
    batch = [{"input_ids": ids} for ids in rows.ids[:bs]]
    for _ in range(20):
        col(batch)
    ts = []
    for _ in range(15):
        t = time.perf_counter()
        for _ in range(20):
            col(batch)
        ts.append((time.perf_counter() - t) / 20)
    n = sum(len(r) for r in rows.ids[:bs])
    print(bs, f"best {n / min(ts) / 1e6:.1f}M tok/s median {n / statistics.median(ts) / 1e6:.1f}M")
