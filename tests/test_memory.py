"""Memory (issue 6): RSS stays flat over many batches, outputs and inputs are not kept alive,
and the per-tokenizer caches (Rust and Python) stay bounded.

RSS is read from ``/proc/self/statm`` (Linux). Bounds are generous: they catch a leak per call
or per tokenizer, not allocator noise. ``SFTMASK_LONG_TESTS=1`` runs the 10,000-call loop.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import weakref

import numpy as np
import pytest

import sftmask
import synthetic
from sftmask import DataCollatorForCompletionOnlyLM, _tokenizer

LINUX = sys.platform.startswith("linux")
LONG = os.environ.get("SFTMASK_LONG_TESTS") == "1"
PAD = synthetic.pad_id("byte_level")
ROW = synthetic.CHAT_ROW


@pytest.mark.skipif(not LINUX, reason="reads /proc/self/statm")
def test_rss_is_flat_over_many_collations():
    """`tests/memory_loop.py`: 2,000 calls here (10,000 with SFTMASK_LONG_TESTS=1), real
    tokenizer, ~8k tokens per batch, padded and padding-free, torch output, error path included."""
    import memory_loop

    calls = 10_000 if LONG else 2_000
    result = memory_loop.run(calls, report_every=500)
    assert result["examples"] > 7 * calls
    # A leak of even one small object per call shows up as steady growth; 16 MB is allocator slack.
    assert result["growth_mb"] < 16, result
    last_half = [rss for _, rss in result["samples"][len(result["samples"]) // 2 :]]
    assert max(last_half) - min(last_half) < 8, result


def _outputs_die(collator, batch, **kw):
    out = collator(batch, **kw)
    keys = [k for k, v in out.items() if hasattr(v, "shape")]
    refs = [weakref.ref(out[k]) for k in keys]
    # The dict's reference(s) and getrefcount's argument: nothing else holds an output (computed
    # outside `assert`, whose rewriting would hold one more). cu_seq_lens_q and cu_seq_lens_k are
    # one array, as in transformers' DataCollatorWithFlattening.
    counts = [sys.getrefcount(out[k]) - sum(out[j] is out[k] for j in keys) for k in keys]
    assert counts == [1] * len(keys)
    # numpy arrays own their Rust buffer through `.base` (torch tensors keep the array alive).
    bases = [sys.getrefcount(out[k].base) for k in keys if isinstance(out[k], np.ndarray)]
    assert set(bases) <= {2}
    del out
    gc.collect()
    assert all(r() is None for r in refs), "an output array outlived its batch"


@pytest.mark.parametrize("return_tensors", ["np", "pt"])
@pytest.mark.parametrize("padding_free", [False, True])
def test_outputs_are_not_kept_alive(tok_path, return_tensors, padding_free):
    c = DataCollatorForCompletionOnlyLM(
        "Bot:",
        tokenizer=tok_path,
        pad_token_id=PAD,
        padding_free=padding_free,
        return_tensors=return_tensors,
        on_missing="ignore",
    )
    _outputs_die(c, [ROW, ROW[:5]])
    _outputs_die(c, synthetic.big_batch(0))  # the parallel path


def _inputs(kind):
    if kind == "lists":
        return [list(ROW), ROW[:5]]
    if kind == "dicts of int64 arrays":
        return [{"input_ids": np.array(ROW)}, {"input_ids": np.array(ROW[:5])}]
    if kind == "int32 arrays":
        return [np.array(ROW, dtype=np.int32), np.array(ROW, dtype=np.int32)]
    if kind == "strided arrays (converted)":
        return [np.repeat(np.array(ROW), 2)[::2], np.array(ROW, dtype=">i8")]
    if kind == "torch tensors":
        import torch

        return [torch.tensor(ROW), torch.tensor(ROW)[::2]]
    raise ValueError(kind)


@pytest.mark.parametrize(
    "kind", ["lists", "dicts of int64 arrays", "int32 arrays", "strided arrays (converted)", "torch tensors"]
)
@pytest.mark.parametrize("bad", [False, True])
def test_inputs_are_not_retained(tok_path, kind, bad):
    """Refcounts of the batch, its examples and their id containers are unchanged by a call,
    also when the call fails (an id out of the vocabulary in the last row)."""
    c = DataCollatorForCompletionOnlyLM("Bot:", tokenizer=tok_path, pad_token_id=PAD, on_missing="ignore")
    batch = _inputs(kind)
    if bad:
        batch.append([*ROW, 10**6])
    inner = [e["input_ids"] if isinstance(e, dict) else e for e in batch]
    before = [sys.getrefcount(x) for x in [batch, *batch, *inner]]
    for _ in range(50):
        try:
            c(batch)
        except ValueError:
            assert bad
    gc.collect()
    after = [sys.getrefcount(x) for x in [batch, *batch, *inner]]
    assert after == before
    refs = [weakref.ref(x) for x in inner if not isinstance(x, list)]
    del batch, inner
    gc.collect()
    assert all(r() is None for r in refs), "an input array was kept alive"


def test_inspection_results_are_not_kept_alive(tok_path):
    c = DataCollatorForCompletionOnlyLM("Bot:", tokenizer=tok_path, pad_token_id=PAD)
    seen = c._masker.inspect(ROW)
    ref = weakref.ref(seen["labels"])
    count = sys.getrefcount(seen["labels"])
    assert count == 2
    del seen
    gc.collect()
    assert ref() is None


def test_python_cache_of_tokenizers_objects_is_bounded(tok_path):
    """`tokenizers.Tokenizer` objects cannot be weakly referenced: at most 4 are remembered."""
    from tokenizers import Tokenizer

    text = open(tok_path, encoding="utf-8").read()
    for _ in range(10):
        tok = Tokenizer.from_str(text)
        tok.enable_padding(pad_id=PAD, pad_token="<pad>")
        DataCollatorForCompletionOnlyLM("Bot:", tokenizer=tok)
        assert len(_tokenizer._strong_cache) <= _tokenizer._STRONG_CACHE_SIZE == 4
    # Hitting the cache: the same object gives the same table without rebuilding.
    c1 = DataCollatorForCompletionOnlyLM("Bot:", tokenizer=tok)
    c2 = DataCollatorForCompletionOnlyLM("Bot:", tokenizer=tok)
    assert c1._vocab is c2._vocab


def test_python_cache_of_transformers_tokenizers_is_weak():
    from transformers import PreTrainedTokenizerFast

    from conftest import load_tokenizer

    backend = load_tokenizer("gpt2")
    gc.collect()
    n = len(_tokenizer._weak_cache)
    tokenizers = [PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<|endoftext|>") for _ in range(3)]
    refs = [weakref.ref(t) for t in tokenizers]
    for t in tokenizers:
        DataCollatorForCompletionOnlyLM("B:", tokenizer=t)
    assert len(_tokenizer._weak_cache) == n + 3
    del tokenizers, t
    gc.collect()
    assert all(r() is None for r in refs)
    assert len(_tokenizer._weak_cache) == n, "the cache dropped its entries with their tokenizers"


_VOCAB_CACHE_CHILD = """
import gc, json, os, sys
import sftmask

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

