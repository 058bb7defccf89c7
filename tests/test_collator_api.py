"""The drop-in class: constructor forms, inputs, outputs, errors, pickling, fork, stats."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from transformers import BatchEncoding

import sftmask
from build_tokenizers import fixture_info, tokenizer_path
from chat_formats import CHATML, PLAIN, render
from conftest import load_hf_tokenizer, load_tokenizer
from ground_truth import truth_for
from sftmask import DataCollatorForCompletionOnlyLM

RESPONSE = CHATML.response
INSTRUCTIONS = list(CHATML.instructions)


def chat(*turns: str) -> str:
    roles = ["user", "assistant"] * len(turns)
    return render(CHATML, [{"role": r, "content": t} for r, t in zip(roles, turns)])


@pytest.fixture(scope="module")
def qwen():
    return load_hf_tokenizer("qwen2")


@pytest.fixture(scope="module")
def rows():
    tok = load_tokenizer("qwen2")
    texts = [chat("Hi", "\nHello!"), chat("2+2?", " 4", "3+3?", "6"), chat("x", "y")]
    return [truth_for(tok, t, CHATML) for t in texts]


def labels_of(batch, i):
    mask = np.asarray(batch["attention_mask"][i]).astype(bool)
    return np.asarray(batch["labels"][i])[mask].tolist()


# -- constructor ---------------------------------------------------------------------------------


def test_tokenizer_forms_agree(qwen, rows, tmp_path):
    """transformers tokenizer, tokenizers.Tokenizer, file path and folder path give one result."""
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer.json").write_bytes(tokenizer_path("qwen2").read_bytes())
    (folder / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<|endoftext|>", "padding_side": "left"}))
    examples = [{"input_ids": ids} for ids, _ in rows]
    pad = fixture_info("qwen2")["pad_token_id"]
    outs = [
        DataCollatorForCompletionOnlyLM(RESPONSE, INSTRUCTIONS, tokenizer=qwen, padding_side="left")(examples),
        DataCollatorForCompletionOnlyLM(
            RESPONSE, INSTRUCTIONS, load_tokenizer("qwen2"), pad_token_id=pad, padding_side="left"
        )(examples),
        DataCollatorForCompletionOnlyLM(
            RESPONSE, INSTRUCTIONS, tokenizer=str(folder / "tokenizer.json"), pad_token_id=pad, padding_side="left"
        )(examples),
        DataCollatorForCompletionOnlyLM(RESPONSE, INSTRUCTIONS, tokenizer=folder)(examples),
    ]
    for out in outs[1:]:
        assert out.keys() == outs[0].keys()
        for k in out:
            assert torch.equal(out[k], outs[0][k]), k
    assert [labels_of(outs[0], i) for i in range(3)] == [t for _, t in rows]
    assert outs[3]["attention_mask"][0, 0] == 0, "folder config's padding_side=left is used"


def test_trl_positional_signature(qwen, rows):
    """TRL: (response_template, instruction_template=None, *args) with the tokenizer in *args."""
    c = DataCollatorForCompletionOnlyLM(RESPONSE, None, qwen)
    assert c.tokenizer is qwen
    with pytest.raises(TypeError, match="instruction_template"):
        DataCollatorForCompletionOnlyLM(RESPONSE, qwen)  # TRL mis-binds this too
    c = DataCollatorForCompletionOnlyLM(RESPONSE, tokenizer=qwen, mlm=False, mlm_probability=0.15, seed=1)
    assert c.mlm is False


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mlm": True}, ValueError, "mlm"),
        ({"return_tensors": "tf"}, ValueError, "return_tensors"),
        ({"on_missing": "boom"}, ValueError, "on_missing"),
        ({"train_on": "first"}, ValueError, "train_on"),
        ({"compat": "nope"}, ValueError, "compat"),
        ({"padding_side": "middle"}, ValueError, "padding_side"),
        ({"pad_to_multiple_of": 0}, ValueError, "pad_to_multiple_of"),
        ({"num_threads": 0}, ValueError, "num_threads"),
        ({"frobnicate": 1}, TypeError, "frobnicate"),
    ],
)
def test_bad_options(qwen, kwargs, error, match):
    with pytest.raises(error, match=match):
        DataCollatorForCompletionOnlyLM(RESPONSE, tokenizer=qwen, **kwargs)


def test_template_errors(qwen):
    with pytest.raises(ValueError, match="empty"):
        DataCollatorForCompletionOnlyLM("", tokenizer=qwen)
    with pytest.raises(ValueError, match="empty"):
        DataCollatorForCompletionOnlyLM([], tokenizer=qwen)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        DataCollatorForCompletionOnlyLM([10**7], tokenizer=qwen)
    with pytest.raises(ValueError, match="instruction"):
        DataCollatorForCompletionOnlyLM(RESPONSE, [RESPONSE], tokenizer=qwen)
    # A template that is only a phantom space stands for no text.
    v1 = load_hf_tokenizer("mistral_v1")
    phantom = v1.convert_tokens_to_ids("▁")
    with pytest.raises(ValueError, match="empty"):
        DataCollatorForCompletionOnlyLM([phantom], tokenizer=v1, padding_free=True)


def test_missing_pad_token_names_the_fix():
    gpt2 = load_hf_tokenizer("gpt2")
    assert gpt2.pad_token is None
    with pytest.raises(ValueError, match="ensure_pad_token"):
        DataCollatorForCompletionOnlyLM(PLAIN.response, tokenizer=gpt2)
    # Padding-free needs no pad token.
    DataCollatorForCompletionOnlyLM(PLAIN.response, tokenizer=gpt2, padding_free=True)


def test_slow_and_unknown_tokenizers_are_refused():
    class Slow:
        def convert_tokens_to_ids(self, t):
            return 0

    with pytest.raises(TypeError, match="fast"):
        DataCollatorForCompletionOnlyLM(RESPONSE, tokenizer=Slow())
    with pytest.raises(TypeError, match="tokenizer"):
        DataCollatorForCompletionOnlyLM(RESPONSE, tokenizer=42)
    with pytest.raises(TypeError, match="tokenizer is required"):
        DataCollatorForCompletionOnlyLM(RESPONSE)


def test_token_id_templates_work_like_text(rows):
    """TRL's documented workaround (ids sliced out of a contextual encode) keeps working."""
    v1 = load_hf_tokenizer("mistral_v1")
    ids_template = v1.encode("\n### Assistant:", add_special_tokens=False)[2:]
    text = render(PLAIN, [{"role": "user", "content": " q"}, {"role": "assistant", "content": " a"}])
    ids, truth = truth_for(load_tokenizer("mistral_v1"), text, PLAIN, instructions=False)
    a = DataCollatorForCompletionOnlyLM(ids_template, tokenizer=v1, pad_token_id=0)([ids])
    b = DataCollatorForCompletionOnlyLM(PLAIN.response, tokenizer=v1, pad_token_id=0)([ids])
    assert a["labels"][0].tolist() == b["labels"][0].tolist() == truth


