"""Markers for the collator, derived from a chat template (docs/chat-templates.md, rules 14-15).

``chat_markers(tokenizer)`` renders a few probe conversations whose contents are unique
sentinels and reads off the text around them: the *response template* is the generation prompt
(what ``add_generation_prompt=True`` appends), the *instruction templates* are the texts that
start user, system and tool turns. ``DataCollatorForCompletionOnlyLM(tokenizer=tok)`` with no
template uses them. Where markers cannot know what the region rule knows (a separator after
the end-of-turn marker, an answer after a tool result with no header of its own, contents that
quote a header), ``sftmask.tokenize_and_mask`` on the messages gives the exact labels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sftmask._core import OptionError

# Sentinel contents: plain ASCII words that no template rewrites and no header contains, none a
# substring of another.
_U1, _A1, _U2, _S, _T, _A2, _X = (f"sftmaskprobe{c}q" for c in "uavsthx")
# Nine alphanumerics: Mistral's templates refuse any other tool-call id.
_CALL_ID = "sftmask42"
_TOOL_NAME = "sftmask_probe_tool"
_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": _TOOL_NAME,
            "description": "A probe tool.",
            "parameters": {"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]},
        },
    }
]

_WAYS_OUT = (
    "pass response_template=… (and instruction_template=…) to the collator, or preprocess the "
    "messages with sftmask.tokenize_and_mask and collate with labels='keep'"
)


@dataclass(frozen=True)
class ChatMarkers:
    """The marker strings of a chat template, as :func:`chat_markers` derives them.

    Attributes:
        response_template: the text that starts an assistant answer (the generation prompt, or
            the assistant turn's start where the template has no generation prompt).
        instruction_templates: the texts that start user, system and tool turns, in that order;
            roles the template folds into another turn or does not have are left out.
        generation_prompt: what ``add_generation_prompt=True`` appends ("" if nothing).
        headers: ``(role, text)`` pairs: the text each role's turn starts with, as found.
        notes: what could not be derived, and why (a rejected role, a folded system prompt,
            an answer after a tool result that has no header of its own).
    """

    response_template: str
    instruction_templates: tuple[str, ...]
    generation_prompt: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()


def _common_prefix(a: str, b: str, tokens: tuple[str, ...]) -> int:
    """Length of the common prefix of ``a`` and ``b``, moved back so that it does not end inside
    an added token (``<|end|>`` and ``<|endoftext|>`` share ``<|``, which is no boundary)."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    moved = True
    while moved and i > 0:
        moved = False
        for t in tokens:
            lo = max(0, i - len(t) + 1)
            at = a.find(t, lo, i + len(t) - 1)
            if 0 <= at < i < at + len(t):
                i, moved = at, True
    return i


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:200]}"


def _after(text: str, anchor: str) -> str:
    return text[text.index(anchor) + len(anchor) :]


def _turn_start(before: str, full: str, anchor: str, sentinel: str, tokens: tuple[str, ...]) -> str:
    """The text that starts the turn holding ``sentinel`` in ``full``.

    ``anchor`` is the sentinel of the message before it. ``full`` holds, between the two, the end of
    that message's turn and then the new turn's start; the end is what ``before`` (the conversation
    without the new message) writes after ``anchor``, or as much of it as ``full`` shares (some
    templates close a conversation's last turn differently, e.g. with an EOS)."""
    between = full[full.index(anchor) + len(anchor) : full.index(sentinel)]
    end = _after(before, anchor)
    start = between[_common_prefix(end, between, tokens) :]
    # A template that writes the next turn's header as the end of the last one (GLM's
    # "answer<|user|>"): the header is all of it.
    return start if start.strip() else between


def chat_markers(tokenizer: Any, *, chat_template: str | None = None, **template_kwargs: Any) -> ChatMarkers:
    """Derives the collator's templates from ``tokenizer``'s chat template (or ``chat_template``).

    Probe conversations with sentinel contents are rendered with
    ``tokenizer.apply_chat_template(tokenize=False, **template_kwargs)``; the response template is
    the generation prompt (render with ``add_generation_prompt=True`` minus render without), or,
    for a template that has none, the text that starts an assistant turn; the instruction
    templates are the texts that start user, system and tool turns.

    >>> markers = chat_markers(tokenizer)
    >>> markers.response_template
    '<|im_start|>assistant\\n'
    >>> markers.instruction_templates
    ('<|im_start|>user\\n', '<|im_start|>system\\n', '<|im_start|>tool\\n')
    >>> collator = sftmask.DataCollatorForCompletionOnlyLM(tokenizer=tokenizer)  # uses chat_markers
    >>> collator.trained_text(tokenizer.apply_chat_template(chat))
    ['Paris.<|im_end|>\\n']

    Raises :class:`sftmask.OptionError` when the tokenizer has no chat template, when the
    template raises on a one-message conversation, or when no response template can be read off.
    """
    if not hasattr(tokenizer, "apply_chat_template"):
        raise OptionError(
            f"chat_markers needs a transformers tokenizer with a chat template, got {type(tokenizer).__name__}; "
            + _WAYS_OUT
        )
    if chat_template is None and not getattr(tokenizer, "chat_template", None):
        raise OptionError(
            "this tokenizer has no chat template to derive the markers from: set tokenizer.chat_template "
            "(or pass chat_template=…), or " + _WAYS_OUT
        )
    for name in ("add_generation_prompt", "tokenize", "tools"):
        if name in template_kwargs:
            raise OptionError(f"chat_markers sets {name} itself; do not pass it")
    try:
        added = tuple(getattr(tokenizer, "get_added_vocab", dict)())
    except Exception:  # a tokenizer that cannot list its added tokens: cut at characters
        added = ()
    return _Probe(tokenizer, chat_template, template_kwargs, added).markers()