size = int(sys.argv[1]) * 2**20
keep = sys.argv[2] == "keep"
def text(i):
    # a distinct tokenizer.json whose table is ~`size` bytes (one long added token)
    big = chr(ord("a") + i % 26) * size
    return json.dumps({"model": {"type": "BPE", "vocab": {"a": 0, f"x{i}": 1}, "merges": []},
                       "decoder": {"type": "ByteLevel"},
                       "added_tokens": [{"id": 2, "content": big, "special": True}]})

sftmask.Vocab.from_json(text(10_000))  # warm-up
gc.collect()
start = rss()
kept = []
for i in range(24):
    v = sftmask.Vocab.from_json(text(i))
    if keep:
        kept.append(v)
    del v
gc.collect()
print(json.dumps(rss() - start))
"""


@pytest.mark.skipif(not LINUX, reason="reads /proc/self/statm and uses glibc tunables")
def test_rust_vocabulary_cache_is_bounded():
    """The Rust table cache keeps at most 8 tables: building 24 distinct 8 MB tables without
    keeping them costs about 8 tables of RSS, not 24 (glibc is told to return every freed
    block of 64 KiB or more to the OS, so RSS follows the live tables)."""
    env = {**os.environ, "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536:glibc.malloc.trim_threshold=65536"}

    def growth(mode):
        out = subprocess.run(
            [sys.executable, "-c", _VOCAB_CACHE_CHILD, "8", mode], capture_output=True, text=True, timeout=300, env=env
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout)

    kept = growth("keep")
    dropped = growth("drop")
    assert kept > 20 * 8, f"the measurement sees live tables ({kept:.0f} MB for 24 kept)"
    assert dropped < 11 * 8, f"{dropped:.0f} MB for 24 dropped tables: the cache holds more than 8"


def test_vocab_cache_returns_one_table_per_text(tok_path):
    """Same text -> the same table (cache hit); this is what makes a second collator free."""
    text = open(tok_path, encoding="utf-8").read()
    a, b = sftmask.Vocab.from_json(text), sftmask.Vocab.from_json(text)
    assert a.fingerprint == b.fingerprint and len(a) == len(b)
