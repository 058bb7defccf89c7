"""`sftmask check` on a ``messages`` column with no templates given: the chat template labels it.

Truth: the SPEC rule computed with transformers' renderer and tokenizer in test_messages.py
(``truth``), then cut to ``--max-length`` here; templates built so that a row cannot be located
(the generation prompt is not what the turns start with) or ends a turn with no special token.
"""

from __future__ import annotations

import json
import re

import pytest

from sftmask.cli import main
from test_messages import _TEMPLATES, QWEN, plain_conversations, tokenizer_for, truth

#: An answer gets "[old]" written into it once a later message follows: that earlier turn is not
#: the text it was as the last one, with nothing left out, so it cannot be located exactly.
UNLOCATABLE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' and not loop.last %}[old]{% endif %}{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _rewritten(messages):
    """Whether an assistant message is followed by another message (rendered with "[old]")."""
    return any(m["role"] == "assistant" for m in messages[:-1])


#: No special token ends a turn: its end-of-turn marker cannot be trained.
UNMARKED = (
    "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def _folder(tmp_path, source):
    tok = tokenizer_for(QWEN)
    folder = tmp_path / "tok"
    saved = tok.chat_template
    tok.chat_template = source
    try:
        tok.save_pretrained(folder)
    finally:
        tok.chat_template = saved
    return folder


def _check(capsys, data, folder, *extra):
    code = main(["check", str(data), "--tokenizer", str(folder), "--no-progress", *map(str, extra)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _write(path, convs):
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs))
    return path


def test_counts_equal_the_rule(tmp_path, capsys):
    convs = plain_conversations(seed=21, count=60)
    assert len(convs) > 20
    # A row that trains nothing (every answer flagged off) and one with no answer at all.
    convs.append([{**m, "train": False} if m["role"] == "assistant" else m for m in convs[0]])
    convs.append([{"role": "user", "content": "anyone?"}])
    source = _TEMPLATES[QWEN]
    folder = _folder(tmp_path, source)
    data = _write(tmp_path / "chats.jsonl", convs)
    limit = 96
    code, out, err = _check(capsys, data, folder, "--format", "json", "--max-length", limit)
    assert code == 0, err
    got = json.loads(out)

    tok = tokenizer_for(QWEN)
    tok.chat_template = source
    want = {"rows": 0, "tokens": 0, "trained_tokens": 0, "rows_truncated": 0, "responses_cut_by_max_length": 0}
    nothing = []
    for r, c in enumerate(convs):
        kind, value = truth(tok, source, {"messages": c, "tools": None})
        assert kind == "ok", (r, kind)
        ids, labels = value
        kept = labels[:limit]
        want["rows"] += 1
        want["tokens"] += len(kept)
        want["trained_tokens"] += sum(label != -100 for label in kept)
        if len(ids) > limit:
            want["rows_truncated"] += 1
            want["responses_cut_by_max_length"] += any(label != -100 for label in labels[limit:])
        if all(label == -100 for label in kept):
            nothing.append(r)
    assert {k: got[k] for k in want} == want
    assert got["response_template"] is None and got["trl_rows_lost"] is None
    assert got["rows_not_located"] == 0 and got["turns_without_end_marker"] == 0
    assert got["rows_without_trained_tokens"] == len(nothing)
    assert got["rows_without_trained_tokens_sample"] == nothing[:20]
    assert len(nothing) >= 2 and len(convs) - 1 in nothing and len(convs) - 2 in nothing


def test_not_located_and_unmarked_rows_are_reported_and_shown(tmp_path, capsys):
    convs = plain_conversations(seed=22, count=12)
    data = _write(tmp_path / "chats.jsonl", convs)
    code, out, _ = _check(capsys, data, _folder(tmp_path / "a", UNLOCATABLE), "--format", "json")
    report = json.loads(out)
    rewritten = [r for r, c in enumerate(convs) if _rewritten(c)]
    assert code == 0 and rewritten and len(rewritten) < len(convs)
    assert report["rows_not_located"] == len(rewritten)
    assert report["rows_not_located_sample"] == rewritten[:20]
    assert report["rows_without_trained_tokens"] >= len(rewritten)

    code, out, _ = _check(capsys, data, _folder(tmp_path / "b", UNMARKED), "--show", "2")
    assert code == 0
    assert "labelled by its chat template" in out
    # A turn is "role: content\n": it ends in a special token only where its content does.
    added = tokenizer_for(QWEN).get_added_vocab()
    turns = sum(
        m["role"] == "assistant" and m["content"].strip() != "" and not any(m["content"].endswith(t) for t in added)
        for c in convs
        for m in c
    )
    assert re.search(rf"trained turns without a trained end-of-turn marker\s+{turns}\b", out), out
    assert "rows with a turn whose end-of-turn marker is untrained" in out
    shown = re.findall(r"^row (\d+) \((.*?);", out, re.M)
    # Rows that train nothing come first, then rows with an unmarked turn.
    nothing = [r for r, c in enumerate(convs) if not any(m["role"] == "assistant" and m["content"].strip() for m in c)]
    want = [(str(r + 1), "no trained token") for r in nothing][:2]
    assert len(shown) == 2 and shown[: len(want)] == want
    assert "[[" in out  # the trained text is marked


def test_fail_if_missing_above_counts_rows_that_train_nothing(tmp_path, capsys):
    convs = [c for c in plain_conversations(seed=23, count=20) if _rewritten(c)]
    data = _write(tmp_path / "chats.jsonl", convs)
    code, out, _ = _check(capsys, data, _folder(tmp_path, UNLOCATABLE), "--fail-if-missing-above", "0.5")
    assert code == 1 and "FAILED" in out and "rows with no trained token" in out


def test_errors_are_one_line_naming_both_ways_out(tmp_path, capsys):
    folder = _folder(tmp_path, None)  # no chat template
    data = _write(tmp_path / "chats.jsonl", plain_conversations(seed=24, count=3))
    code, _, err = _check(capsys, data, folder)
    assert code == 2 and "no chat template" in err and "--response-template" in err
    texts = tmp_path / "texts.jsonl"
    texts.write_text(json.dumps({"text": "hi"}) + "\n")
    code, _, err = _check(capsys, texts, _folder(tmp_path / "c", UNMARKED))
    assert code == 2 and "--response-template" in err
    with_raise = "{{ raise_exception('roles must alternate') }}"
    code, _, err = _check(capsys, data, _folder(tmp_path / "d", with_raise))
    assert code == 2 and "row 1" in err and "roles must alternate" in err


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_template_mode_is_unchanged_by_a_messages_column(tmp_path, capsys, fmt):
    # With --response-template, a messages column is rendered and searched as before.
    data = _write(tmp_path / "chats.jsonl", plain_conversations(seed=25, count=5))
    code, out, err = _check(
        capsys, data, _folder(tmp_path, _TEMPLATES[QWEN]), "--response-template", "<|im_start|>assistant\\n",
        "--format", fmt,
    )  # fmt: skip
    assert code == 0, err
    if fmt == "json":
        assert json.loads(out)["rows_not_located"] is None
    else:
        assert "rows without a response template" in out
