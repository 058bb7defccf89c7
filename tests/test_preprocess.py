"""`sftmask.tokenize_and_mask` (Rust tokenization + masking) and the collator's `labels="keep"`.

Truth: each tokenizer's own encode, ground-truth labels computed on the original string
(tests/ground_truth.py), and padding/flattening written out by hand in the tests.
"""

from __future__ import annotations

import functools
import json
import pickle
import random
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import sftmask
from build_tokenizers import tokenizer_path
from chat_formats import CHATML, FORMATS, render
from conftest import load_hf_tokenizer, load_tokenizer
from ground_truth import truth_for

# ChatML as a Jinja chat template: renders exactly what chat_formats.CHATML.render writes.
CHATML_JINJA = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
PIECES = ["Hi", " there", "\n", "\n\n", "  ", "\t", "2+2=4", "😀", "你好", "é", " `code`", "x", "."]


def conversations(fmt, n, seed=0):
    rng = random.Random(seed)

    def content():
        return "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 6)))

    out = []
    for _ in range(n):
        messages = []
        if fmt.system and rng.random() < 0.3:
            messages.append({"role": "system", "content": content()})
        for _ in range(rng.randint(1, 3)):
            messages.append({"role": "user", "content": content()})
            messages.append({"role": "assistant", "content": content()})
            if fmt.tool_role and rng.random() < 0.2:
                messages.append({"role": fmt.tool_role, "content": content()})
                messages.append({"role": "assistant", "content": content()})
        out.append(messages)
    return out


def chatml_hf():
    tok = load_hf_tokenizer("qwen2")
    if not tok.chat_template:
        tok.chat_template = CHATML_JINJA
    return tok


@pytest.mark.parametrize("family", sorted(FORMATS))
def test_texts_match_ground_truth(family):
    fmt = FORMATS[family]
    tok = load_tokenizer(family)
    texts = [render(fmt, m) for m in conversations(fmt, 40, seed=hash(family) % 1000)]
    out = sftmask.tokenize_and_mask(
        texts, tok, fmt.response, list(fmt.instructions), add_special_tokens=False, on_missing="ignore"
    )
    assert set(out) == {"input_ids", "labels"}
    for text, ids, labels in zip(texts, out["input_ids"], out["labels"]):
        want_ids, want_labels = truth_for(tok, text, fmt)
        assert ids == want_ids
        assert labels == want_labels


def test_tokenizer_kinds_and_special_tokens():
    fmt = FORMATS["llama3"]
    text = render(fmt, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "\nYo"}])
    tok = load_tokenizer("llama3")
    expected = tok.encode(text).ids  # add_special_tokens=True: BOS in front, as tokenizer(text) does
    assert expected[0] == expected[1] == 128000
    for given in (tok, load_hf_tokenizer("llama3"), tokenizer_path("llama3"), str(tokenizer_path("llama3").parent)):
        out = sftmask.tokenize_and_mask([text], given, fmt.response)
        assert out["input_ids"] == [expected]
        assert out["labels"][0][-3:] == expected[-3:]


def test_messages_are_rendered_with_the_chat_template():
    tok = chatml_hf()
    convs = conversations(CHATML, 30, seed=1)
    out = sftmask.tokenize_and_mask(convs, tok, CHATML.response, list(CHATML.instructions))
    raw = load_tokenizer("qwen2")
    for messages, ids, labels in zip(convs, out["input_ids"], out["labels"]):
        want_ids, want_labels = truth_for(raw, render(CHATML, messages), CHATML)
        assert (ids, labels) == (want_ids, want_labels)


def test_max_length_truncates_before_masking():
    tok = load_tokenizer("qwen2")
    texts = [render(CHATML, m) for m in conversations(CHATML, 30, seed=2)]
    for n in (1, 5, 17):
        out = sftmask.tokenize_and_mask(
            texts, tok, CHATML.response, list(CHATML.instructions), max_length=n, on_missing="ignore"
        )
        for text, ids, labels in zip(texts, out["input_ids"], out["labels"]):
            assert (ids, labels) == truth_for(tok, text, CHATML, keep=n)


