"""``tokenize_and_mask`` on conversations: labels equal the SPEC's rule computed here, independently.

Truth (a) of issue 10, computed with transformers only: render the conversation
(``render_jinja_template``, what ``apply_chat_template(tokenize=False)`` calls); locate each trained
assistant message by the region rule of docs/masking.md rule 45 (``tests/region_rule.py``: the
generation prompt, or the whole pieces of a prompt that opens a block, before it; the message
rendered last, less an end-of-conversation suffix or a part the history leaves out, after it; else
the row cannot be located and must be counted, all labels ignored); tokenize the full text with the
transformers tokenizer (``add_special_tokens=False``) and train a token iff its span (from the
previous token's end to its own end, in the tokenizer's own character offsets) overlaps a region.
sftmask renders with minijinja in Rust, tokenizes with the ``tokenizers`` crate in bytes, and must
agree on every template of the corpus. Rows the Rust renderer cannot render go through the
transformers fallback, which applies the plain prefix rule only (rules S1 and E1): for those rows
the truth is that rule.

Truth (b): on every TRL ``*_training`` template, transformers' ``return_assistant_tokens_mask``
(its ``{% generation %}`` spans) equals sftmask's labels except for whitespace-only tokens at a
region's edge, and the differences by design listed in ``TRL_DIFFERS``.

Each template is paired with a real fixture tokenizer (Llama-3 for Llama-3 templates, Phi-3 for
Phi-3, the sentencepiece Mistral one for Mistral templates, Qwen2 otherwise) to which the
special-token strings of the whole corpus are added: the byte rule does not depend on the
vocabulary being the model's.
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))

sys.path.insert(0, str(Path(__file__).parent))

from build_chat_templates import chat_templates, conversations, special_tokens
from region_rule import select_regions

jinja2 = pytest.importorskip("jinja2")
transformers = pytest.importorskip("transformers")
from transformers.utils.chat_template_utils import render_jinja_template  # noqa: E402

import sftmask  # noqa: E402
from conftest import load_tokenizer  # noqa: E402
from sftmask import _core  # noqa: E402

_TEMPLATES = chat_templates()
CONVERSATIONS = conversations(seed=3, count=20)
_TOKEN_RE = re.compile(r"<\|[^|<>\s]{1,40}\|>|<｜[^｜\s]{1,40}｜>|</?[a-z_]{1,30}>|\[/?[A-Z_]{2,30}\]|<[A-Z_]{3,40}>")
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


def _corpus_tokens() -> list[str]:
    found: set[str] = set()
    for name, source in _TEMPLATES.items():
        found.update(_TOKEN_RE.findall(source))
        found.update(special_tokens(name).values())
    return sorted(found)


_TOKENIZERS: dict[str, Any] = {}


def _tokenizer(family: str) -> Any:
    """A transformers fast tokenizer of ``family`` with the corpus' special tokens added."""
    if family not in _TOKENIZERS:
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(load_tokenizer(family).to_str())
        backend.add_special_tokens(_corpus_tokens())
        _TOKENIZERS[family] = transformers.PreTrainedTokenizerFast(tokenizer_object=backend)
    return _TOKENIZERS[family]


def tokenizer_for(name: str) -> Any:
    """The fixture tokenizer paired with template ``name``, its special tokens set as the template expects."""
    lowered = name.lower().replace("-", "")
    families = (("llama3", "llama3"), ("phi3", "phi3"), ("mistral", "mistral_v3"))
    family = next((f for key, f in families if key in lowered), "qwen2")
    tok = _tokenizer(family)
    special = special_tokens(name)
    for key in _SPECIAL_KEYS:
        setattr(tok, key, special.get(key))
    tok.chat_template = _TEMPLATES[name]
    return tok


def _render(source: str, messages: list[Any], tools: Any, agp: bool, special: dict[str, str], kw: dict) -> str:
    rendered, _ = render_jinja_template(
        conversations=[messages], tools=tools, chat_template=source, add_generation_prompt=agp, **special, **kw
    )
    return rendered[0]


def selected(messages: list[dict[str, Any]], train_on: str = "all") -> list[int]:
    """The messages the SPEC trains: assistant ones (or the last), a message's ``train`` deciding."""
    assistants = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    out = []
    for i, m in enumerate(messages):
        default = m.get("role") == "assistant" and (train_on == "all" or i == assistants[-1])
        if m.get("train", default):
            out.append(i)
    return out


