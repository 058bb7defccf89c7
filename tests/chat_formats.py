"""Chat formats of the test families, and the ground truth of the masking rule.

The ground truth is computed on the *original string* — template occurrences found with
``str.startswith`` (leftmost-first, response template first at a tie), regions by the rule of
docs/masking.md#response-regions — and mapped to tokens through the tokenizer's own character
offsets. It shares no code with sftmask's byte-level path.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ChatFormat:
    """How one family writes a conversation, and the templates that find its turns."""

    name: str
    response: str
    instructions: tuple[str, ...]
    roles: dict[str, str]  # role -> header text (the template that starts its turn)
    end: str  # end-of-turn text
    prefix: str = ""  # text before the first turn (BOS written in the text)
    tool_role: str | None = None
    system: bool = True
    extra: dict = field(default_factory=dict)

    def render(self, messages: list[dict]) -> str:
        out = [self.prefix]
        for m in messages:
            out.append(self.roles[m["role"]] + m["content"] + self.end)
        return "".join(out)


LLAMA3 = ChatFormat(
    name="llama3",
    response="<|start_header_id|>assistant<|end_header_id|>\n\n",
    instructions=(
        "<|start_header_id|>user<|end_header_id|>\n\n",
        "<|start_header_id|>system<|end_header_id|>\n\n",
        "<|start_header_id|>ipython<|end_header_id|>\n\n",
    ),
    roles={
        "assistant": "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "user": "<|start_header_id|>user<|end_header_id|>\n\n",
        "system": "<|start_header_id|>system<|end_header_id|>\n\n",
        "tool": "<|start_header_id|>ipython<|end_header_id|>\n\n",
    },
    end="<|eot_id|>",
    prefix="<|begin_of_text|>",
    tool_role="tool",
)

CHATML = ChatFormat(
    name="chatml",
    response="<|im_start|>assistant\n",
    instructions=("<|im_start|>user\n", "<|im_start|>system\n", "<|im_start|>tool\n"),
    roles={r: f"<|im_start|>{r}\n" for r in ("assistant", "user", "system", "tool")},
    end="<|im_end|>\n",
    tool_role="tool",
)

PHI3 = ChatFormat(
    name="phi3",
    response="<|assistant|>\n",
    instructions=("<|user|>\n", "<|system|>\n"),
    roles={"assistant": "<|assistant|>\n", "user": "<|user|>\n", "system": "<|system|>\n"},
    end="<|end|>\n",
    prefix="<s>",
)

# The plain-text template of TRL's docs ("### Assistant:"), on any tokenizer.
PLAIN = ChatFormat(
    name="plain",
    response="### Assistant:",
    instructions=("### User:",),
    roles={"assistant": "### Assistant:", "user": "### User:"},
    end="\n\n",
    system=False,
)


def mistral(spacing: str) -> ChatFormat:
    """Mistral's [INST] format; v1 writes ``[INST] q [/INST] a``, v3 ``[INST] q[/INST] a``,
    Tekken ``[INST]q[/INST]a``."""
    user, asst = {"v1": ("[INST] ", " [/INST] "), "v3": ("[INST] ", "[/INST] "), "tekken": ("[INST]", "[/INST]")}[
        spacing
    ]
    return ChatFormat(
        name=f"mistral_{spacing}",
        response="[/INST]",
        instructions=("[INST]",),
        roles={"user": user, "assistant": asst},
        end="",
        prefix="<s>",
        system=False,
        extra={"assistant_end": "</s>"},
    )


def render_mistral(fmt: ChatFormat, messages: list[dict]) -> str:
    out = [fmt.prefix]
    for m in messages:
        out.append(fmt.roles[m["role"]] + m["content"])
        if m["role"] == "assistant":
            out.append(fmt.extra["assistant_end"])
    return "".join(out)


FORMATS = {
    "llama3": LLAMA3,
    "qwen2": CHATML,
    "phi3": PHI3,
    "gpt2": PLAIN,
    "mistral_v1": mistral("v1"),
    "mistral_v3": mistral("v3"),
    "tekken": mistral("tekken"),
}


def render(fmt: ChatFormat, messages: list[dict]) -> str:
    if fmt.name.startswith("mistral"):
        return render_mistral(fmt, messages)
    return fmt.render(messages)


# ---------------------------------------------------------------------------------------------
# Ground truth.


def occurrences(text: str, response: str, instructions: tuple[str, ...]) -> list[tuple[int, int, bool]]:
    """Non-overlapping template occurrences, leftmost-first, response first at a tie."""
    patterns = [(response, True)] + [(t, False) for t in instructions]
    out, i = [], 0
    while i < len(text):
        for p, is_response in patterns:
            if text.startswith(p, i):
                out.append((i, i + len(p), is_response))
                i += len(p)
                break
        else:
            i += 1
    return out


def regions(text: str, response: str, instructions: tuple[str, ...], train_on: str = "all") -> list[tuple[int, int]]:
    """docs/masking.md#response-regions, on characters of the original string."""
    occ = occurrences(text, response, instructions)
    if not instructions:
        last = [o for o in occ if o[2]]
        out = [(last[-1][1], len(text))] if last else []
    else:
        out = []
        for k, (_s, e, is_response) in enumerate(occ):
            if is_response:
                out.append((e, occ[k + 1][0] if k + 1 < len(occ) else len(text)))
        if train_on == "last":
            out = out[-1:]
    return [(s, e) for s, e in out if e > s]


def expected_labels(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]], ignore: int = -100):
    """A token is trained iff its character span overlaps a region (a zero-width one iff its
    offset lies inside one)."""
    out = []
    for tid, (cs, ce) in zip(ids, offsets):
        hit = any((cs < re and ce > rs) if ce > cs else (rs <= cs < re) for rs, re in spans)
        out.append(tid if hit else ignore)
    return out


def encode(tok, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids and character offsets of ``text`` encoded without added special tokens."""
    enc = tok.encode(text, add_special_tokens=False)
    # SentencePiece-style tokenizers put a lone `▁` after special tokens that is not in the text;
    # the tokenizer reports it with the *next* character's offsets. Its real width is zero.
    offsets = [
        (s, s) if token == "\u2581" and text[s:e] != " " else (s, e) for token, (s, e) in zip(enc.tokens, enc.offsets)
    ]
    return list(enc.ids), offsets


def kept_text(tok, text: str, keep: int) -> str:
    """The part of ``text`` that the first ``keep`` tokens stand for."""
    _, offsets = encode(tok, text)
    return text[: max((e for _, e in offsets[:keep]), default=0)]


def truth_for(tok, text: str, fmt: ChatFormat, *, instructions: bool = True, train_on: str = "all", keep=None):
    """(ids, expected labels) for ``text`` encoded without added special tokens, optionally
    truncated to the first ``keep`` tokens."""
    ids, offsets = encode(tok, text)
    if keep is not None:
        ids, offsets = ids[:keep], offsets[:keep]
        text = text[: max((e for _, e in offsets), default=0)]
    spans = regions(text, fmt.response, fmt.instructions if instructions else (), train_on)
    return ids, expected_labels(ids, offsets, spans)


def truth_by_ids(tok, chats: list[list[dict]], fmt: ChatFormat, suffix: str = "") -> dict[tuple[int, ...], list[int]]:
    """Ground truth of each chat (plus ``suffix``, e.g. the EOS that SFTTrainer appends), keyed by
    its ids, for checking the batches a trainer built."""
    pairs = (truth_for(tok, render(fmt, c) + suffix, fmt) for c in chats)
    return {tuple(ids): labels for ids, labels in pairs}
