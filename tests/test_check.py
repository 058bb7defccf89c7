"""`sftmask check` on real files written by the tests (JSONL, Parquet, datasets.save_to_disk).

Truth: ground-truth labels on the original strings (tests/ground_truth.py), `str` search for
templates, the tokenizer's own offsets for truncation, and TRL 0.19.1's own collator for the
rows it loses.
"""

from __future__ import annotations

import io
import json
import random
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from build_tokenizers import tokenizer_path
from chat_formats import CHATML, render
from conftest import load_hf_tokenizer, load_tokenizer
from ground_truth import text_regions, truth_for
from sftmask.cli import main

QWEN = tokenizer_path("qwen2").parent  # a folder with tokenizer.json (no chat template)
INSTRUCTIONS = list(CHATML.instructions)
CHATML_JINJA = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
WORDS = ["Hi", " there", "\n", "\n\n", "  ", "\t", "2+2=4", "😀", "你好", "é", " `code`", "x", "."]
README = Path(__file__).resolve().parents[1] / "README.md"


def conversations(n, seed=0):
    """Chats with the cases that matter: answers starting with a newline (TRL misses the
    template), rows with no assistant turn (no template at all), tool turns, long rows."""
    rng = random.Random(seed)

    def content():
        return "".join(rng.choice(WORDS) for _ in range(rng.randint(0, 8)))

    out = []
    for _ in range(n):
        messages = [{"role": "system", "content": content()}] if rng.random() < 0.3 else []
        if rng.random() < 0.05:
            messages.append({"role": "user", "content": content()})  # never answered
        else:
            for _ in range(rng.randint(1, 3)):
                messages.append({"role": "user", "content": content()})
                messages.append({"role": "assistant", "content": rng.choice(["", "\n", " "]) + content()})
                if rng.random() < 0.15:
                    messages.append({"role": "tool", "content": content()})
                    messages.append({"role": "assistant", "content": content()})
        out.append(messages)
    return out


def truth(texts, max_length=None):
    """The report's numbers, from the ground truth."""
    tok = load_tokenizer("qwen2")
    out = dict(rows=len(texts), rows_without_template=0, tokens=0, trained_tokens=0, straddling_tokens=0)
    out.update(rows_without_template_cut_by_max_length=0, rows_truncated=0, responses_cut_by_max_length=0)
    for text in texts:
        enc = tok.encode(text)
        assert enc.ids == tok.encode(text, add_special_tokens=False).ids  # Qwen2 adds no BOS
        full_ids, full_labels = truth_for(tok, text, CHATML)
        ids, labels = truth_for(tok, text, CHATML, keep=max_length)
        kept = text[: enc.offsets[len(ids) - 1][1]] if ids else ""
        found = CHATML.response in kept
        out["tokens"] += len(ids)
        out["trained_tokens"] += sum(v != -100 for v in labels)
        spans = text_regions(kept, CHATML.response, CHATML.instructions)
        for (s, e), v in zip(enc.offsets[: len(ids)], labels):
            if v != -100 and e > s:
                out["straddling_tokens"] += not any(rs <= s and e <= re for rs, re in spans)
        if not found:
            out["rows_without_template"] += 1
        if len(full_ids) > len(ids):
            out["rows_truncated"] += 1
            if not found and CHATML.response in text:
                out["rows_without_template_cut_by_max_length"] += 1
            elif found and any(v != -100 for v in full_labels[len(ids) :]):
                out["responses_cut_by_max_length"] += 1
    return out


