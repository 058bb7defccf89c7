"""Integration runs on CPU, offline: the collator inside real training loops and DataLoaders.

A tiny randomly initialised ``LlamaForCausalLM`` is sized to a real test tokenizer (Qwen2's
vocabulary); no hub is needed. Each run checks that training happens (finite loss, parameters
change) and that the labels the model received are the ground-truth mask.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import sftmask
from build_tokenizers import tokenizer_path
from chat_formats import CHATML, render
from conftest import Recorder, load_hf_tokenizer, load_tokenizer, short_cpu_run, tiny_llama
from ground_truth import truth_by_ids

transformers = pytest.importorskip("transformers")

CHATS = [
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "\nHello! How can I help?"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": " 4"},
        {"role": "user", "content": "3+3?"},
        {"role": "assistant", "content": "6, of course."},
    ],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
    [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "<tool_call>get_weather</tool_call>"},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "\nIt is sunny."},
    ],
]


def chat_truth(suffix: str = ""):
    return truth_by_ids(load_tokenizer("qwen2"), CHATS, CHATML, suffix)


def check_batches(batches, truth):
    seen = 0
    for batch in batches:
        mask = batch["attention_mask"].bool()
        for row in range(batch["input_ids"].shape[0]):
            ids = tuple(batch["input_ids"][row][mask[row]].tolist())
            assert batch["labels"][row][mask[row]].tolist() == truth[ids]
            seen += 1
    assert seen > 0


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_trained(model, before, log_history):
    losses = [h["loss"] for h in log_history if "loss" in h]
    assert losses and all(math.isfinite(x) for x in losses)
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert changed, "no parameter changed"


def test_transformers_trainer(tmp_path):
    tok = load_hf_tokenizer("qwen2")
    truth = chat_truth()
    dataset = [{"input_ids": list(ids)} for ids in truth] * 2
    collator = Recorder(
        sftmask.DataCollatorForCompletionOnlyLM(CHATML.response, list(CHATML.instructions), tokenizer=tok)
    )
    model = tiny_llama(len(tok), max_position_embeddings=512)
    before = snapshot(model)
    args = transformers.TrainingArguments(
        **short_cpu_run(str(tmp_path), max_steps=3),
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    trainer.train()
    assert_trained(model, before, trainer.state.log_history)
    check_batches(collator.batches, truth)


def test_trl_0_19_sft_trainer(tmp_path):
    """An existing TRL 0.19.1 script, with only the import changed."""
    trl = pytest.importorskip("trl")
    if not trl.__version__.startswith("0.19"):
        pytest.skip(f"TRL {trl.__version__}: this run is for the last TRL with the class")
    import datasets

    tok = load_hf_tokenizer("qwen2")
    truth = chat_truth(suffix=tok.eos_token)  # TRL's dataset preparation appends the EOS
    texts = [render(CHATML, c) for c in CHATS] * 2
    collator = Recorder(
        sftmask.DataCollatorForCompletionOnlyLM(CHATML.response, list(CHATML.instructions), tokenizer=tok)
    )
    model = tiny_llama(len(tok), max_position_embeddings=512)
    before = snapshot(model)
    config = trl.SFTConfig(
        **short_cpu_run(str(tmp_path), max_steps=3),
        dataset_text_field="text",
        packing=False,
        max_length=512,
        dataset_kwargs={"add_special_tokens": False},
    )
    trainer = trl.SFTTrainer(
        model=model,
        args=config,
        train_dataset=datasets.Dataset.from_dict({"text": texts}),
        processing_class=tok,
        data_collator=collator,
    )
    trainer.train()
    assert_trained(model, before, trainer.state.log_history)
    check_batches(collator.batches, truth)


DATALOADER_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from transformers import PreTrainedTokenizerFast
    import sftmask

    def main():
        context, tokenizer_file = sys.argv[1], sys.argv[2]
        tok = PreTrainedTokenizerFast(tokenizer_file=tokenizer_file, pad_token="<|endoftext|>")
        rows = [tok.encode(f"<|im_start|>user\\nq{i}<|im_end|>\\n<|im_start|>assistant\\n\\nanswer {i}<|im_end|>\\n")
                for i in range(64)]
        collator = sftmask.DataCollatorForCompletionOnlyLM("<|im_start|>assistant\\n", tokenizer=tok, num_threads=2)
        # The parent uses the parallel path first (well above the threshold), then forks workers.
        big = collator([{"input_ids": r} for r in rows] * 1000)
        assert big["labels"].shape[0] == 64000
        loader = torch.utils.data.DataLoader(
            [{"input_ids": r} for r in rows], batch_size=8, num_workers=2, collate_fn=collator,
            multiprocessing_context=context)
        n = sum(int((b["labels"] != -100).sum()) for b in loader)
        expected = int((collator([{"input_ids": r} for r in rows])["labels"] != -100).sum())
        assert n == expected, (n, expected)
        print("ok", context, n)

    if __name__ == "__main__":
        main()
    """
)


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers(tmp_path: Path, context: str):
    """fork after parallel use must not deadlock; spawn must pickle the collator."""
    script = tmp_path / "loader.py"
    script.write_text(DATALOADER_SCRIPT)
    try:
        out = subprocess.run(
            [sys.executable, str(script), context, str(tokenizer_path("qwen2"))],
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"DataLoader with {context} workers hung")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith(f"ok {context}")
