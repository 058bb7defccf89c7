"""Threads, fork, pickling and thread counts (issue 6), beyond ``tests/test_collator_api.py``
(which has one small-batch thread test, one multiprocessing-fork test and one pickle test).

Every wait on another thread or process has a timeout: a hang fails the test instead of the run.
"""

from __future__ import annotations

import copy
import json
import multiprocessing
import os
import pickle
import re
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import synthetic
from build_tokenizers import tokenizer_path
from conftest import load_tokenizer
from sftmask import DataCollatorForCompletionOnlyLM
from sftmask._core import PARALLEL_MIN_TOKENS

PAD = synthetic.pad_id("byte_level")
ROW = synthetic.CHAT_ROW  # <|u|>User: a\n<|a|>Bot: b\n\n<|u|>User: b<|a|>Bot: a
LINUX = sys.platform.startswith("linux")


def make(tok_path, **kw):
    kw.setdefault("pad_token_id", PAD)
    kw.setdefault("return_tensors", "np")
    kw.setdefault("on_missing", "ignore")
    return DataCollatorForCompletionOnlyLM("Bot:", ["User:"], tokenizer=tok_path, **kw)


def big_batch(seed: int, rows: int = 300) -> list[list[int]]:
    out = synthetic.big_batch(seed, rows, PARALLEL_MIN_TOKENS)
    assert sum(map(len, out)) >= PARALLEL_MIN_TOKENS
    return out


small_batch = synthetic.small_batch


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        np.array_equal(a[k], b[k]) if isinstance(a[k], np.ndarray) else a[k] == b[k] for k in a
    )


# -- threads --------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding_free", [False, True])
def test_many_threads_on_one_collator_with_parallel_batches(tok_path, padding_free):
    """16 Python threads share one collator; big batches run on its rayon pool at the same time."""
    collator = make(tok_path, num_threads=2, padding_free=padding_free)
    batches = [big_batch(i) if i % 4 == 0 else small_batch(i) for i in range(48)]
    serial = make(tok_path, num_threads=1, padding_free=padding_free)
    expected = [serial(b) for b in batches]
    start = threading.Barrier(16)

    def work(i):
        start.wait(timeout=30) if i < 16 else None
        return collator(batches[i])

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(work, range(len(batches)), timeout=120))
    for i, (e, g) in enumerate(zip(expected, got)):
        assert same(e, g), f"batch {i} differs when collated concurrently"
    # The counters are atomic: nothing is lost under contention.
    s, t = collator.stats, serial.stats
    assert (s.examples, s.tokens, s.trained_tokens, s.rows_without_template) == (
        t.examples,
        t.tokens,
        t.trained_tokens,
        t.rows_without_template,
    )


def test_threads_mixing_collators_thread_counts_and_inspection(tok_path):
    """Collators with different num_threads (so different pools, built concurrently), plus
    render/trained_text, all at once; each result equals its serial value."""
    collators = [make(tok_path, num_threads=n) for n in (1, 2, 3, 4)]
    flat = make(tok_path, num_threads=3, padding_free=True)
    jobs = []
    for i in range(40):
        c = collators[i % 4] if i % 5 else flat
        jobs.append((c, big_batch(100 + i, rows=200) if i % 3 == 0 else small_batch(i)))
    expected = [make(tok_path, num_threads=1, padding_free=c.padding_free)(b) for c, b in jobs]
    trained = collators[0].trained_text(ROW)

    def work(i):
        c, b = jobs[i]
        if i % 7 == 0:
            assert c.trained_text(ROW) == trained
            assert c.render({"input_ids": ROW}).plain()
        return c(b)

    with ThreadPoolExecutor(12) as pool:
        got = list(pool.map(work, range(len(jobs)), timeout=120))
    assert all(same(e, g) for e, g in zip(expected, got))


