"""The newest TRL's SFTTrainer (1.x, transformers 5.x) with sftmask's collator, on CPU, offline.

This needs its own environment (TRL 0.19.1, the oracle of the rest of the suite, needs
transformers 4.x): `.ci/run` builds `.venv-trl-latest` and runs this file there. In the main
environment it is skipped.

What a user needs (documented in the README): pass the collator as `data_collator=`, keep
`SFTConfig(packing=False, padding_free=False)` (TRL refuses a custom collator otherwise) and put
`padding_free=True` on the collator instead. The trainer sends `{"input_ids", "labels"}` with
its own ragged labels; the collator ignores them and computes its own.
"""

from __future__ import annotations

import math

import pytest
import torch

import sftmask
from chat_formats import CHATML, render
from conftest import Recorder, load_hf_tokenizer, load_tokenizer, short_cpu_run, tiny_llama
from ground_truth import truth_by_ids

trl = pytest.importorskip("trl")
transformers = pytest.importorskip("transformers")

if int(trl.__version__.split(".")[0]) < 1:
    pytest.skip(f"TRL {trl.__version__}: run in the TRL 1.x environment (.ci/run does)", allow_module_level=True)

CHATS = [
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "\nHello! How can I help?"}],
    [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": " 4"},
        {"role": "user", "content": "3+3?"},
        {"role": "assistant", "content": "6, of course."},
    ],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
]


@pytest.mark.parametrize("padding_free", [False, True])
def test_newest_sft_trainer(tmp_path, padding_free):
    import datasets

    tok = load_hf_tokenizer("qwen2")
    plain = load_tokenizer("qwen2")
    suffix = tok.eos_token  # dataset preparation appends the EOS to text data
    truth = truth_by_ids(plain, CHATS, CHATML, suffix)
    collator = Recorder(
        sftmask.DataCollatorForCompletionOnlyLM(
            CHATML.response, list(CHATML.instructions), tokenizer=tok, padding_free=padding_free
        )
    )
    model = tiny_llama(len(tok), max_position_embeddings=512)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = trl.SFTConfig(
        **short_cpu_run(str(tmp_path), max_steps=3),
        packing=False,
        padding_free=False,
        max_length=512,
        dataset_kwargs={"add_special_tokens": False},
    )
    texts = [render(CHATML, c) for c in CHATS] * 2
    trainer = trl.SFTTrainer(
        model=model,
        args=config,
        train_dataset=datasets.Dataset.from_dict({"text": texts}),
        processing_class=tok,
        data_collator=collator,
    )
    trainer.train()

    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(math.isfinite(x) for x in losses)
    assert any(not torch.equal(before[n], p.detach()) for n, p in model.named_parameters())
    # The trainer sends its own ragged labels, which the collator ignores.
    assert all("labels" in keys and "input_ids" in keys for keys in collator.seen_keys)
    seen = 0
    for batch in collator.batches:
        if padding_free:
            cu = batch["cu_seq_lens_q"].tolist()
            for start, end in zip(cu, cu[1:]):
                ids = tuple(batch["input_ids"][0, start:end].tolist())
                expected = [-100, *truth[ids][1:]]
                assert batch["labels"][0, start:end].tolist() == expected
                seen += 1
        else:
            mask = batch["attention_mask"].bool()
            for row in range(batch["input_ids"].shape[0]):
                ids = tuple(batch["input_ids"][row][mask[row]].tolist())
                assert batch["labels"][row][mask[row]].tolist() == truth[ids]
                seen += 1
    assert seen > 0


def test_llama31_conversations_where_assistant_only_loss_cannot(tmp_path):
    """Llama-3.1's chat template has no ``{% generation %}`` tags: TRL 1.x's ``assistant_only_loss``
    refuses it. ``tokenize_and_mask`` on the same ``messages`` gives ``input_ids`` + ``labels`` that
    train exactly each answer and its ``<|eot_id|>``, and SFTTrainer trains on them unchanged."""
    import sys
    from pathlib import Path

    import datasets

    sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
    from build_chat_templates import chat_templates

    tok = load_hf_tokenizer("llama3")
    tok.chat_template = chat_templates()["llama_cpp/meta-llama-Llama-3.1-8B-Instruct"]
    ds = datasets.Dataset.from_dict({"messages": CHATS * 2})
    model = tiny_llama(len(tok), max_position_embeddings=512)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def config(**kwargs):
        return trl.SFTConfig(
            output_dir=str(tmp_path),
            max_steps=2,
            per_device_train_batch_size=3,
            learning_rate=1e-2,
            logging_steps=1,
            report_to=[],
            save_strategy="no",
            use_cpu=True,
            **kwargs,
        )

    with pytest.raises(ValueError, match="generation"):
        trl.SFTTrainer(model=model, args=config(assistant_only_loss=True), train_dataset=ds, processing_class=tok)

    pre = ds.map(
        sftmask.tokenize_and_mask,
        batched=True,
        remove_columns=ds.column_names,
        fn_kwargs={"tokenizer": tok, "date_string": "26 Jul 2024"},
    )
    want = {tuple(ids): labels for ids, labels in zip(pre["input_ids"], pre["labels"])}
    for labels in pre["labels"]:
        runs, run = [], []
        for t in [*labels, -100]:
            if t != -100:
                run.append(t)
            elif run:
                runs.append(tok.decode(run))
                run = []
        assert runs and all(r.endswith("<|eot_id|>") for r in runs), runs
        assert not any("assistant" in r or "user" in r for r in runs), runs
    collator = Recorder(sftmask.DataCollatorForCompletionOnlyLM(tokenizer=tok, labels="keep"))
    trainer = trl.SFTTrainer(
        model=model, args=config(), train_dataset=pre, processing_class=tok, data_collator=collator
    )
    trainer.train()
    assert any(not torch.equal(before[n], p.detach()) for n, p in model.named_parameters())
    seen = 0
    for batch in collator.batches:
        mask = batch["attention_mask"].bool()
        for row in range(batch["input_ids"].shape[0]):
            ids = tuple(batch["input_ids"][row][mask[row]].tolist())
            assert batch["labels"][row][mask[row]].tolist() == want[ids]
            seen += 1
    assert seen > 0