def test_train_on_last_and_ignore_index():
    tok = load_tokenizer("qwen2")
    texts = [render(CHATML, m) for m in conversations(CHATML, 20, seed=3)]
    out = sftmask.tokenize_and_mask(
        texts, tok, CHATML.response, list(CHATML.instructions), train_on="last", ignore_index=-1
    )
    for text, labels in zip(texts, out["labels"]):
        _, want = truth_for(tok, text, CHATML, train_on="last")
        assert labels == [-1 if v == -100 else v for v in want]


def test_on_missing():
    tok = load_tokenizer("qwen2")
    texts = [render(CHATML, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]), "no template"]
    with pytest.warns(UserWarning, match=r"1 of 2 rows have no response template.*rows 1\)"):
        out = sftmask.tokenize_and_mask(texts, tok, CHATML.response)
    assert set(out["labels"][1]) == {-100}
    with pytest.raises(ValueError, match="row 1: response template"):
        sftmask.tokenize_and_mask(texts, tok, CHATML.response, on_missing="error")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sftmask.tokenize_and_mask(texts, tok, CHATML.response, on_missing="ignore")


def test_bad_arguments():
    tok = load_tokenizer("qwen2")
    with pytest.raises(TypeError, match="list of strings"):
        sftmask.tokenize_and_mask("one text", tok, "x")
    with pytest.raises(TypeError, match="row 1"):
        sftmask.tokenize_and_mask(["a", 3], tok, "x")
    with pytest.raises(TypeError, match="chat template"):
        sftmask.tokenize_and_mask([[{"role": "user", "content": "a"}]], tok, "x")
    with pytest.raises(ValueError, match="empty"):
        sftmask.tokenize_and_mask(["a"], tok, "")
    with pytest.raises(ValueError, match="max_length"):
        sftmask.tokenize_and_mask(["a"], tok, "x", max_length=0)
    assert sftmask.tokenize_and_mask([], tok, "x") == {"input_ids": [], "labels": []}


def test_picklable_partial_gives_the_same_result():
    fn = functools.partial(
        sftmask.tokenize_and_mask,
        tokenizer=chatml_hf(),
        response_template=CHATML.response,
        instruction_template=list(CHATML.instructions),
    )
    convs = conversations(CHATML, 10, seed=4)
    again = pickle.loads(pickle.dumps(fn))
    assert again(convs) == fn(convs)


MAP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import datasets
    from transformers import PreTrainedTokenizerFast
    import sftmask

    path, convs_file, out_file, template = sys.argv[1:5]
    tok = PreTrainedTokenizerFast(tokenizer_file=path)
    tok.chat_template = template
    convs = json.load(open(convs_file))
    kwargs = dict(tokenizer=tok, response_template="<|im_start|>assistant\\n",
                  instruction_template=["<|im_start|>user\\n", "<|im_start|>system\\n", "<|im_start|>tool\\n"])
    sftmask.tokenize_and_mask(convs[:64], **kwargs, num_threads=4)  # the pool runs before the fork
    ds = datasets.Dataset.from_dict({"messages": convs})
    out = ds.map(sftmask.tokenize_and_mask, batched=True, batch_size=37, num_proc=2, input_columns="messages",
                 remove_columns=["messages"], fn_kwargs=dict(kwargs, num_threads=4))
    json.dump(out.to_dict(), open(out_file, "w"))
    """
)


def test_datasets_map_with_two_processes(tmp_path):
    pytest.importorskip("datasets")
    convs = conversations(CHATML, 300, seed=5)
    (tmp_path / "convs.json").write_text(json.dumps(convs))
    (tmp_path / "map.py").write_text(MAP_SCRIPT)
    subprocess.run(
        [
            sys.executable,
            str(tmp_path / "map.py"),
            str(tokenizer_path("qwen2")),
            str(tmp_path / "convs.json"),
            str(tmp_path / "out.json"),
            CHATML_JINJA,
        ],
        check=True,
        timeout=300,
        cwd=tmp_path,
        env={**__import__("os").environ, "HF_DATASETS_CACHE": str(tmp_path / "cache")},
    )
    out = json.loads((tmp_path / "out.json").read_text())
    raw = load_tokenizer("qwen2")
    assert len(out["input_ids"]) == len(convs)
    for messages, ids, labels in zip(convs, out["input_ids"], out["labels"]):
        assert (ids, labels) == truth_for(raw, render(CHATML, messages), CHATML)


FORK_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import sftmask
    texts = ["<|im_start|>user\\nq<|im_end|>\\n<|im_start|>assistant\\na<|im_end|>\\n"] * 200
    before = sftmask.tokenize_and_mask(texts, sys.argv[1], "<|im_start|>assistant\\n", num_threads=4)
    pid = os.fork()
    if pid == 0:
        after = sftmask.tokenize_and_mask(texts, sys.argv[1], "<|im_start|>assistant\\n", num_threads=4)
        os._exit(0 if after == before else 3)
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))
    """
)