def test_errors_and_warnings_from_many_threads(tok_path):
    """Bad rows and missing templates in concurrent calls: each call gets its own error or warning.
    (Warnings are recorded once, around all threads: `warnings.catch_warnings` is process-global.)"""
    collator = DataCollatorForCompletionOnlyLM("Bot:", tokenizer=tok_path, pad_token_id=PAD, num_threads=2)
    strict = DataCollatorForCompletionOnlyLM("Bot:", tokenizer=tok_path, pad_token_id=PAD, on_missing="error")

    def work(i):
        batch = big_batch(i, rows=250)
        if i % 3 == 0:
            collator([*batch, [6, 8]])  # one row without a template: one warning
            return None
        if i % 3 == 1:
            batch[i] = [*ROW, 10**6]
        else:
            batch[i] = [6, 8]
        try:
            (collator if i % 3 == 1 else strict)(batch)
        except ValueError as e:
            return str(e)
        return "no error"

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ThreadPoolExecutor(6) as pool:
            got = list(pool.map(work, range(12), timeout=120))
    for i, g in enumerate(got):
        if i % 3 == 1:
            assert g is not None and g.startswith(f"row {i}: token id 1000000"), g
        elif i % 3 == 2:
            assert g is not None and g.startswith(f"row {i}: response template 'Bot:' not found"), g
    messages = [str(w.message) for w in caught]
    assert len(messages) == 4
    for m in messages:
        n = int(re.match(r"1 of (\d+) examples in this batch have no response template", m).group(1))
        assert f"(rows {n - 1});" in m, m


# -- fork -----------------------------------------------------------------------------------------


def _fork_and_collate(collator, batches, timeout=60.0):
    """os.fork(); the child collates every batch and writes the label sums to a pipe. Returns them."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read)
            sums = [int(collator(b)["labels"].sum()) for b in batches]
            os.write(write, json.dumps(sums).encode())
            os._exit(0)
        except BaseException:
            os._exit(3)
    os.close(write)
    deadline = time.monotonic() + timeout
    data = b""
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail(f"the forked child hung for {timeout:.0f} s")
            ready, _, _ = select.select([read], [], [], left)
            if ready:
                chunk = os.read(read, 65536)
                if not chunk:
                    break
                data += chunk
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(read)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child status {status}"
    return json.loads(data)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_os_fork_after_parallel_use_then_parallel_in_the_child(tok_path):
    collator = make(tok_path, num_threads=2)
    batches = [big_batch(1), small_batch(2), big_batch(3)]
    expected = [int(collator(b)["labels"].sum()) for b in batches]  # the parent's pool is now running
    assert _fork_and_collate(collator, batches) == expected
    # The parent still works after the fork, and a second fork (a grandchild-like reuse) too.
    assert int(collator(batches[0])["labels"].sum()) == expected[0]
    assert _fork_and_collate(collator, batches) == expected


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_in_a_forked_child(tok_path):
    """A child that used its own fresh pool forks again (DataLoader worker spawning helpers)."""
    collator = make(tok_path, num_threads=2)
    batch = big_batch(4)
    expected = int(collator(batch)["labels"].sum())
    code = textwrap.dedent(
        """
        import os, sys, json
        sys.path.insert(0, sys.argv[2])
        import test_concurrency as t
        c = t.make(sys.argv[1], num_threads=2)
        b = t.big_batch(4)
        c(b)
        print(json.dumps(t._fork_and_collate(c, [b])))
        """
    )
    here = os.path.dirname(__file__)
    pid_out = _fork_and_collate_via_subprocess(code, tok_path, here)
    assert pid_out == [expected]


def _fork_and_collate_via_subprocess(code, tok_path, here):
    out = subprocess.run(
        [sys.executable, "-c", code, tok_path, here],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([here, os.path.join(here, "fixtures")])},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_while_another_thread_is_collating(tok_path):
    """Fork at arbitrary moments of a parallel collation in another thread (pool busy, locks
    possibly held): every child must still finish its own parallel work."""
    collator = make(tok_path, num_threads=2)
    batch = big_batch(5)
    expected = int(collator(batch)["labels"].sum())
    stop = threading.Event()
    errors = []

    def hammer():
        try:
            while not stop.is_set():
                collator(batch)
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=hammer, daemon=True)
    thread.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # Python 3.12+: fork with threads
            for i in range(12):
                time.sleep(0.003 * i)
                assert _fork_and_collate(collator, [batch], timeout=60) == [expected]
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive() and not errors


def test_dataloader_fork_workers_after_parallel_use(tok_path):
    torch = pytest.importorskip("torch")
    collator = make(tok_path, num_threads=2, return_tensors="pt")
    data = [r for r in big_batch(6, rows=400)]
    collator(data[:300])  # start the parent's pool
    loader = torch.utils.data.DataLoader(
        data, batch_size=100, num_workers=2, collate_fn=collator, multiprocessing_context="fork", timeout=60
    )
    got = [int(b["labels"].sum()) for b in loader]
    expected = [int(collator(data[i : i + 100])["labels"].sum()) for i in range(0, 400, 100)]
    assert got == expected


# -- pickling -------------------------------------------------------------------------------------

_PICKLE_CHILD = """
import pickle, sys
sys.path.insert(0, sys.argv[2])
from sftmask import DataCollatorForCompletionOnlyLM
kind = sys.argv[3]
if kind == "path":
    tok = sys.argv[1]