# -- packing against TRL 1.x's own pack_dataset (docs/packing.md) -------------------------------


def _unique_rows(lengths, seed):
    """Rows with globally unique ids (so a packed sequence names its row), labels partly masked."""
    import random

    rng = random.Random(seed)
    rows, next_id = [], 1
    for n in lengths:
        ids = list(range(next_id, next_id + n))
        next_id += n
        rows.append({"input_ids": ids, "labels": [i if rng.random() < 0.5 else -100 for i in ids]})
    return rows


def _sequences(packed_rows):
    """Every sequence of packed bins, as (ids, labels) tuples."""
    out = []
    for ids, labels, lengths in packed_rows:
        start = 0
        for n in lengths:
            out.append((tuple(ids[start : start + n]), tuple(labels[start : start + n])))
            start += n
        assert start == len(ids)
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("truncation", ["right", "split"])
def test_pack_against_trl_pack_dataset(seed, truncation):
    import random

    import datasets

    rng = random.Random(seed)
    max_length = rng.choice([16, 64, 257, 1024])
    lengths = [rng.choice([0, 1, 2, rng.randint(1, 2 * max_length)]) for _ in range(rng.randint(1, 3000))]
    rows = _unique_rows(lengths, seed)
    ds = datasets.Dataset.from_list(rows)
    strategy = "bfd" if truncation == "right" else "bfd_split"
    # TRL packs each map batch on its own (1000 rows by default); one batch is its best case.
    trl_default = trl.pack_dataset(ds, max_length, strategy=strategy)
    trl_whole = trl.pack_dataset(ds, max_length, strategy=strategy, map_kwargs={"batch_size": len(ds)})
    ours, stats = sftmask.pack(rows, max_length, truncation=truncation, return_stats=True)

    assert stats.bins <= len(trl_whole) <= len(trl_default)
    ours_rows = [(b["input_ids"].tolist(), b["labels"].tolist(), b["seq_lengths"].tolist()) for b in ours]
    assert all(len(ids) <= max_length for ids, _, _ in ours_rows)
    theirs = _sequences(zip(trl_whole["input_ids"], trl_whole["labels"], trl_whole["seq_lengths"]))
    mine = _sequences(ours_rows)
    # The same sequences (TRL and sftmask cut rows the same way), each one its row's tokens and
    # labels in order, up to truncation.
    assert sorted(mine) == sorted(theirs)
    where = {i: (r, pos) for r, row in enumerate(rows) for pos, i in enumerate(row["input_ids"])}
    for ids, labels in mine:
        r, start = where[ids[0]]
        end = start + len(ids)
        assert list(ids) == rows[r]["input_ids"][start:end] and list(labels) == rows[r]["labels"][start:end]
        # Right truncation keeps a row's head; a split row's pieces start at multiples of max_length.
        assert start == 0 if truncation == "right" else start % max_length == 0
    assert stats.tokens == sum(len(ids) for ids, _ in mine)


def test_packed_rows_through_newest_sft_trainer(tmp_path):
    """The README recipe: tokenize_and_mask -> pack -> SFTTrainer(data_collator=...) with
    SFTConfig(packing=False, padding_free=False); the batches follow the packed sequences."""
    import datasets

    tok = load_hf_tokenizer("qwen2")
    texts = [render(CHATML, c) for c in CHATS] * 4
    masked = sftmask.tokenize_and_mask(texts, tok, CHATML.response, list(CHATML.instructions), add_special_tokens=False)
    unpacked = {tuple(i): list(lab) for i, lab in zip(masked["input_ids"], masked["labels"])}
    ds = datasets.Dataset.from_dict(masked).map(
        sftmask.pack, batched=True, remove_columns=["input_ids", "labels"], fn_kwargs={"max_length": 128}
    )
    assert len(ds) < len(texts)
    collator = Recorder(sftmask.DataCollatorForCompletionOnlyLM(tokenizer=tok, labels="keep", padding_free=True))
    model = tiny_llama(len(tok), max_position_embeddings=512)
    config = trl.SFTConfig(
        **short_cpu_run(str(tmp_path), max_steps=2),
        packing=False,
        padding_free=False,
        max_length=None,
    )
    trainer = trl.SFTTrainer(model=model, args=config, train_dataset=ds, processing_class=tok, data_collator=collator)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(math.isfinite(x) for x in losses)
    seen = 0
    for batch in collator.batches:
        cu = batch["cu_seq_lens_q"].tolist()
        for start, end in zip(cu, cu[1:]):
            ids = tuple(batch["input_ids"][0, start:end].tolist())
            assert batch["position_ids"][0, start:end].tolist() == list(range(end - start))
            assert batch["labels"][0, start:end].tolist() == [-100, *unpacked[ids][1:]]
            seen += 1
    assert seen > len(collator.batches)  # more sequences than bins: the boundaries are the sequences'