def truth(
    tok: Any, source: str, conv: dict[str, Any], train_on: str = "all", kw: dict | None = None, extended: bool = True
) -> tuple[str, Any]:
    """("ok", (ids, labels)), ("not_located", ids) or ("error", why), by the rule in the module doc."""
    kw = kw or {}
    special = {k: getattr(tok, k) for k in _SPECIAL_KEYS if isinstance(getattr(tok, k), str)}
    messages, tools = conv["messages"], conv["tools"]

    def render(msgs: list[Any], agp: bool) -> str:
        return _render(source, msgs, tools, agp, special, kw)

    kind, value = select_regions(
        render, messages, _marker_strings(tok), selected(messages, train_on), extended=extended
    )
    if kind == "error":
        return kind, value
    full = render(messages, False)
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    if kind == "not_located":
        return "not_located", ids
    raw = full.encode()
    # Byte offsets from the rule, as character offsets for the tokenizer's own offsets.
    regions = [(len(raw[:s].decode()), len(raw[:e].decode())) for _, s, e, _ in value[1] if e > s]
    labels, start = [], 0
    for token, (_, stop) in zip(ids, enc["offset_mapping"]):
        stop = max(stop, start)
        if stop > start:
            hit = any(start < re_ and stop > rs for rs, re_ in regions)
        else:
            hit = any(rs <= start < re_ for rs, re_ in regions)
        labels.append(token if hit else -100)
        start = stop
    return "ok", (ids, labels)


def _marker_strings(tok: Any) -> list[str]:
    """The tokenizer's added tokens: what sftmask treats as markers and prompt pieces too."""
    return sorted({t.content for t in tok.backend_tokenizer.get_added_tokens_decoder().values() if t.content})


def rust_renders(source: str, tok: Any, convs: list[dict[str, Any]]) -> list[bool]:
    """Whether the Rust renderer renders each conversation (else sftmask falls back to transformers)."""
    special = {k: getattr(tok, k) for k in _SPECIAL_KEYS if isinstance(getattr(tok, k), str)}
    template = _core.ChatTemplate(source, **special)
    return [kind != "unsupported" for kind, _ in template.render(json.dumps(convs))]


def check_template(name: str, convs: list[dict[str, Any]], train_on: str = "all") -> dict[str, int]:
    tok = tokenizer_for(name)
    source = _TEMPLATES[name]
    native = rust_renders(source, tok, convs)
    wanted = [(c, truth(tok, source, c, train_on, extended=n)) for c, n in zip(convs, native)]
    # Conversations transformers cannot render at all are the render tests' business.
    kept = [(c, w) for c, w in wanted if w[0] != "error"]
    if not kept:
        return {"skipped": len(wanted)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback warning and the not-located warning
        out, stats = (
            sftmask.tokenize_and_mask(
                [c["messages"] for c, _ in kept],
                tok,
                tools=None,
                train_on=train_on,
                return_stats=True,
                num_threads=2,
            )
            if all(c["tools"] is None for c, _ in kept)
            else _per_row_tools(kept, tok, train_on)
        )
    not_located = 0
    for r, ((conv, (kind, want)), ids, labels) in enumerate(zip(kept, out["input_ids"], out["labels"])):
        if kind == "not_located":
            assert r in stats.not_located_rows, f"{name} row {r}: sftmask located a turn the rule cannot"
            assert ids == want and set(labels) == {-100}, f"{name} row {r}"
            not_located += 1
            continue
        assert r not in stats.not_located_rows, f"{name} row {r}: not located, but the rule locates it"
        assert (ids, labels) == want, f"{name} row {r}: {conv['messages']}"
    assert stats.rows_not_located == not_located
    return {"rows": len(kept), "not_located": not_located}


def _per_row_tools(kept: list[Any], tok: Any, train_on: str) -> tuple[dict[str, Any], Any]:
    batch = {"messages": [c["messages"] for c, _ in kept], "tools": [c["tools"] for c, _ in kept]}
    return sftmask.tokenize_and_mask(batch, tok, train_on=train_on, return_stats=True, num_threads=2)


@pytest.mark.parametrize("name", sorted(_TEMPLATES))
def test_labels_equal_rule_on_corpus(name: str) -> None:
    check_template(name, CONVERSATIONS)


QWEN = "llama_cpp/Qwen-Qwen2.5-7B-Instruct"
LLAMA = "llama_cpp/meta-llama-Llama-3.1-8B-Instruct"
TWO_TURNS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]