def run_check(capsys, *args):
    code = main(["check", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def json_report(capsys, data, *extra):
    code, out, err = run_check(
        capsys,
        data,
        "--tokenizer",
        QWEN,
        "--response-template",
        "<|im_start|>assistant\\n",  # typed with an escape, as on a command line
        *[a for t in INSTRUCTIONS for a in ("--instruction-template", t)],
        "--format",
        "json",
        *extra,
    )
    assert err == "" or "error" not in err, err
    return code, json.loads(out)


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


FIELDS = (
    "rows",
    "rows_without_template",
    "tokens",
    "trained_tokens",
    "straddling_tokens",
    "rows_without_template_cut_by_max_length",
    "rows_truncated",
    "responses_cut_by_max_length",
)


def test_jsonl_10k_rows_with_progress_bar(tmp_path):
    texts = [render(CHATML, m) for m in conversations(10_000, seed=1)]
    data = write_jsonl(tmp_path / "train.jsonl", [{"text": t, "id": i} for i, t in enumerate(texts)])
    args = [sys.executable, "-m", "sftmask", "check", str(data), "--tokenizer", str(QWEN)]
    args += ["--response-template", CHATML.response, "--format", "json", "--progress"]
    for t in INSTRUCTIONS:
        args += ["--instruction-template", t]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert re.search(r"10000/10000", done.stderr), "a progress bar on stderr"
    report = json.loads(done.stdout)
    want = truth(texts)
    assert {k: report[k] for k in FIELDS} == want
    assert want["rows_without_template"] > 0 and want["straddling_tokens"] > 0
    assert report["column"] == "text" and report["column_kind"] == "text" and report["format"] == "jsonl"
    assert report["trained_fraction"] == pytest.approx(want["trained_tokens"] / want["tokens"])
    no_template = [i for i, t in enumerate(texts) if CHATML.response not in t]
    assert report["rows_without_template_sample"] == no_template[:20]


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
def test_trl_rows_lost_and_truncation_against_trl_and_truth(tmp_path, capsys):
    trl = pytest.importorskip("trl")
    texts = [render(CHATML, m) for m in conversations(400, seed=2)]
    data = write_jsonl(tmp_path / "small.jsonl", [{"text": t} for t in texts])
    for max_length in (None, 24):
        extra = ["--max-length", max_length] if max_length else []
        code, report = json_report(capsys, data, *extra)
        assert code == 0
        assert {k: report[k] for k in FIELDS} == truth(texts, max_length)
        # TRL 0.19.1 itself, one row at a time, with the first instruction template.
        tok = load_hf_tokenizer("qwen2")
        collator = trl.DataCollatorForCompletionOnlyLM(CHATML.response, INSTRUCTIONS[0], tokenizer=tok)
        raw = load_tokenizer("qwen2")
        lost = []
        for i, text in enumerate(texts):
            ids, labels = truth_for(raw, text, CHATML, keep=max_length)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trl_labels = collator([{"input_ids": ids}])["labels"][0]
            if any(v != -100 for v in labels) and not (trl_labels != -100).any():
                lost.append(i)
        assert report["trl_rows_lost"] == len(lost) > 0
        assert report["trl_rows_lost_sample"] == lost[:20]
    if max_length:
        assert report["rows_without_template_cut_by_max_length"] > 0 and report["responses_cut_by_max_length"] > 0


def test_parquet_text_and_input_ids_columns(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    texts = [render(CHATML, m) for m in conversations(500, seed=3)]
    ids = [load_tokenizer("qwen2").encode(t).ids for t in texts]
    table = pa.table({"text": texts, "input_ids": ids, "n": list(range(len(texts)))})
    pq.write_table(table, tmp_path / "train.parquet", row_group_size=128)
    want = truth(texts)
    code, by_ids = json_report(capsys, tmp_path / "train.parquet")  # input_ids is read first
    assert code == 0 and by_ids["column_kind"] == "input_ids" and by_ids["format"] == "parquet"
    code, by_text = json_report(capsys, tmp_path / "train.parquet", "--column", "text")
    assert code == 0 and by_text["column_kind"] == "text"
    assert {k: by_ids[k] for k in FIELDS} == {k: by_text[k] for k in FIELDS} == want


def _tokenizer_with_chat_template(folder):
    tok = load_hf_tokenizer("qwen2")
    tok.chat_template = CHATML_JINJA
    tok.save_pretrained(folder)
    tok.chat_template = None
    return folder


def test_saved_datasets_messages_column(tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    convs = conversations(300, seed=4)
    tok_folder = _tokenizer_with_chat_template(tmp_path / "tok")
    datasets.Dataset.from_dict({"messages": convs}).save_to_disk(str(tmp_path / "ds"))
    half = len(convs) // 2
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"messages": convs[:half]}),
            "test": datasets.Dataset.from_dict({"messages": convs[half:]}),
        }
    ).save_to_disk(str(tmp_path / "dd"))

    def report(data, *extra):
        code, out, err = run_check(
            capsys, data, "--tokenizer", tok_folder, "--response-template", CHATML.response,
            *[a for t in INSTRUCTIONS for a in ("--instruction-template", t)], "--format", "json", *extra,
        )  # fmt: skip
        assert code == 0, err
        return json.loads(out)

    texts = [render(CHATML, m) for m in convs]
    got = report(tmp_path / "ds")
    assert got["format"] == "datasets" and got["column_kind"] == "messages"
    assert {k: got[k] for k in FIELDS} == truth(texts)
    assert {k: report(tmp_path / "dd")[k] for k in FIELDS} == truth(texts[:half])  # train by default
    assert {k: report(tmp_path / "dd", "--split", "test")[k] for k in FIELDS} == truth(texts[half:])