# -- inputs ----------------------------------------------------------------------------------------


def test_input_forms_agree(qwen, rows):
    collator = DataCollatorForCompletionOnlyLM(RESPONSE, INSTRUCTIONS, tokenizer=qwen, return_tensors="np")
    forms = {
        "dicts": [{"input_ids": ids} for ids, _ in rows],
        "dicts with SFTTrainer extras": [
            {"input_ids": ids, "labels": ids[:-1], "completion_mask": [1], "text": "t", "seq_lengths": [len(ids)]}
            for ids, _ in rows
        ],
        "lists": [ids for ids, _ in rows],
        "tuples": [tuple(ids) for ids, _ in rows],
        "int64 arrays": [np.asarray(ids, dtype=np.int64) for ids, _ in rows],
        "int32 arrays": [{"input_ids": np.asarray(ids, dtype=np.int32)} for ids, _ in rows],
        "uint32 arrays": [np.asarray(ids, dtype=np.uint32) for ids, _ in rows],
        "strided arrays": [
            np.asarray(ids + ids, dtype=np.int64)[::2][: len(ids)] * 0 + np.asarray(ids) for ids, _ in rows
        ],
        "torch tensors": [{"input_ids": torch.tensor(ids)} for ids, _ in rows],
        "BatchEncoding": [BatchEncoding({"input_ids": ids, "attention_mask": [1] * len(ids)}) for ids, _ in rows],
        "generator": ({"input_ids": ids} for ids, _ in rows),
    }
    reference = None
    for name, examples in forms.items():
        out = collator(examples)
        assert [labels_of(out, i) for i in range(3)] == [t for _, t in rows], name
        if reference is None:
            reference = out
        for k in reference:
            np.testing.assert_array_equal(out[k], reference[k], err_msg=f"{name}: {k}")


