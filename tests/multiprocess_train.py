"""One rank of tests/test_multiprocess.py: transformers' ``Trainer`` under ``torchrun`` (gloo, CPU).

Run as ``python -m torch.distributed.run --nproc_per_node=2 tests/multiprocess_train.py OUT FAMILY
START_METHOD...`` (FAMILY: a test tokenizer already built, e.g. ``qwen2``). For each START_METHOD
(``fork``, ``spawn``) in turn, each rank trains a fresh tiny random ``LlamaForCausalLM`` with
sftmask's collator as the ``data_collator`` and two DataLoader workers started that way (with
``spawn`` the collator travels to them pickled). A forward pre-hook on the model checks every batch
the model receives against the ground truth (tests/ground_truth.py) and a forward hook keeps its
loss; after training the ranks gather each other's parameter digests. Each rank writes
``OUT/<START_METHOD>-rank<N>.json``; the test reads and asserts on them.

Everything heavy is imported inside ``train``: ``spawn`` workers re-import this file as
``__mp_main__`` and need only what unpickling the collator imports.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
sys.path.insert(0, str(Path(__file__).parent))

IGNORE = -100


def chats() -> list[list[dict]]:
    """Sixteen distinct conversations (single and multi-turn, system and tool turns), so that the
    two ranks' shards are disjoint sets of rows."""
    out = []
    for i in range(16):
        chat = [{"role": "user", "content": f"Question {i}: what is {i} + {i}?"}]
        chat.append({"role": "assistant", "content": f"\n{i} + {i} = {2 * i}."})
        if i % 2:
            chat.insert(0, {"role": "system", "content": "Answer briefly."})
        if i % 3 == 0:
            chat += [
                {"role": "user", "content": "And the weather?"},
                {"role": "assistant", "content": "<tool_call>get_weather</tool_call>"},
                {"role": "tool", "content": "sunny" if i % 2 else "rain"},
                {"role": "assistant", "content": f" It is {'sunny' if i % 2 else 'raining'}."},
            ]
        out.append(chat)
    return out


def digest(model) -> str:
    """SHA-256 over every parameter's name and exact bytes."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def cmdline(pid: int | str = "self") -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()


def children() -> list[tuple[int, str]]:
    """(pid, command line) of this process's children: its DataLoader workers, among others."""
    out = []
    for task in Path("/proc/self/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                out.append((int(pid), cmdline(pid)))
            except OSError:
                pass  # exited meanwhile
    return out


def train(out_dir: Path, family: str, start_method: str) -> None:
    """One training run of a fresh model, its DataLoader workers started by ``start_method``;
    writes ``out_dir/<start_method>-rank<N>.json``."""
    import torch
    import torch.distributed as dist
    import transformers

    import sftmask
    from chat_formats import CHATML
    from conftest import load_hf_tokenizer, load_tokenizer, short_cpu_run, tiny_llama
    from ground_truth import truth_by_ids

    # The Trainer's DataLoader takes the default start method (it has no argument for one).
    torch.multiprocessing.set_start_method(start_method, force=True)

    tok = load_hf_tokenizer(family)
    truth = truth_by_ids(load_tokenizer(family), chats(), CHATML)
    assert len(truth) == 16, "conversations must encode to distinct rows"
    dataset = [{"input_ids": list(ids)} for ids in truth]
    collator = sftmask.DataCollatorForCompletionOnlyLM(CHATML.response, list(CHATML.instructions), tokenizer=tok)

    model = tiny_llama(len(tok), max_position_embeddings=512)
    init_digest = digest(model)
    seen: list[list[int]] = []  # ids of every row the model received, in order
    losses: list[float] = []
    padded = [0]  # padding positions checked
    failures: list[str] = []
    children_seen: list[list[tuple[int, str]]] = []  # at each forward

    def check_batch(module, args, kwargs):
        # Runs on the model's own inputs, after the Trainer, accelerate and DDP had them.
        ids, mask, labels = kwargs["input_ids"], kwargs["attention_mask"].bool(), kwargs["labels"]
        for row in range(ids.shape[0]):
            key = ids[row][mask[row]].tolist()
            seen.append(key)
            expected = truth.get(tuple(key))
            if expected is None:
                failures.append(f"row not in the dataset: {key}")
            elif labels[row][mask[row]].tolist() != expected:
                failures.append(f"labels differ from the ground truth on row {key}")
            padded[0] += int((~mask[row]).sum())
            if (labels[row][~mask[row]] != IGNORE).any():
                failures.append(f"a padding position is trained on row {key}")
        children_seen.append(children())

    def keep_loss(module, args, kwargs, output):
        losses.append(float(output.loss.detach()))

    model.register_forward_pre_hook(check_batch, with_kwargs=True)
    model.register_forward_hook(keep_loss, with_kwargs=True)

    targs = transformers.TrainingArguments(
        **short_cpu_run(str(out_dir / f"trainer-{start_method}"), max_steps=3),
        ddp_backend="gloo",
        dataloader_num_workers=2,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(model=model, args=targs, train_dataset=dataset, data_collator=collator)
    trainer.train()

    rank, world = dist.get_rank(), dist.get_world_size()
    final = digest(model)
    digests: list[str | None] = [None] * world
    dist.all_gather_object(digests, final)
    result = {
        "rank": rank,
        "world_size": world,
        "backend": dist.get_backend(),
        "start_method": torch.multiprocessing.get_start_method(),
        "ddp": type(trainer.model_wrapped).__name__,
        "rows": seen,
        "failures": failures,
        "padded_positions": padded[0],
        "losses": losses,
        "all_finite": all(math.isfinite(x) for x in losses),
        "logged_losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
        "init_digest": init_digest,
        "final_digest": final,
        "gathered_digests": digests,
        "children": children_seen,
        "cmdline": cmdline(),
        "global_step": trainer.state.global_step,
        "local_rank_env": os.environ.get("LOCAL_RANK"),
    }
    (out_dir / f"{start_method}-rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()


def main() -> None:
    # One launch for every start method: starting the ranks is most of the time on a small machine.
    out_dir, family, *start_methods = sys.argv[1:]
    for start_method in start_methods:
        train(Path(out_dir), family, start_method)


if __name__ == "__main__":
    main()