def test_fork_after_use_does_not_hang(tmp_path):
    (tmp_path / "fork.py").write_text(FORK_SCRIPT)
    subprocess.run([sys.executable, str(tmp_path / "fork.py"), str(tokenizer_path("qwen2"))], check=True, timeout=120)


# ---------------------------------------------------------------------------------------------
# The collator with labels="keep".


def _examples():
    tok = load_tokenizer("qwen2")
    texts = [render(CHATML, m) for m in conversations(CHATML, 5, seed=6)]
    out = sftmask.tokenize_and_mask(texts, tok, CHATML.response, list(CHATML.instructions))
    return tok, [{"input_ids": i, "labels": lab} for i, lab in zip(out["input_ids"], out["labels"])]


@pytest.mark.parametrize(("side", "multiple"), [("right", None), ("left", None), ("right", 8)])
def test_keep_pads_the_given_labels(side, multiple):
    tok, examples = _examples()
    collator = sftmask.DataCollatorForCompletionOnlyLM(
        tokenizer=tok, labels="keep", pad_token_id=7, padding_side=side, pad_to_multiple_of=multiple
    )
    batch = collator(examples)
    width = max(len(e["input_ids"]) for e in examples)
    if multiple:
        width = -(-width // multiple) * multiple
    for k in ("input_ids", "attention_mask", "labels"):
        assert batch[k].dtype.is_floating_point is False and tuple(batch[k].shape) == (len(examples), width)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        fill = width - n
        if side == "right":
            want_ids, want_labels, want_mask = (
                e["input_ids"] + [7] * fill,
                e["labels"] + [-100] * fill,
                [1] * n + [0] * fill,
            )
        else:
            want_ids, want_labels, want_mask = (
                [7] * fill + e["input_ids"],
                [-100] * fill + e["labels"],
                [0] * fill + [1] * n,
            )
        assert batch["input_ids"][row].tolist() == want_ids
        assert batch["labels"][row].tolist() == want_labels
        assert batch["attention_mask"][row].tolist() == want_mask


def test_keep_flattens_the_given_labels():
    tok, examples = _examples()
    examples = [*examples[:2], {"input_ids": [], "labels": []}, examples[2]]
    collator = sftmask.DataCollatorForCompletionOnlyLM(
        tokenizer=tok, labels="keep", padding_free=True, return_tensors="np"
    )
    batch = collator(examples)
    ids, labels, positions, cu = [], [], [], [0]
    for e in examples:
        ids += e["input_ids"]
        labels += [-100, *e["labels"][1:]] if e["labels"] else []
        positions += list(range(len(e["input_ids"])))
        cu.append(cu[-1] + len(e["input_ids"]))
    assert batch["input_ids"].tolist() == [ids]
    assert batch["labels"].tolist() == [labels]
    assert batch["position_ids"].tolist() == [positions]
    assert batch["cu_seq_lens_q"].dtype == np.int32 and batch["cu_seq_lens_q"].tolist() == cu
    assert batch["cu_seq_lens_k"].tolist() == cu
    assert batch["max_length_q"] == batch["max_length_k"] == max(len(e["input_ids"]) for e in examples)
    assert isinstance(batch["max_length_q"], int)


def test_keep_agrees_with_masking_and_counts():
    tok, examples = _examples()
    masking = sftmask.DataCollatorForCompletionOnlyLM(
        CHATML.response, list(CHATML.instructions), tokenizer=tok, pad_token_id=0, return_tensors="np"
    )
    keep = sftmask.DataCollatorForCompletionOnlyLM(tokenizer=tok, labels="keep", pad_token_id=0, return_tensors="np")
    a = masking([{"input_ids": e["input_ids"]} for e in examples])
    b = keep(examples)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    trained = sum(sum(v != -100 for v in e["labels"]) for e in examples)
    assert keep.stats.examples == len(examples) and keep.stats.trained_tokens == trained
    assert keep.stats.tokens == sum(len(e["input_ids"]) for e in examples)
    assert keep.stats.rows_without_template == sum(all(v == -100 for v in e["labels"]) for e in examples)
    restored = pickle.loads(pickle.dumps(keep))
    assert restored.labels == "keep" and np.array_equal(restored(examples)["labels"], b["labels"])


def test_keep_accepts_arrays_and_tensors():
    torch = pytest.importorskip("torch")
    tok, examples = _examples()
    keep = sftmask.DataCollatorForCompletionOnlyLM(tokenizer=tok, labels="keep", pad_token_id=0)
    as_np = [{k: np.array(v, dtype=np.int32) for k, v in e.items()} for e in examples]
    as_pt = [{k: torch.tensor(v) for k, v in e.items()} for e in examples]
    want = keep(examples)
    for variant in (as_np, as_pt):
        got = keep(variant)
        assert got["labels"].dtype == torch.int64 and torch.equal(got["labels"], want["labels"])


def test_keep_errors():
    tok, examples = _examples()
    keep = sftmask.DataCollatorForCompletionOnlyLM(tokenizer=tok, labels="keep", pad_token_id=0)
    with pytest.raises(ValueError, match="row 1: with labels='keep'"):
        keep([examples[0], {"input_ids": [1, 2]}])
    with pytest.raises(ValueError, match="row 1: 1 labels for 2 input_ids"):
        keep([examples[0], {"input_ids": [1, 2], "labels": [1]}])
    with pytest.raises(ValueError, match=r"row 1: token id 999999 at position 1 is not in the vocabulary"):
        keep([examples[0], {"input_ids": [1, 999999], "labels": [1, 2]}])
    with pytest.raises(ValueError, match=r"row 0: token id -5 at position 0 is negative"):
        keep([{"input_ids": [-5], "labels": [1]}])
    with pytest.raises(TypeError, match="row 0: labels must hold ints"):
        keep([{"input_ids": [1], "labels": [1.5]}])
    with pytest.raises(ValueError, match="empty"):
        keep([])
    with pytest.raises(ValueError, match="labels must be 'mask' or 'keep'"):
        sftmask.DataCollatorForCompletionOnlyLM("x", tokenizer=tok, labels="given")
    with pytest.raises(ValueError, match="compat='trl'"):
        sftmask.DataCollatorForCompletionOnlyLM("x", tokenizer=tok, labels="keep", compat="trl")
    with pytest.raises(ValueError, match="response_template is required: this tokenizer has no chat template"):
        sftmask.DataCollatorForCompletionOnlyLM(tokenizer=tok, pad_token_id=0)


@pytest.mark.parametrize("engine", ["auto", "tokenizers"])
def test_a_truncating_call_left_on_the_tokenizer_does_not_truncate_preprocessing(engine: str) -> None:
    # transformers leaves the last call's truncation and padding on its backend tokenizer, and
    # `to_str()` carries them; preprocessing must tokenize whole texts all the same.
    from conftest import load_hf_tokenizer

    text = "<|im_start|>user\nHi there, how are you?<|im_end|>\n<|im_start|>assistant\nFine, thanks!<|im_end|>\n"
    want = load_hf_tokenizer("qwen2")(text)["input_ids"]
    tok = load_hf_tokenizer("qwen2")
    tok([text], truncation=True, max_length=5, padding="max_length")
    out = sftmask.tokenize_and_mask([text], tok, "<|im_start|>assistant\n", engine=engine)
    assert out["input_ids"][0] == want and len(want) > 5
    assert any(label != -100 for label in out["labels"][0])