@pytest.mark.parametrize("name", [QWEN, LLAMA, "trl/qwen3", "llama_cpp/mistralai-Mistral-Nemo-Instruct-2407"])
def test_train_on_last_and_flags(name: str) -> None:
    if name not in _TEMPLATES:
        pytest.skip(f"{name} is not in the corpus")
    flagged = [dict(m) for m in TWO_TURNS]
    flagged[2]["train"] = False
    convs = [{"messages": m, "tools": None} for m in (TWO_TURNS, flagged)]
    check_template(name, convs, train_on="last")
    check_template(name, convs, train_on="all")
    # The flag alone: the first answer is out, the last one in, as train_on="last".
    tok = tokenizer_for(name)
    out_flag = sftmask.tokenize_and_mask([flagged], tok)
    out_last = sftmask.tokenize_and_mask([TWO_TURNS], tok, train_on="last")
    assert out_flag == out_last


def _with_content_trained(tok: Any, source: str, messages: list[dict[str, Any]], i: int) -> tuple[list, list]:
    """Truth for a non-assistant message ``i`` flagged ``"train": True``: the rule's labels plus
    the tokens overlapping its content, found here as the one place the full rendering differs
    from the rendering with that content replaced by a marker (transformers renders both)."""
    special = {k: getattr(tok, k) for k in _SPECIAL_KEYS if isinstance(getattr(tok, k), str)}
    unflagged = [{k: v for k, v in m.items() if k != "train"} for m in messages]
    kind, (ids, labels) = truth(tok, source, {"messages": unflagged, "tools": None})
    assert kind == "ok"
    full = _render(source, unflagged, None, False, special, {})
    probe = [dict(m) for m in unflagged]
    probe[i]["content"] = "\ue000"
    marked = _render(source, probe, None, False, special, {})
    start = marked.index("\ue000")
    content = unflagged[i]["content"]
    assert full[start : start + len(content)] == content and marked.count("\ue000") == 1
    lo, hi = len(full[:start].encode()), len(full[: start + len(content)].encode())
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    byte_end = [len(full[:e].encode()) for _, e in enc["offset_mapping"]]
    out, prev = list(labels), 0
    for k, (token, end) in enumerate(zip(ids, byte_end)):
        end = max(end, prev)
        if (end > prev and prev < hi and end > lo) or (end == prev and lo <= prev < hi):
            out[k] = token
        prev = end
    return ids, out


@pytest.mark.parametrize("name, i", [(QWEN, 1), (QWEN, 0), (LLAMA, 0), (LLAMA, 3)])
def test_train_true_on_another_message_trains_its_content(name: str, i: int) -> None:
    tok = tokenizer_for(name)
    flagged = [dict(m) for m in TWO_TURNS]
    flagged[i]["train"] = True
    ids, want = _with_content_trained(tok, _TEMPLATES[name], flagged, i)
    out, stats = sftmask.tokenize_and_mask([TWO_TURNS, flagged], tok, return_stats=True)
    assert out["input_ids"][1] == ids and out["labels"][1] == want
    assert out["labels"][1] != out["labels"][0]
    assert stats.rows_not_located == 0


def test_train_true_on_a_transformed_content_is_not_located() -> None:
    # The template strips the content: where it sits cannot be proven, so the row is not located.
    source = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | trim }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tok = tokenizer_for(QWEN)
    flagged = [dict(m) for m in TWO_TURNS]
    flagged[1] = {**flagged[1], "content": "  Hi  ", "train": True}
    out, stats = sftmask.tokenize_and_mask(
        [TWO_TURNS, flagged], tok, chat_template=source, on_missing="ignore", return_stats=True
    )
    assert stats.not_located_rows == [1] and set(out["labels"][1]) == {-100}