def test_show_renders_problem_rows_first(tmp_path, capsys):
    texts = ["no template here", *(render(CHATML, m) for m in conversations(20, seed=5))]
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in texts])
    code, out, _ = run_check(
        capsys, data, "--tokenizer", QWEN, "--response-template", CHATML.response, "--show", "2", "--no-progress"
    )
    assert code == 0
    missing = sum(CHATML.response not in t for t in texts)
    assert re.search(rf"^rows without a response template\s+{missing} \({missing / len(texts):.2%}\)$", out, re.M)
    shown = re.findall(r"^row (\d+) \((.*?);", out, re.M)
    # The text report counts rows from 1 (the first line of the file is row 1).
    assert shown[0] == ("1", "no response template") and len(shown) == 2
    assert "no template here" in out and "[[" in out
    code, report = json_report(capsys, data, "--show", "3")
    assert report["shown"][0]["row"] == 0 and len(report["shown"]) == 3
    for s in report["shown"]:
        assert s["text"].replace("[[", "").replace("]]", "") == texts[s["row"]]


def test_fail_if_missing_above_sets_the_exit_code(tmp_path, capsys):
    texts = ["no template", *[render(CHATML, m) for m in conversations(9, seed=6) if len(m) > 1]]
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in texts])
    fraction = sum(CHATML.response not in t for t in texts) / len(texts)
    code, report = json_report(capsys, data, "--fail-if-missing-above", fraction - 0.01)
    assert code == 1 and report["failed"] is True
    assert report["rows_without_template_fraction"] == pytest.approx(fraction)
    code, report = json_report(capsys, data, "--fail-if-missing-above", fraction)
    assert code == 0 and report["failed"] is False
    code, out, _ = run_check(
        capsys, data, "--tokenizer", QWEN, "--response-template", "x", "--fail-if-missing-above", "0"
    )
    assert code == 1 and "FAILED" in out


