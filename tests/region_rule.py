"""The SPEC's region rule for conversations, written from its text in docs/masking.md (rule 45).

Truth (a) of issue 10 for ``tests/test_chat_regions.py``, ``tests/test_messages.py`` and
``tests/test_chat_markers.py``: computed here in Python with whatever renderer the caller passes
(transformers' own, in those tests), never by calling sftmask. Offsets are Python ``str``
indices here and turned into UTF-8 byte offsets at the end.

``extended=False`` is the plain prefix rule alone (S1 and E1 of the docs), which is what the
transformers fallback of ``tokenize_and_mask`` applies to rows the Rust renderer cannot render.
"""

from __future__ import annotations

from typing import Any, Callable

Render = Callable[[list[dict[str, Any]], bool], str]

#: The sentinel the docs' rule S2 renders in place of an answer's content and reasoning.
SENTINEL = "\ue000sftmask-content\ue001"
_FIELDS = ("content", "reasoning_content", "thinking")


class NotLocated(Exception):
    """No rule locates this message exactly."""


def _kind(c: str) -> int:
    if c.isspace():
        return 0
    if c.isalnum() or c == "_":
        return 1
    return 2


def piece_ends(text: str, tokens: list[str]) -> list[int]:
    """Where ``text`` may be cut: after each special token (longest first, left to right), each
    whitespace run, each run of word characters and each other character."""
    ends: list[int] = []
    i, kind = 0, None
    while i < len(text):
        hits = [t for t in tokens if t and text.startswith(t, i)]
        if hits:
            if kind is not None:
                ends.append(i)
            kind = None
            i += len(max(hits, key=len))
            ends.append(i)
            continue
        k = _kind(text[i])
        if kind is not None and (k != kind or k == 2):
            ends.append(i)
        kind = k
        i += 1
    if kind is not None:
        ends.append(i)
    return ends


def _whole_pieces(prompt: str, tokens: list[str], text: str) -> int:
    best = 0
    for e in piece_ends(prompt, tokens):
        if not text.startswith(prompt[:e]):
            break
        best = e
    return best