def test_max_length_truncation_is_counted() -> None:
    tok = tokenizer_for(QWEN)
    full = sftmask.tokenize_and_mask([TWO_TURNS, TWO_TURNS[:3]], tok)
    n = len(full["input_ids"][1])
    out, stats = sftmask.tokenize_and_mask([TWO_TURNS, TWO_TURNS[:3]], tok, max_length=n, return_stats=True)
    assert stats.rows_truncated == 1
    assert out["input_ids"] == [ids[:n] for ids in full["input_ids"]]
    assert out["labels"] == [labels[:n] for labels in full["labels"]]


# One exchange, reasoning in the last answer (kept by the templates that drop earlier reasoning).
THINKING = [
    {"role": "system", "content": "Think first."},
    {"role": "user", "content": "3+3?"},
    {"role": "assistant", "content": "6.", "reasoning_content": "Add 3 and 3; 東京."},
]


def _trained_text(tok: Any, labels: list[int]) -> list[str]:
    runs, run = [], []
    for t in [*labels, -100]:
        if t != -100:
            run.append(t)
        elif run:
            runs.append(tok.decode(run))
            run = []
    return runs


@pytest.mark.parametrize("name", ["llama_cpp/Qwen-Qwen3-0.6B", "llama_cpp/Qwen3.5-4B", "trl/qwen3"])
def test_reasoning_mask_trains_answer_and_marker_only(name: str) -> None:
    tok = tokenizer_for(name)
    train = sftmask.tokenize_and_mask([THINKING], tok, train_on="last")
    mask = sftmask.tokenize_and_mask([THINKING], tok, train_on="last", reasoning="mask")
    assert train["input_ids"] == mask["input_ids"]
    [trained] = _trained_text(tok, train["labels"][0])
    [masked] = _trained_text(tok, mask["labels"][0])
    # The rendered reasoning is trained by default and masked on request; the answer and the
    # end-of-turn marker are trained either way.
    assert "Add 3 and 3" in trained and trained.endswith(masked)
    assert masked.startswith("6.") and "Add" not in masked and "think" not in masked


@pytest.mark.parametrize("name", ["llama_cpp/Qwen-Qwen3-0.6B", "trl/qwen3"])
def test_reasoning_mask_in_rewritten_history(name: str) -> None:
    # Qwen3 drops the earlier answer's reasoning from the text: its region is located in the text
    # (rule E3), and reasoning="mask" finds the content's start through the part left out.
    tok = tokenizer_for(name)
    two = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "reasoning_content": "Greet back."},
        {"role": "user", "content": "3+3?"},
        {"role": "assistant", "content": "6.", "reasoning_content": "Add 3 and 3."},
    ]
    out, stats = sftmask.tokenize_and_mask([two], tok, return_stats=True)
    assert stats.rows_not_located == 0
    trained = _trained_text(tok, out["labels"][0])
    assert trained[0] == "Hello!<|im_end|>" and "Add 3 and 3." in trained[1]
    masked = sftmask.tokenize_and_mask([two], tok, reasoning="mask")
    assert masked["input_ids"] == out["input_ids"]
    assert _trained_text(tok, masked["labels"][0]) == ["Hello!<|im_end|>", "6.<|im_end|>"]


def test_reasoning_mask_where_the_template_transforms_content_is_an_error() -> None:
    tok = tokenizer_for("llama_cpp/Qwen-Qwen3-0.6B")
    bad = [dict(m) for m in THINKING]
    bad[2]["content"] = "\n\n6."  # Qwen3 renders content.lstrip("\n"): not the content as given
    with pytest.raises(sftmask.RowError, match="not supported yet") as e:
        sftmask.tokenize_and_mask([THINKING, bad], tok, reasoning="mask")
    assert e.value.row == 1


def test_reasoning_option_is_checked() -> None:
    with pytest.raises(sftmask.OptionError):
        sftmask.tokenize_and_mask([TWO_TURNS], tokenizer_for(QWEN), reasoning="hide")