else:
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(sys.argv[1])
c = DataCollatorForCompletionOnlyLM("Bot:", ["User:", "<|u|>"], tokenizer=tok, pad_token_id=18, padding_free=True,
                                    train_on="last", num_threads=2, on_missing="error", return_tensors="np")
sys.stdout.buffer.write(pickle.dumps(c))
"""


@pytest.mark.parametrize("kind", ["path", "tokenizers.Tokenizer"])
def test_pickle_bytes_are_the_same_in_every_process(tok_path, kind):
    """`datasets` fingerprints a map() function by its pickle: the bytes must not depend on the
    process (no addresses, no hash seeds, no set order)."""
    source = tok_path if kind == "path" else str(tokenizer_path("gpt2"))
    blobs = []
    for seed in ("0", "1"):
        out = subprocess.run(
            [sys.executable, "-c", _PICKLE_CHILD, source, os.path.dirname(__file__), kind],
            capture_output=True,
            timeout=120,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert out.returncode == 0, out.stderr.decode()[-2000:]
        blobs.append(out.stdout)
    assert blobs[0] == blobs[1]
    c = pickle.loads(blobs[0])
    assert pickle.dumps(c) == blobs[0], "loading and dumping again gives the same bytes"


def test_pickle_ignores_use_and_round_trips_every_protocol(tok_path):
    c = make(tok_path, num_threads=2, padding_free=True, train_on="last")
    before = pickle.dumps(c)
    batch = big_batch(7)
    out = c(batch)
    assert pickle.dumps(c) == before, "collating does not change the pickled state"
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        c2 = pickle.loads(pickle.dumps(c, protocol=protocol))
        assert same(c2(batch), out), f"protocol {protocol}"
        assert c2.stats.examples == len(batch), "stats start afresh in the copy (they are not state)"
    c3 = copy.deepcopy(c)
    assert same(c3(batch), out) and repr(c3) == repr(c)


def _collate_in_spawned(blob, batch):
    collator = pickle.loads(blob)
    return collator(batch), pickle.dumps(collator)


def test_spawned_worker_gets_an_identical_collator(tok_path):
    """DataLoader workers with spawn/forkserver unpickle the collator in a fresh interpreter."""
    c = make(tok_path, num_threads=2)
    blob = pickle.dumps(c)
    batch = big_batch(8)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        out, blob2 = pool.apply_async(_collate_in_spawned, (blob, batch)).get(timeout=120)
    assert same(out, c(batch))
    assert blob2 == blob


# -- thread counts ----------------------------------------------------------------------------------

_THREADS_CHILD = """
import os, sys, json, time
sys.path.insert(0, sys.argv[2])
import synthetic
from sftmask import DataCollatorForCompletionOnlyLM, Encoder

def count():
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except FileNotFoundError:
            pass
    return sum(n.startswith("sftmask-") for n in names)

def pool_threads():
    # Pool threads name themselves when they start, which may be after the work is done; they
    # never exit, so wait until the count has been stable for a while.
    last, stable, deadline = count(), 0, time.monotonic() + 10
    while stable < 10 and time.monotonic() < deadline:
        time.sleep(0.03)
        now = count()
        stable = stable + 1 if now == last else 0
        last = now
    return last

