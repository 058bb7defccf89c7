"""Chat formats of the test families: how each renders a conversation, and its templates.

The ground truth of the masking rule on these renderings lives in tests/ground_truth.py.
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