def test_llama31_where_trl_assistant_only_loss_cannot() -> None:
    """TRL 1.x's ``assistant_only_loss`` needs ``{% generation %}`` tags; Llama-3.1's template has none
    (transformers' assistant mask is all zeros, TRL raises). sftmask trains exactly each answer and
    its ``<|eot_id|>``, with the real Llama-3 tokenizer."""
    source = _TEMPLATES[LLAMA]
    assert "generation" not in re.findall(r"{%-?\s*(\w+)", source)
    tok = tokenizer_for(LLAMA)
    got = tok.apply_chat_template(
        TWO_TURNS, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, date_string="26 Jul 2024"
    )
    assert set(got["assistant_masks"]) == {0}
    out, stats = sftmask.tokenize_and_mask([TWO_TURNS], tok, return_stats=True, date_string="26 Jul 2024")
    assert out["input_ids"][0] == got["input_ids"]
    labels = out["labels"][0]
    trained_runs, run = [], []
    for t in labels:
        if t != -100:
            run.append(t)
        elif run:
            trained_runs.append(run)
            run = []
    if run:
        trained_runs.append(run)
    assert [tok.decode(r) for r in trained_runs] == ["Hello!<|eot_id|>", "4<|eot_id|>"]
    assert stats.turns_without_end_marker == 0


# --------------------------------------------------------------------------
# Hostile input: a clear error naming the row, or a counted row; never a panic.
# --------------------------------------------------------------------------

GOOD = TWO_TURNS[1:3]


@pytest.mark.parametrize(
    "bad",
    [
        [{"content": "no role"}, {"role": "assistant", "content": "x"}],
        [{"role": "user"}, {"role": "assistant"}],
        [{"role": "user", "content": 5}, {"role": "assistant", "content": None}],
        [{"role": "user", "content": [{"type": "text", "text": "parts"}]}, {"role": "assistant", "content": ["x"]}],
        [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "x"}],
        [],
        [{"role": "assistant", "content": "only me"}],
    ],
)
@pytest.mark.parametrize("name", [QWEN, LLAMA, "llama_cpp/mistralai-Mistral-Nemo-Instruct-2407"])
def test_hostile_messages(name: str, bad: list[dict[str, Any]]) -> None:
    if name not in _TEMPLATES:
        pytest.skip(f"{name} is not in the corpus")
    tok = tokenizer_for(name)
    rows = [GOOD, bad, GOOD]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out, stats = sftmask.tokenize_and_mask(rows, tok, return_stats=True)
    except sftmask.RowError as e:
        assert e.row == 1, e
        return
    # It rendered: then every row is the rule's, the bad one included (or counted, not located).
    for r, conv in enumerate(rows):
        if not any(m.get("role") == "assistant" for m in conv):
            continue
        kind, want = truth(tok, _TEMPLATES[name], {"messages": conv, "tools": None})
        if kind == "ok":
            assert (out["input_ids"][r], out["labels"][r]) == want, (name, r)
        elif kind == "not_located":
            assert r in stats.not_located_rows


def test_not_plain_data_is_a_row_type_error() -> None:
    with pytest.raises(sftmask.RowTypeError) as e:
        sftmask.tokenize_and_mask([GOOD, [{"role": "user", "content": {1, 2}}]], tokenizer_for(QWEN))
    assert e.value.row == 1
    with pytest.raises(sftmask.RowTypeError) as e:
        sftmask.tokenize_and_mask([GOOD, GOOD, ["not a dict"]], tokenizer_for(QWEN))
    assert e.value.row == 2