def test_output_types_and_shapes(qwen, rows):
    examples = [{"input_ids": ids} for ids, _ in rows]
    longest = max(len(ids) for ids, _ in rows)
    pt = DataCollatorForCompletionOnlyLM(RESPONSE, tokenizer=qwen, pad_to_multiple_of=64)(examples)
    assert set(pt) == {"input_ids", "attention_mask", "labels"}
    width = (longest + 63) // 64 * 64
    for v in pt.values():
        assert isinstance(v, torch.Tensor) and v.dtype == torch.int64 and v.shape == (3, width)
    npy = DataCollatorForCompletionOnlyLM(RESPONSE, tokenizer=qwen)(examples, return_tensors="np")
    for v in npy.values():
        assert isinstance(v, np.ndarray) and v.dtype == np.int64 and v.shape == (3, longest)
    flat = DataCollatorForCompletionOnlyLM(RESPONSE, tokenizer=qwen, padding_free=True)(examples)
    assert set(flat) == {
        "input_ids",
        "labels",
        "position_ids",
        "cu_seq_lens_q",
        "cu_seq_lens_k",
        "max_length_q",
        "max_length_k",
    }
    assert flat["cu_seq_lens_q"].dtype == torch.int32 and flat["cu_seq_lens_q"].shape == (4,)
    assert isinstance(flat["max_length_q"], int) and flat["max_length_q"] == longest
    # torch_call / numpy_call, as transformers' collators have them.
    c = DataCollatorForCompletionOnlyLM(RESPONSE, tokenizer=qwen)
    assert isinstance(c.torch_call(examples)["labels"], torch.Tensor)
    assert isinstance(c.numpy_call(examples)["labels"], np.ndarray)


def test_torch_output_shares_the_arrays_memory(qwen, rows):
    batch = DataCollatorForCompletionOnlyLM(RESPONSE, tokenizer=qwen)([ids for ids, _ in rows])
    labels = batch["labels"]
    view = labels.numpy()  # no copy: the tensor is a view of the array Rust filled
    view[0, 0] = 12345
    assert labels[0, 0] == 12345


@pytest.mark.parametrize(
    ("examples", "error", "match"),
    [
        ([], ValueError, "empty"),
        ([[1, 2, -3]], ValueError, "row 0.*negative"),
        ([[1, 2], [1, 10**9]], ValueError, "row 1.*not in the vocabulary"),
        ([[1, 2], [1.5, 2]], TypeError, "row 1.*int"),
        ([[1, None]], TypeError, "row 0"),
        ([[True, 2]], TypeError, "bool"),
        ([{"ids": [1]}], ValueError, "input_ids"),
        ([np.zeros((2, 2), dtype=np.int64)], ValueError, "1-D"),
        ([np.zeros(3, dtype=np.float32)], TypeError, "integers"),
        (["hello"], TypeError, "row 0"),
        ([[2**70]], ValueError, "int64"),
        ({"input_ids": [1, 2]}, TypeError, "list of examples"),
    ],
)
def test_call_errors_name_the_row(qwen, examples, error, match):
    collator = DataCollatorForCompletionOnlyLM(RESPONSE, tokenizer=qwen)
    with pytest.raises(error, match=match):
        collator(examples)


# -- missing templates ------------------------------------------------------------------------------


def test_on_missing(qwen, rows):
    examples = [rows[0][0], [9707, 1879], [9707]]  # "Hello world" has no template
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = DataCollatorForCompletionOnlyLM(RESPONSE, tokenizer=qwen)(examples)
    assert len(caught) == 1 and issubclass(caught[0].category, UserWarning)
    assert "2 of 3" in str(caught[0].message)
    assert (batch["labels"][1:] == -100).all()
    with pytest.raises(ValueError, match="row 1"):
        DataCollatorForCompletionOnlyLM(RESPONSE, tokenizer=qwen, on_missing="error")(examples)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DataCollatorForCompletionOnlyLM(RESPONSE, tokenizer=qwen, on_missing="ignore")(examples)