def test_every_json_field_is_documented(tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": render(CHATML, m)} for m in conversations(5, seed=7)])
    _, report = json_report(capsys, data, "--show", "1", "--max-length", "50")
    section = README.read_text(encoding="utf-8").split("### `--format json` fields", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `(\w+)` \|", section, re.M)
    assert sorted(documented) == sorted(report), "README's table lists exactly the fields"
    assert set(report["shown"][0]) == {"row", "reason", "text", "trained_text"}


def _bad_parquet(tmp_path):
    p = tmp_path / "bad.parquet"
    p.write_bytes(b"PAR1 this is not parquet")
    return p


BAD_INPUTS = {
    "missing file": (lambda p: p / "nope.jsonl", [], "no such file or folder"),
    "bad json": (lambda p: _write(p / "a.jsonl", '{"text": "ok"}\n{"text": \n'), [], r"a\.jsonl:2: not valid JSON"),
    "not an object": (lambda p: _write(p / "a.jsonl", "[1, 2]\n"), [], "expected a JSON object"),
    "no known column": (lambda p: _write(p / "a.jsonl", '{"prompt": "x"}\n'), [], "no 'text', 'messages' or"),
    "wrong column": (lambda p: _write(p / "a.jsonl", '{"text": "x"}\n'), ["--column", "body"], "no column 'body'"),
    "column type": (lambda p: _write(p / "a.jsonl", '{"text": 3}\n'), [], "holds int values"),
    "missing key": (lambda p: _write(p / "a.jsonl", '{"text": "a"}\n{"other": 1}\n'), [], r"a\.jsonl:2: no 'text'"),
    "bad ids": (lambda p: _write(p / "a.jsonl", '{"input_ids": [1, 2]}\n{"input_ids": [1, "x"]}\n'), [], "row 2:"),
    "id out of vocab": (lambda p: _write(p / "a.jsonl", '{"input_ids": [1, 99999999]}\n'), [], "not in the vocabulary"),
    "bad parquet": (_bad_parquet, [], "not a readable Parquet file"),
    "unknown format": (lambda p: _write(p / "a.csv", "text\nx\n"), [], "cannot tell the format"),
    "plain folder": (lambda p: p, [], "not a saved datasets dataset"),
    "split on a file": (lambda p: _write(p / "a.jsonl", '{"text": "x"}\n'), ["--split", "x"], "--split is for"),
    "no chat template": (
        lambda p: _write(p / "a.jsonl", '{"messages": [{"role": "user", "content": "x"}]}\n'),
        [],
        "has no chat template",
    ),
    "bad fraction": (lambda p: _write(p / "a.jsonl", '{"text": "x"}\n'), ["--fail-if-missing-above", "5"], "fraction"),
    "empty template": (lambda p: _write(p / "a.jsonl", '{"text": "x"}\n'), ["--response-template", ""], "empty"),
}


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, case):
    make, extra, message = BAD_INPUTS[case]
    data = make(tmp_path)
    code, out, err = run_check(capsys, data, "--tokenizer", QWEN, "--response-template", "x", *extra)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sftmask check: error: "), err
    assert re.search(message, lines[0]), lines[0]


def test_bad_tokenizer_in_a_real_process(tmp_path):
    data = _write(tmp_path / "a.jsonl", '{"text": "x"}\n')
    done = subprocess.run(
        [sys.executable, "-m", "sftmask", "check", str(data), "--tokenizer", str(tmp_path / "nope"),
         "--response-template", "x"],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == f"sftmask check: error: no such tokenizer file or folder: {tmp_path / 'nope'}"


def test_text_report_lines(tmp_path, capsys):
    texts = [render(CHATML, m) for m in conversations(50, seed=8)]
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in texts])
    code, out, _ = run_check(
        capsys, data, "--tokenizer", QWEN, "--response-template", CHATML.response, "--max-length", "30"
    )
    want = truth(texts, 30)
    assert code == 0
    assert re.search(rf"^rows\s+{want['rows']}$", out, re.M)
    assert re.search(rf"^tokens\s+{want['tokens']}$", out, re.M)
    assert re.search(rf"^rows longer than --max-length 30\s+{want['rows_truncated']}$", out, re.M)
    assert "rows TRL's token matching would lose" in out and "tokens straddling a template boundary" in out


# ---------------------------------------------------------------------------------------------
# What a new user hit (issue 9).


def test_text_report_row_lists_count_from_1(tmp_path, capsys):
    texts = [render(CHATML, m) for m in conversations(40, seed=9)]
    texts[0] = texts[7] = "no template in this row"
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in texts])
    code, out, _ = run_check(capsys, data, "--tokenizer", QWEN, "--response-template", CHATML.response)
    assert code == 0
    # Row numbers as an editor shows the file's lines (one row per line here).
    lines = data.read_text(encoding="utf-8").splitlines()
    want = [n for n, line in enumerate(lines, 1) if CHATML.response not in json.loads(line)["text"]]
    assert 1 in want and 8 in want
    listed = re.search(r"^rows without a template, by row number \(first row = 1\): (.*)$", out, re.M)
    assert listed and [int(x) for x in listed.group(1).split(", ")] == want
    # The lists are set apart from the counts above them.
    assert "\n\nrows without a template, by row number" in out
    # --format json keeps 0-based indices, as README.md says.
    _, report = json_report(capsys, data)
    assert report["rows_without_template_sample"] == [n - 1 for n in want]
    section = README.read_text(encoding="utf-8").split("### `--format json` fields", 1)[1].split("\n## ", 1)[0]
    for key in ("rows_without_template_sample", "trl_rows_lost_sample", "shown"):
        assert "0-based" in re.search(rf"^\| `{key}` \|(.*)$", section, re.M).group(1)


def _rows(texts):
    return [{"text": t, "id": i} for i, t in enumerate(texts)]