def test_template_that_raises_names_row_and_message() -> None:
    source = (
        "{% for m in messages %}{% if m.role == 'user' and m.content == 'boom' %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}"
        "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    )
    rows = [GOOD, GOOD, [{"role": "user", "content": "boom"}]]
    with pytest.raises(sftmask.RowError, match="roles must alternate") as e:
        sftmask.tokenize_and_mask(rows, tokenizer_for(QWEN), chat_template=source)
    assert e.value.row == 2


def test_template_that_renders_megabytes_is_a_row_error() -> None:
    source = (
        "{% for m in messages %}{% if m.content == 'big' %}{% for i in range(3000) %}{% for j in range(1000) %}"
        "0123456789012345678901234567890123456789{% endfor %}{% endfor %}{% endif %}{{ m.content }}{% endfor %}"
    )
    rows = [GOOD, [{"role": "user", "content": "big"}]]
    with pytest.raises(sftmask.RowError) as e:
        sftmask.tokenize_and_mask(rows, tokenizer_for(QWEN), chat_template=source)
    assert e.value.row == 1
    assert "limit" in str(e.value)


def test_not_located_is_counted_and_on_missing_decides() -> None:
    # A template that rewrites history: every earlier answer is rendered differently once a later
    # message follows, so the earlier turn has no exact region.
    source = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n"
        "{% if m.role == 'assistant' and not loop.last %}[old]{% endif %}{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tok = tokenizer_for(QWEN)
    rows = [GOOD, TWO_TURNS]
    with pytest.warns(sftmask.MissingTemplateWarning, match="cannot be located"):
        out, stats = sftmask.tokenize_and_mask(rows, tok, chat_template=source, return_stats=True)
    assert (stats.rows_not_located, stats.not_located_rows) == (1, [1])
    assert set(out["labels"][1]) == {-100}
    assert out["labels"][0] != [-100] * len(out["labels"][0])
    # train_on="last" needs only the final turn, which is exact.
    _, stats = sftmask.tokenize_and_mask(rows, tok, chat_template=source, train_on="last", return_stats=True)
    assert stats.rows_not_located == 0
    with pytest.raises(sftmask.RowError) as e:
        sftmask.tokenize_and_mask(rows, tok, chat_template=source, on_missing="error")
    assert e.value.row == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sftmask.tokenize_and_mask(rows, tok, chat_template=source, on_missing="ignore")


def test_turn_without_end_marker_is_counted() -> None:
    source = (
        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    _, stats = sftmask.tokenize_and_mask([TWO_TURNS], tokenizer_for(QWEN), chat_template=source, return_stats=True)
    assert stats.turns_without_end_marker == 2


def test_unsupported_template_falls_back_with_one_warning() -> None:
    name = "llama_cpp/meetkai-functionary-medium-v3.1"
    if name not in _TEMPLATES:
        pytest.skip("the corpus has no template the Rust renderer cannot render")
    tok = tokenizer_for(name)
    convs = [{"messages": m, "tools": None} for m in (TWO_TURNS, GOOD, GOOD)]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        sftmask.tokenize_and_mask([c["messages"] for c in convs], tok)
    fallback = [w for w in seen if "Rust renderer cannot render" in str(w.message)]
    assert len(fallback) == 1 and "the chat template of" in str(fallback[0].message)
    check_template(name, convs)


def test_no_chat_template_is_a_clear_error() -> None:
    tok = tokenizer_for(QWEN)
    saved, tok.chat_template = tok.chat_template, None
    try:
        with pytest.raises(sftmask.OptionTypeError, match="chat_template="):
            sftmask.tokenize_and_mask([GOOD], tok)
    finally:
        tok.chat_template = saved


def plain_conversations(seed: int, count: int) -> list[list[dict[str, Any]]]:
    """Corpus conversations with text contents and no tool calls (one Arrow type per column)."""
    return [
        c["messages"]
        for c in conversations(seed=seed, count=count)
        if all(isinstance(m["content"], str) and "tool_calls" not in m for m in c["messages"])
    ]


def test_datasets_map_num_proc_equals_single_process() -> None:
    datasets = pytest.importorskip("datasets")
    tok = tokenizer_for(QWEN)
    convs = plain_conversations(seed=5, count=40)
    ds = datasets.Dataset.from_dict({"messages": convs})
    kwargs = {"batched": True, "batch_size": 5, "remove_columns": ["messages"], "fn_kwargs": {"tokenizer": tok}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = ds.map(sftmask.tokenize_and_mask, **kwargs)
        two = ds.map(sftmask.tokenize_and_mask, num_proc=2, **kwargs)
        direct = sftmask.tokenize_and_mask(ds["messages"], tok)
    assert one["input_ids"] == two["input_ids"] == direct["input_ids"]
    assert one["labels"] == two["labels"] == direct["labels"]


def test_threads_do_not_change_labels() -> None:
    tok = tokenizer_for(QWEN)
    convs = plain_conversations(seed=6, count=60)
    assert sftmask.tokenize_and_mask(convs, tok, num_threads=1) == sftmask.tokenize_and_mask(convs, tok, num_threads=4)


# --------------------------------------------------------------------------
# Truth (b): TRL's {% generation %} spans on its *_training templates.
# --------------------------------------------------------------------------

_TRAINING = sorted(n for n in _TEMPLATES if n.startswith("trl/") and n.endswith("_training"))

#: Templates whose TRL spans differ from the SPEC's regions by design: template -> (the kinds of
#: runs of differing tokens allowed, why). A run is "theirs before" (trained by TRL only, right
#: before a token sftmask trains: the start of a region), "ours before" (trained by sftmask only,
#: right before a token both train) or "ours after" (sftmask only, right after one both train).
#: Every other template must agree except for whitespace-only tokens at a region's edge.
_HEADER = (
    "TRL trains the header or the block the generation prompt opens, which SPEC rule 5 never trains "
    "(it is the prompt the model is given)"
)
TRL_DIFFERS: dict[str, tuple[set[str], str]] = {
    **{
        f"trl/{n}_training": ({"theirs before"}, _HEADER)
        for n in (
            "deepseek_r1_distill",  # <｜Assistant｜>; <｜tool▁outputs▁end｜> after tool results
            "deepseekv3",  # <｜Assistant｜>; <｜tool▁outputs▁end｜> after tool results
            "gptoss",  # <|start|>assistant
            "muse_glimmer",  # <|start|>assistant
            "nemotron_3_5_lightning",  # <think>, opened by the generation prompt
            "nemotron_3_nano",
            "nemotron_3_super",
            "nemotron_3_ultra",
            "qwen3_5_nothink",  # <think>\n\n</think>, the whole generation prompt's block
            "qwen3_5_think",  # <think>
            "qwen3_6",
            "qwen3_8",
        )
    },
    "trl/diffusion_gemma_training": (
        {"ours before", "ours after"},
        "after a tool result the generation prompt is empty, so the <|turn>model header the full rendering "
        "writes there is the model's to write (rule 3); a tool-calling turn rendered last ends with "
        "<|tool_response>, its end-of-turn marker (rule 4); TRL marks neither",
    ),
}


def _edge_whitespace(tok: Any, ids: list[int], t: int, ours: list[bool], theirs: list[bool]) -> bool:
    """Token ``t`` is whitespace only and next to a region of either mask."""
    if tok.decode([ids[t]]).strip():
        return False
    return any(0 <= n < len(ids) and (ours[n] or theirs[n]) for n in (t - 1, t + 1))


def _runs(differ: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for t in differ:
        if runs and runs[-1][1] == t:
            runs[-1] = (runs[-1][0], t + 1)
        else:
            runs.append((t, t + 1))
    return runs


def _run_kind(a: int, b: int, ours: list[bool], theirs: list[bool]) -> str:
    mine = ours[a]
    if any(ours[t] != mine or theirs[t] == mine for t in range(a, b)):
        return "mixed"
    after = b < len(ours) and ours[b] and (theirs[b] or not mine)
    before = a > 0 and ours[a - 1] and theirs[a - 1]
    if not mine and after:
        return "theirs before"
    if mine and b < len(ours) and ours[b] and theirs[b]:
        return "ours before"
    if mine and before:
        return "ours after"
    return "elsewhere"


def trl_compare(name: str, convs: list[dict[str, Any]]) -> tuple[Counter[str], dict[str, set[str]]]:
    """Per conversation: sftmask's labels against transformers' assistant mask (TRL's spans); the
    counts, and the text of the differing runs by kind."""
    tok = tokenizer_for(name)
    counts: Counter[str] = Counter()
    texts: dict[str, set[str]] = {}
    for conv in convs:
        try:
            got = tok.apply_chat_template(
                conv["messages"],
                tools=conv["tools"],
                tokenize=True,
                return_dict=True,
                return_assistant_tokens_mask=True,
            )
        except Exception:
            counts["transformers cannot render"] += 1
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out, stats = sftmask.tokenize_and_mask(
                [conv["messages"]], tok, tools=conv["tools"], return_stats=True, num_threads=1
            )
        ids, labels = out["input_ids"][0], out["labels"][0]
        assert ids == got["input_ids"], f"{name}: different ids"
        if stats.rows_not_located:
            counts["not located"] += 1
            continue
        ours = [label != -100 for label in labels]
        theirs = [bool(m) for m in got["assistant_masks"]]
        differ = [t for t in range(len(ids)) if ours[t] != theirs[t]]
        counts["tokens"] += len(ids)
        counts["trained by both"] += sum(o and t for o, t in zip(ours, theirs))
        different = False
        for a, b in _runs(differ):
            if all(_edge_whitespace(tok, ids, t, ours, theirs) for t in range(a, b)):
                counts["edge whitespace tokens"] += b - a
            else:
                kind = _run_kind(a, b, ours, theirs)
                counts[f"runs: {kind}"] += 1
                texts.setdefault(kind, set()).add(tok.decode(ids[a:b]))
                different = True
        counts["conversations different" if different else "conversations equal"] += 1
    return counts, texts


@pytest.mark.parametrize("name", _TRAINING)
def test_labels_equal_trl_generation_spans(name: str) -> None:
    counts, texts = trl_compare(name, CONVERSATIONS)
    allowed, why = TRL_DIFFERS.get(name, (set(), ""))
    assert set(texts) <= allowed, f"{name}: {dict(counts)} {texts}"
    if allowed:
        assert texts, f"{name} is listed as differing by design ({why}) and does not"
    # What TRL trains before a region is template text, nothing of a message: the generation
    # prompt's text, or special tokens (DeepSeek's <｜tool▁outputs▁end｜> closing the tool results).
    tok = tokenizer_for(name)
    hi = [{"role": "user", "content": "Hi"}]
    prompt = tok.apply_chat_template(hi, tokenize=False, add_generation_prompt=True)
    prompt = prompt.removeprefix(tok.apply_chat_template(hi, tokenize=False))
    special = sorted(_marker_strings(tok), key=len, reverse=True)
    for text in texts.get("theirs before", ()):
        rest = text.strip()
        for t in special:
            rest = rest.replace(t, "")
        assert text.strip() and (text.strip() in prompt or not rest.strip()), (name, text, prompt)
    assert counts["conversations equal"] + counts["conversations different"] > 0 or name.endswith("llava_next_training")


def test_the_fallback_locates_rewritten_history_as_the_rust_path_does() -> None:
    # Qwen3's template drops earlier answers' reasoning. With a construct the Rust renderer
    # refuses in front (a harmless `|safe` + str), transformers renders it, and the Rust rule
    # locates the turns through transformers' renders: the labels must be the Rust path's.
    name = "llama_cpp/Qwen-Qwen3-0.6B"
    if name not in _TEMPLATES:
        pytest.skip(f"{name} is not in the corpus")
    tok = tokenizer_for(name)
    source = _TEMPLATES[name]
    refused = '{%- set _unused = ("x" | safe) + "y" %}' + source
    chat = [
        {"role": "user", "content": "3+3?"},
        {"role": "assistant", "content": "6.", "reasoning_content": "Add them."},
        {"role": "user", "content": "And 4+4?"},
        {"role": "assistant", "content": "8.", "reasoning_content": "Add again."},
    ]
    rust, stats = sftmask.tokenize_and_mask([chat], tok, chat_template=source, return_stats=True)
    assert stats.rows_not_located == 0
    with pytest.warns(UserWarning, match="Rust renderer cannot render"):
        fallback, fstats = sftmask.tokenize_and_mask([chat], tok, chat_template=refused, return_stats=True)
    assert fstats.rows_not_located == 0
    assert fallback == rust


def test_python_values_read_as_their_json() -> None:
    """Conversations are read straight from the Python objects, as their JSON text would parse:
    tuples are lists, non-string keys and big ints go through ``json.dumps`` (which makes keys
    strings), and what JSON cannot hold is the same row error."""
    import datetime

    tok = tokenizer_for("llama_cpp/Qwen-Qwen2.5-7B-Instruct")
    odd = [
        {"role": "system", "content": "You are brief.", "meta": {1: "one", "n": 2**70, "t": (1, 2.5, None)}},
        {"role": "user", "content": "Hi", "train": False},
        {"role": "assistant", "content": "Hello!"},
    ]
    as_json = json.loads(json.dumps(odd))
    assert sftmask.tokenize_and_mask([odd], tok) == sftmask.tokenize_and_mask([as_json], tok)
    for bad in (datetime.date(2026, 1, 1), float("nan")):
        with pytest.raises(sftmask.RowError, match=r"row 1: the conversation is not plain data") as e:
            sftmask.tokenize_and_mask([as_json, [{"role": "user", "content": "x", "when": bad}]], tok)
        assert isinstance(e.value, TypeError)