def test_stats(qwen, rows):
    collator = DataCollatorForCompletionOnlyLM(RESPONSE, INSTRUCTIONS, tokenizer=qwen, on_missing="ignore")
    assert collator.stats.examples == 0 and collator.stats.trained_fraction == 0.0
    batch = collator([ids for ids, _ in rows] + [[9707]])
    collator([rows[0][0]])
    s = collator.stats
    tokens = sum(len(ids) for ids, _ in rows) + 1 + len(rows[0][0])
    trained = int((batch["labels"] != -100).sum()) + sum(t != -100 for t in rows[0][1])
    assert (s.examples, s.rows_without_template, s.tokens, s.trained_tokens) == (5, 1, tokens, trained)
    # "\nHello!" merges its newline with the header's: one straddling token per such row.
    assert s.straddling_tokens >= 2


# -- pickling, fork, threads -------------------------------------------------------------------------


def test_pickle_round_trip_is_identical_and_deterministic(qwen, rows):
    c = DataCollatorForCompletionOnlyLM(RESPONSE, INSTRUCTIONS, tokenizer=qwen, padding_free=True, train_on="last")
    blob = pickle.dumps(c)
    assert pickle.dumps(c) == blob
    c2 = pickle.loads(blob)
    assert pickle.dumps(c2) == blob
    a, b = c([ids for ids, _ in rows]), c2([ids for ids, _ in rows])
    for k in a:
        assert torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k]


def _collate_in_child(collator, examples, queue):
    out = collator(examples, return_tensors="np")
    queue.put(out["labels"].sum())


def test_fork_after_parallel_use_does_not_hang(qwen, rows):
    """A rayon pool used before fork must not deadlock the child (DataLoader workers)."""
    big = [ids for ids, _ in rows] * 2000  # well above the parallel threshold
    collator = DataCollatorForCompletionOnlyLM(RESPONSE, tokenizer=qwen, num_threads=2, return_tensors="np")
    expected = collator(big)["labels"].sum()
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_collate_in_child, args=(collator, big, queue))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung")
    assert child.exitcode == 0
    assert queue.get(timeout=5) == expected


def test_threads_share_one_collator(qwen, rows):
    from concurrent.futures import ThreadPoolExecutor

    collator = DataCollatorForCompletionOnlyLM(RESPONSE, INSTRUCTIONS, tokenizer=qwen, return_tensors="np")
    batches = [[rows[i % 3][0], rows[(i + 1) % 3][0]] * (1 + i % 50) for i in range(64)]
    expected = [collator(b)["labels"] for b in batches]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda b: collator(b)["labels"], batches))
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(e, g)


def test_import_and_numpy_output_without_torch(tmp_path):
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import sftmask\n"
        "c = sftmask.DataCollatorForCompletionOnlyLM('b', tokenizer=sys.argv[1], pad_token_id=0, return_tensors='np')\n"
        "print(type(c([[1, 2, 3]])['labels']).__name__)\n"
        "try:\n    c([[1]], return_tensors='pt')\n"
        "except ImportError as e:\n    print('ImportError', 'PyTorch' in str(e))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tokenizer_path("gpt2"))], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["ndarray", "ImportError", "True"]


def test_rendering(qwen, rows):
    collator = DataCollatorForCompletionOnlyLM(RESPONSE, INSTRUCTIONS, tokenizer=qwen)
    ids = load_tokenizer("qwen2").encode(chat("a<b & c>", "x < y")).ids
    view = collator.render({"input_ids": ids})
    assert view.plain().endswith("[[x < y<|im_end|>\n]]")
    html = view._repr_html_()
    body = html.split("</style>", 1)[1]
    assert "<b " not in body and "<b>" not in body and "&lt;" in body and "&amp;" in body
    assert "&lt;|im_end|&gt;" in body
    assert "trained" in body and "masked" in body
    assert collator.trained_text(ids) == ["x < y<|im_end|>\n"]
    assert "\x1b[1;32m" in view.ansi()
    assert sftmask.MaskView is type(view)