class _Probe:
    """Renders probe conversations and reads the markers off them."""

    def __init__(self, tokenizer: Any, chat_template: str | None, kwargs: dict[str, Any], tokens: tuple[str, ...]):
        self.tokenizer, self.chat_template, self.kwargs, self.tokens = tokenizer, chat_template, kwargs, tokens
        self.parts = False  # contents as [{"type": "text", "text": …}] (vision templates want that)
        self.tools: Any = None  # some tool-use templates iterate over `tools` unconditionally
        self.notes: list[str] = []
        self.headers: dict[str, str] = {}

    def content(self, text: str) -> Any:
        return [{"type": "text", "text": text}] if self.parts else text

    def msgs(self, *pairs: tuple[str, str]) -> list[dict[str, Any]]:
        return [{"role": role, "content": self.content(text)} for role, text in pairs]

    def render(self, messages: list[dict[str, Any]], agp: bool = False, tools: Any = None) -> str:
        out = self.tokenizer.apply_chat_template(
            messages,
            tools=tools if tools is not None else self.tools,
            chat_template=self.chat_template,
            tokenize=False,
            add_generation_prompt=agp,
            **self.kwargs,
        )
        if not isinstance(out, str):
            raise OptionError(f"apply_chat_template(tokenize=False) returned {type(out).__name__}, not a str")
        return out

    def turn_start(self, before: str, full: str, anchor: str, sentinel: str) -> str:
        text = _turn_start(before, full, anchor, sentinel, self.tokens)
        end = getattr(self, "turn_end", "")
        return text[len(end) :] if end.strip() and text.startswith(end) else text

    def searchable(self, text: str) -> bool:
        """A turn start worth searching for: it holds an added token or a word (not a lone "[")."""
        return any(t in text for t in self.tokens) or any(c.isalpha() for c in text)

    def first_exchange(self) -> tuple[str, str, str]:
        """Renders [user] without and with the generation prompt, and [user, assistant]."""
        first: Exception | None = None
        for parts, tools in ((False, None), (True, None), (False, _TOOLS), (True, _TOOLS)):
            self.parts, self.tools = parts, tools
            try:
                p1 = self.render(self.msgs(("user", _U1)))
                g1 = self.render(self.msgs(("user", _U1)), agp=True)
                f2 = self.render(self.msgs(("user", _U1), ("assistant", _A1)))
            except OptionError:
                raise
            except Exception as e:
                first = first or e
                continue
            if _U1 in p1 and _U1 in g1 and _A1 in f2:
                return p1, g1, f2
        if first is not None:
            raise OptionError(
                "the chat template raised on a probe conversation (one user message, one answer): "
                f"{_short(first)}; " + _WAYS_OUT
            ) from first
        raise OptionError("the chat template does not write the probe messages' contents; " + _WAYS_OUT)

    def markers(self) -> ChatMarkers:
        p1, g1, f2 = self.first_exchange()
        response, generation = self.response_template(p1, g1, f2)
        for role, build in (("user", self.user), ("system", self.system), ("tool", self.tool)):
            try:
                text = build(p1, f2, response)
            except OptionError:
                raise
            except Exception as e:  # the template rejects this role or shape
                self.notes.append(f"{role}: the template raised on a probe with a {role} message ({_short(e)})")
                continue
            if text is not None:
                self.headers[role] = text
        instructions: list[str] = []
        for role in ("user", "system", "tool"):
            text = self.headers.get(role)
            if text is None:
                continue
            if not text.strip() or not self.searchable(text):
                self.notes.append(f"{role}: its turn starts with no text of its own to search for ({text!r})")
            elif text == response:
                self.notes.append(f"{role}: its turn starts like an assistant turn ({text!r})")
            elif any(text.startswith(t) for t in instructions):
                # A shorter template already finds this position (Gemma folds the system prompt
                # into the first user turn; Qwen writes tool results inside a user turn).
                kept = next(t for t in instructions if text.startswith(t))
                self.notes.append(f"{role}: its turn starts with the {kept!r} template already listed")
            else:
                instructions.append(text)
        return ChatMarkers(
            response_template=response,
            instruction_templates=tuple(instructions),
            generation_prompt=generation,
            headers=tuple(self.headers.items()),
            notes=tuple(self.notes),
        )

    def response_template(self, p1: str, g1: str, f2: str) -> tuple[str, str]:
        """(response template, generation prompt) from the one-message renderings."""
        # What the generation prompt adds after the user's turn (some templates end a
        # conversation with an EOS that the prompt replaces: Phi-3).
        generation = self.turn_start(p1, g1 + _X, _U1, _X)
        head = self.turn_start(p1, f2, _U1, _A1)
        self.headers["assistant"] = head
        # How a user turn ends when an answer follows; a later turn's start found after a
        # conversation's last turn (which some templates close otherwise: GPT-OSS's <|return|>
        # for <|end|>) must not begin with it.
        between = f2[f2.index(_U1) + len(_U1) : f2.index(_A1)]
        self.turn_end = between[: len(between) - len(head)]
        if generation.strip() and head.startswith(generation):
            return generation, generation
        if generation.strip():
            # The prompt opens a reasoning block that answers write otherwise (DeepSeek-R1's
            # "<｜Assistant｜><think>\n" before "<｜Assistant｜>answer"): what both start with.
            shared = head[: _common_prefix(head, generation, self.tokens)]
            use = shared if shared.strip() else head
            self.notes.append(
                f"assistant: the generation prompt {generation!r} is not how an answer starts ({head!r}); "
                f"the response template is {use!r}"
            )
            if use.strip():
                return use, generation
        if head.strip():
            return head, generation
        # No header at all (Mistral's "[INST] q [/INST] a"): the answer follows what the
        # template writes after the user message.
        tail = _after(p1, _U1).lstrip()
        if tail.strip():
            return tail, generation
        raise OptionError(
            "the chat template writes nothing between a user message and its answer, so there is no "
            "response template to search for; " + _WAYS_OUT
        )

    def user(self, p1: str, f2: str, response: str) -> str | None:
        f3 = self.render(self.msgs(("user", _U1), ("assistant", _A1), ("user", _U2)))
        if _U2 not in f3:
            self.notes.append("user: the template does not write a second user message")
            return None
        return self.turn_start(f2, f3, _A1, _U2)

    def system(self, p1: str, f2: str, response: str) -> str | None:
        fs = self.render(self.msgs(("system", _S), ("user", _U1)))
        if _S not in fs:
            self.notes.append("system: the template does not write the system message")
            return None
        before = fs[: fs.index(_S)]
        user = self.headers.get("user", "")
        first_user = p1[: p1.index(_U1)]
        if user and first_user.endswith(user):
            preamble = first_user[: len(first_user) - len(user)]  # a BOS, a default system turn...
            if before.startswith(preamble) and before[len(preamble) :].strip():
                return before[len(preamble) :]
        # A default system turn that a given one replaces (a dated block, a default prompt):
        # the user header with the role's name changed, where the text holds it.
        for a, b in (("user", "system"), ("User", "System"), ("USER", "SYSTEM")):
            guess = user.replace(a, b)
            if guess != user and guess in before:
                return guess
        # DeepSeek writes the system prompt bare after BOS: nothing to search for, and nothing
        # lost (a system prompt comes before the first answer, which is never trained).
        self.notes.append(
            "system: the system prompt has no turn start of its own (written bare or inside another turn)"
        )
        return None

    def tool(self, p1: str, f2: str, response: str) -> str | None:
        last: Exception | None = None
        # Most templates take the arguments as a dict, some (DeepSeek-V3, Functionary) as JSON text.
        for arguments in ({"x": _X}, json.dumps({"x": _X})):
            call = {"id": _CALL_ID, "type": "function", "function": {"name": _TOOL_NAME, "arguments": arguments}}
            messages = [
                *self.msgs(("user", _U1)),
                {"role": "assistant", "content": self.content(""), "tool_calls": [call]},
                {"role": "tool", "tool_call_id": _CALL_ID, "name": _TOOL_NAME, "content": self.content(_T)},
            ]
            try:
                ft = self.render(messages, tools=_TOOLS)
                pt = self.render(messages[:-1], tools=_TOOLS)
            except Exception as e:
                last = e
                continue
            if _T not in ft:
                self.notes.append("tool: the template does not write the tool message")
                return None
            # Anchored at the call's arguments where the template writes them, else at the user's.
            anchor = _X if _X in pt and _X in ft else _U1
            header = self.turn_start(pt, ft, anchor, _T)
            # A header that names the tool or the call holds only for that tool: keep what precedes.
            for name in (_TOOL_NAME, _CALL_ID):
                if name in header:
                    header = header[: header.index(name)]
            self.check_tool_answer(messages, response)
            return header
        assert last is not None
        raise last

    def check_tool_answer(self, messages: list[dict[str, Any]], response: str) -> None:
        """Notes a template whose answer after a tool result has no response template before it."""
        try:
            fa = self.render([*messages, {"role": "assistant", "content": self.content(_A2)}], tools=_TOOLS)
        except Exception:
            return
        if _T in fa and _A2 in fa and response not in fa[fa.index(_T) : fa.index(_A2)]:
            self.notes.append(
                "tool: an answer after a tool result has no header of its own; the collator cannot train it "
                "(sftmask.tokenize_and_mask can)"
            )
