"""Multi-process training: ``torchrun --nproc_per_node=2`` (gloo, CPU) running transformers' ``Trainer``
with sftmask's collator and two DataLoader workers per rank, forked and spawned.

The ranks (tests/multiprocess_train.py) check every batch their model receives against the ground
truth and write what they saw; this test asserts on those files: exact labels on every row, each
rank its own shard, finite losses, parameters identical across ranks after training (and changed
by it), and workers started the way asked (with ``spawn``, the collator reached them pickled).
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from build_tokenizers import tokenizer_path

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

SCRIPT = Path(__file__).parent / "multiprocess_train.py"
FAMILY = "qwen2"
TIMEOUT_S = 300
START_METHODS = ("fork", "spawn")


def distributed_unavailable() -> str | None:
    if not torch.distributed.is_available():
        return "this torch build has no torch.distributed"
    if not torch.distributed.is_gloo_available():
        return "this torch build has no gloo backend"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(out: Path) -> subprocess.CompletedProcess:
    """One ``torchrun`` launch that trains once per start method."""
    tokenizer_path(FAMILY)  # built (or read from the cache) once here, not by both ranks at once
    cmd = [
        sys.executable,  # this venv's torch, not whatever `torchrun` is first on PATH
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        str(SCRIPT),
        str(out),
        FAMILY,
        *START_METHODS,
    ]
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    # Its own session, so that a hang is ended with every rank and worker it started.
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"torchrun ran past {TIMEOUT_S} s:\n{output[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, output)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    reason = distributed_unavailable()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("torchrun")
    run = torchrun(out)
    assert run.returncode == 0, run.stdout[-6000:]
    return out


@pytest.mark.parametrize("start_method", START_METHODS)
def test_torchrun_trainer(results: Path, start_method: str):
    ranks = [json.loads((results / f"{start_method}-rank{r}.json").read_text()) for r in range(2)]

    for r, res in enumerate(ranks):
        assert res["rank"] == r and res["world_size"] == 2 and res["backend"] == "gloo"
        assert res["ddp"] == "DistributedDataParallel"
        assert res["global_step"] == 3
        # Exact labels on every row the model received (checked inside the run), padding ignored.
        assert res["failures"] == []
        assert len(res["rows"]) == 3 * 2, "three steps of two rows"
        assert res["padded_positions"] > 0, "no batch was padded: the padding check saw nothing"
        assert res["losses"] and res["all_finite"], res["losses"]
        assert res["logged_losses"] and all(math.isfinite(x) for x in res["logged_losses"])
        # The workers exist and were started as asked: spawned ones run multiprocessing's
        # spawn entry point (the collator came to them pickled); forked ones are copies of the rank.
        children = {pid: cmd for at_step in res["children"] for pid, cmd in at_step}
        if start_method == "spawn":
            workers = [pid for pid, cmd in children.items() if "spawn_main" in cmd]
        else:
            workers = [pid for pid, cmd in children.items() if cmd == res["cmdline"]]
        assert len(workers) >= 2, children
    # Each rank its own shard: no row reached both.
    rows0, rows1 = ({tuple(x) for x in res["rows"]} for res in ranks)
    assert len(rows0) == len(rows1) == 6 and not rows0 & rows1
    # Gradients were all-reduced: the ranks saw different rows, trained, and still agree bit for bit.
    assert ranks[0]["init_digest"] == ranks[1]["init_digest"]
    assert ranks[0]["final_digest"] != ranks[0]["init_digest"], "training changed no parameter"
    assert ranks[0]["final_digest"] == ranks[1]["final_digest"]
    assert ranks[0]["gathered_digests"] == ranks[1]["gathered_digests"] == [ranks[0]["final_digest"]] * 2