JSON_DOCUMENTS = {
    "pretty array (.json)": ("d.json", lambda texts: _rows(texts)),
    "pretty array (.jsonl)": ("d.jsonl", lambda texts: _rows(texts)),
    "object with a data array": ("d.json", lambda texts: {"version": "1.0", "data": _rows(texts)}),
    "columns": ("d.json", lambda texts: {"text": texts, "id": list(range(len(texts)))}),
}


@pytest.mark.parametrize("case", sorted(JSON_DOCUMENTS))
def test_pretty_printed_json_documents_are_read(tmp_path, capsys, case):
    name, shape = JSON_DOCUMENTS[case]
    texts = [render(CHATML, m) for m in conversations(60, seed=10)]
    data = tmp_path / name
    data.write_text(json.dumps(shape(texts), ensure_ascii=False, indent=2), encoding="utf-8")
    code, report = json_report(capsys, data)
    assert code == 0 and report["format"] == "json" and report["column"] == "text"
    assert {k: report[k] for k in FIELDS} == truth(texts)


@pytest.mark.parametrize(
    "content",
    ['{\n  "name": "x",\n  "count": 3\n}\n', '{\n  "text": ["a", "b"],\n  "id": [1]\n}\n', '{\n  "text": \n'],
)
def test_a_json_document_of_another_shape_says_what_is_expected(tmp_path, capsys, content):
    data = _write(tmp_path / "d.json", content)
    code, out, err = run_check(capsys, data, "--tokenizer", QWEN, "--response-template", "x")
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "expected JSON Lines (one object per line), a JSON array of row objects" in lines[0]
    assert ":1: not valid JSON" not in lines[0]


def test_show_legend_matches_colours(tmp_path, capsys, monkeypatch):
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": render(CHATML, m)} for m in conversations(3, seed=11)])
    argv = ["check", str(data), "--tokenizer", str(QWEN), "--response-template", CHATML.response, "--show", "1"]
    assert main(argv) == 0
    plain = capsys.readouterr().out
    assert re.search(r"^row 1 \(.*\[\[…\]\] = trained\):$", plain, re.M) and "[[" in plain.split("\nrow 1 (", 1)[1]

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    monkeypatch.setattr(sys, "stdout", tty)
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert main(argv) == 0
    header, body = tty.getvalue().split("\nrow 1 (", 1)[1].split("\n", 1)
    assert "\x1b[1;32m" in body and "[[" not in body, "the row is shown in colour"
    assert "[[" not in header and "green\x1b[0m = trained" in header


def _hub_env(tmp_path, **extra):
    """An environment with an empty Hugging Face cache and the hub at a port nothing listens on."""
    import os
    import socket

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused at once
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=f"http://127.0.0.1:{closed.getsockname()[1]}", **extra)
    return env, closed


def _check_with_hub_name(tmp_path, env, name="someone/some-model"):
    import time

    data = _write(tmp_path / "a.jsonl", '{"text": "hi"}\n')
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "sftmask", "check", str(data), "--tokenizer", name, "--response-template", "x",
         "--format", "json"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    return done, time.monotonic() - start


@pytest.mark.parametrize("offline_flag", [False, True])
def test_hub_name_without_network_is_one_line_at_once(tmp_path, offline_flag):
    env, closed = _hub_env(tmp_path, **({"HF_HUB_OFFLINE": "1"} if offline_flag else {}))
    with closed:
        done, seconds = _check_with_hub_name(tmp_path, env)
    assert done.returncode == 2 and done.stdout == "" and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # no retry messages from huggingface_hub
    assert "someone/some-model is not in the local Hugging Face cache" in lines[0]
    assert ("offline mode is on" if offline_flag else "cannot be reached") in lines[0]
    assert seconds < 20, f"took {seconds:.1f} s"  # the hub's retries alone took ~50 s


def test_hub_name_in_the_local_cache_loads_without_network(tmp_path):
    env, closed = _hub_env(tmp_path)
    # The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<commit>/files}.
    repo = tmp_path / "hf" / "hub" / "models--someone--cached-model"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    load_hf_tokenizer("qwen2").save_pretrained(repo / "snapshots" / commit)
    with closed:
        done, _ = _check_with_hub_name(tmp_path, env, "someone/cached-model")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tokens"] == len(load_tokenizer("qwen2").encode("hi").ids)