plan = json.loads(sys.argv[3])
counts = []
for step in plan:
    if step["what"] == "encode":
        enc = Encoder.from_json(open(sys.argv[4], encoding="utf-8").read())
        enc.encode_batch(["User: a\\nBot: b"] * 64, num_threads=step.get("num_threads"))
    else:
        c = DataCollatorForCompletionOnlyLM("Bot:", tokenizer=sys.argv[1], pad_token_id=18, return_tensors="np",
                                            num_threads=step.get("num_threads"), on_missing="ignore")
        c(synthetic.big_batch(0) if step["what"] == "big" else synthetic.small_batch(0))
    counts.append(pool_threads())
print(json.dumps(counts))
"""


def _thread_counts(tok_path, plan, env_threads=None):
    env = {k: v for k, v in os.environ.items() if k != "RAYON_NUM_THREADS"}
    if env_threads is not None:
        env["RAYON_NUM_THREADS"] = env_threads
    here = os.path.dirname(__file__)
    out = subprocess.run(
        [sys.executable, "-c", _THREADS_CHILD, tok_path, here, json.dumps(plan), str(tokenizer_path("gpt2"))],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _default_threads():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@pytest.mark.skipif(not LINUX, reason="counts threads through /proc/self/task/*/comm")
def test_rayon_num_threads_is_honoured(tok_path):
    """The pool's threads are named `sftmask-N`, so their number is visible from outside."""
    assert _thread_counts(tok_path, [{"what": "small"}, {"what": "big"}], env_threads="3") == [0, 3]


@pytest.mark.skipif(not LINUX, reason="counts threads through /proc/self/task/*/comm")
def test_num_threads_overrides_rayon_num_threads(tok_path):
    plan = [{"what": "big", "num_threads": 2}, {"what": "big", "num_threads": 1}]
    assert _thread_counts(tok_path, plan, env_threads="5") == [2, 2], "num_threads=1 is serial: no new pool"


@pytest.fixture(scope="module")
def default_count(tok_path):
    return _thread_counts(tok_path, [{"what": "big"}])[0]


@pytest.mark.skipif(not LINUX, reason="counts threads through /proc/self/task/*/comm")
def test_unset_rayon_num_threads_uses_the_available_cpus(default_count):
    # available_parallelism() also honours cgroup CPU quotas, which may be lower than the affinity mask.
    assert 1 <= default_count <= _default_threads()


@pytest.mark.skipif(not LINUX, reason="counts threads through /proc/self/task/*/comm")
@pytest.mark.parametrize("env_threads", ["0", "abc", "-2", ""])
def test_invalid_rayon_num_threads_is_ignored(tok_path, env_threads, default_count):
    assert _thread_counts(tok_path, [{"what": "big"}], env_threads=env_threads) == [default_count]


@pytest.mark.skipif(not LINUX, reason="counts threads through /proc/self/task/*/comm")
def test_each_thread_count_keeps_one_pool_for_the_process(tok_path):
    """Documented: one pool per distinct thread count, reused, alive until the process ends."""
    plan = [
        {"what": "big", "num_threads": 2},
        {"what": "big", "num_threads": 3},
        {"what": "big", "num_threads": 2},
        {"what": "encode", "num_threads": 3},
        {"what": "encode", "num_threads": 4},
    ]
    assert _thread_counts(tok_path, plan) == [2, 5, 5, 5, 9]


def test_encoder_batch_in_threads_and_after_fork():
    """The Rust encoder (demo / preprocessing) uses the same pool rules."""
    from sftmask import Encoder

    enc = Encoder.from_json(tokenizer_path("gpt2").read_text(encoding="utf-8"))
    texts = [f"text number {i} " * (i % 7 + 1) for i in range(200)]
    expected = [e.ids for e in load_tokenizer("gpt2").encode_batch(texts, add_special_tokens=False)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda n: enc.encode_batch(texts, num_threads=n), [1, 2, 3, 4] * 2, timeout=120))
    assert all(r == expected for r in results)
