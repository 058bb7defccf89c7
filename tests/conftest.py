"""Shared fixtures: real tokenizers built offline from PyPI packages (tests/fixtures/)."""

from __future__ import annotations

import atexit
import collections
import functools
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
sys.path.insert(0, str(Path(__file__).parent))

from build_tokenizers import FAMILIES, fixture_info, tokenizer_path

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.register_profile(
    "thorough",
    deadline=None,
    max_examples=1000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@functools.cache
def load_tokenizer(family: str):
    """The ``tokenizers.Tokenizer`` of a test family."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_path(family)))


@functools.cache
def load_vocab(family: str):
    """The sftmask byte table of a test family."""
    from sftmask import Vocab

    return Vocab.from_file(tokenizer_path(family))


@functools.cache
def load_hf_tokenizer(family: str):
    """The family as a transformers fast tokenizer, with its fixture's special tokens."""
    from transformers import PreTrainedTokenizerFast

    info = fixture_info(family)
    kwargs = {k: info[k] for k in ("bos_token", "eos_token", "pad_token") if info.get(k)}
    return PreTrainedTokenizerFast(tokenizer_object=load_tokenizer(family), **kwargs)


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@functools.cache
def synthetic_tokenizer_path(family: str = "byte_level") -> str:
    """Path of the synthetic ``tokenizer.json`` of ``family`` (tests/synthetic.py), written once per
    process (a plain function, so that hypothesis tests can pick the family)."""
    import synthetic

    folder = Path(tempfile.mkdtemp(prefix=f"sftmask-{family}-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "tokenizer.json"
    path.write_text(synthetic.tokenizer_json(family))
    return str(path)


@pytest.fixture(scope="session")
def tok_path() -> str:
    """Path of the synthetic byte-level ``tokenizer.json``."""
    return synthetic_tokenizer_path("byte_level")


def short_cpu_run(output_dir, *, max_steps: int = 3) -> dict:
    """The training arguments every Trainer test shares (``TrainingArguments`` or TRL's
    ``SFTConfig``): a few steps on the CPU, a loss logged every step, nothing saved or reported."""
    return {
        "output_dir": str(output_dir),
        "max_steps": max_steps,
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-2,
        "logging_steps": 1,
        "report_to": [],
        "save_strategy": "no",
        "use_cpu": True,
    }


def tiny_llama(vocab_size: int, *, tie_word_embeddings: bool = True, **config):
    """A tiny randomly initialised ``LlamaForCausalLM`` (seed 0) sized to a real vocabulary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=tie_word_embeddings,
        **config,
    )
    return LlamaForCausalLM(cfg)


class Recorder:
    """Wraps a collator and keeps every batch it makes (and the keys of the examples it got)."""

    def __init__(self, collator):
        self.collator = collator
        self.seen_keys = []
        self.batches = []

    def __call__(self, examples):
        import torch

        self.seen_keys.append(sorted(examples[0].keys()) if hasattr(examples[0], "keys") else [])
        batch = self.collator(examples)
        self.batches.append({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
        return batch


#: Rows compared with the ground truth, per family (reported at the end of the run).
ROWS_CHECKED: collections.Counter[str] = collections.Counter()


def pytest_terminal_summary(terminalreporter):
    if ROWS_CHECKED:
        shown = ", ".join(f"{family} {n}" for family, n in sorted(ROWS_CHECKED.items()))
        terminalreporter.write_line(f"rows checked against ground truth: {shown}")