def _lcp(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _marker(segment: str, tokens: list[str]) -> str | None:
    ends = [t for t in tokens if t and segment.endswith(t)]
    return max(ends, key=len) if ends else None


class _Rule:
    def __init__(self, render: Render, messages: list[dict[str, Any]], tokens: list[str], full: str, extended: bool):
        self.render, self.messages, self.tokens, self.full, self.extended = render, messages, tokens, full, extended
        self.cache: dict[tuple[int, bool], str] = {}
        #: S3: (index in ``full``, text) of the parts located turns leave out.
        self.drops: list[tuple[int, str]] = []
        self.last_drop: tuple[int, str] | None = None

    def without_drops(self, text: str) -> str:
        """``text`` less each part an earlier turn leaves out, where it sits at that place."""
        out, at, shift = [], 0, 0
        for p, part in self.drops:
            pos = p + shift
            if pos >= at and text.startswith(part, pos):
                out.append(text[at:pos])
                at, shift = pos + len(part), shift + len(part)
        out.append(text[at:])
        return "".join(out)

    def r(self, n: int, agp: bool) -> str:
        if (n, agp) not in self.cache:
            try:
                self.cache[n, agp] = self.render(self.messages[:n], agp)
            except Exception as e:
                raise NotLocated(f"rendering messages[:{n}] failed: {e}") from None
        return self.without_drops(self.cache[n, agp])

    def sentinel(self, i: int) -> str:
        m = dict(self.messages[i])
        for k in _FIELDS:
            if isinstance(m.get(k), str):
                m[k] = SENTINEL
        try:
            return self.without_drops(self.render([*self.messages[:i], m], False))
        except Exception as e:
            raise NotLocated(f"sentinel render failed: {e}") from None

    def header_end(self, i: int, text: str) -> int:
        """S1: after G when ``text`` starts with it; S2: after the whole pieces of the prompt."""
        g = self.r(i, True)
        if text.startswith(g):
            return len(g)
        if not self.extended:
            raise NotLocated("the generation prompt is not a prefix")
        p = self.r(i, False)
        probe = self.sentinel(i)
        if not (text.startswith(p) and g.startswith(p) and probe.startswith(p)):
            raise NotLocated("the text before the message is rewritten")
        opened = g[len(p) :]
        k = min(
            _whole_pieces(opened, self.tokens, text[len(p) :]),
            _whole_pieces(opened, self.tokens, probe[len(p) :]),
        )
        return len(p) + k

    def end(self, i: int, start: int) -> int:
        full, h = self.full, self.r(i + 1, False)
        if full.startswith(h) and len(h) >= start:  # E1
            return len(h)
        if not self.extended:
            raise NotLocated("the message rendered last is not a prefix")
        # X: the messages through i followed by a generation prompt, less the prompt found before i.
        g, p, nxt = self.r(i, True), self.r(i, False), self.r(i + 1, True)
        x = None
        if g.startswith(p) and nxt.endswith(g[len(p) :]):
            x = nxt[: len(nxt) - (len(g) - len(p))]
        if x is not None and full.startswith(x) and len(x) >= start:  # E2
            return len(x)
        # E2, second form: the body H shares with H followed by a prompt, cut at a piece end.
        shared = _lcp(h, nxt)
        if start <= shared < len(h):
            ends = [start + e for e in piece_ends(h[start:], self.tokens) if start + e <= shared]
            body = ends[-1] if ends else start
            if full.startswith(h[:body]) and _marker(full[start:body].rstrip(), self.tokens):
                return body
        # E3: the turn of X (else of H) with one contiguous part left out.
        ref = h if x is None else x
        turn = ref[self.header_end(i, ref) :]
        rest = full[start:]
        a = _lcp(turn, rest)
        keep_to = len(turn.rstrip())
        if a >= keep_to:
            if not _marker(turn.rstrip(), self.tokens):
                raise NotLocated("the turn reappears whole but has no end-of-turn token")
            return start + keep_to
        for b in range(a + 1, keep_to):
            if rest.startswith(turn[b:], a):
                break
        else:
            raise NotLocated("not the turn with one part left out")
        e = start + a + len(turn) - b
        later = [j for j in range(i + 1, len(self.messages)) if self.messages[j].get("role") == "assistant"]
        bound = len(full)
        if later:
            try:
                bound = max(self.header_end(later[0], full), e)
            except NotLocated:
                pass
        dropped, after = turn[a:b], full[e:bound]
        texts = [v for k in _FIELDS if isinstance(v := self.messages[i].get(k), str) and v and v in dropped]
        if dropped in after or any(v in after for v in texts):
            raise NotLocated("the left-out part moved")
        self.last_drop = (start + a, dropped)
        return e


def rule_regions(render: Render, messages: list[dict[str, Any]], tokens: list[str], *, extended: bool = True):
    """The rule with ``render(messages, add_generation_prompt)``: ("ok", (text, regions)) with
    regions ``(message index, start byte, end byte, marker)`` for every assistant message,
    ("not_located", index) or ("error", why) when the conversation cannot be rendered at all."""
    return select_regions(render, messages, tokens, None, extended=extended)


def select_regions(
    render: Render,
    messages: list[dict[str, Any]],
    tokens: list[str],
    selected: list[int] | None,
    *,
    extended: bool = True,
):
    """``rule_regions`` for the messages in ``selected`` only (all assistant messages if None)."""
    try:
        full = render(messages, False)
    except Exception as e:  # the renderer cannot render this conversation at all
        return "error", f"{type(e).__name__}: {e}"
    rule = _Rule(render, messages, tokens, full, extended)
    regions = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant" or (selected is not None and i not in selected):
            continue
        try:
            rule.last_drop = None
            start = rule.header_end(i, full)
            stop = rule.end(i, start)
        except NotLocated:
            return "not_located", i
        if rule.last_drop is not None:
            rule.drops.append(rule.last_drop)
        segment = full[start:stop].rstrip()
        b0 = len(full[:start].encode())
        regions.append((i, b0, b0 + len(segment.encode()), _marker(segment, tokens)))
    return "ok", (full, regions)
