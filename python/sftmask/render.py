"""Seeing a mask: trained tokens highlighted, masked ones dimmed.

``MaskView`` renders as HTML in Jupyter (``_repr_html_``), with ANSI colours when printed to a
terminal, and as plain text with ``[[…]]`` around trained text otherwise.
"""

from __future__ import annotations

import html
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Token:
    """One token of a rendered example."""

    id: int
    text: str
    trained: bool


def _ids_of(example: Any) -> Any:
    if isinstance(example, Mapping):
        return example["input_ids"]
    return example


def _inspect(collator: Any, example: Any) -> dict[str, Any]:
    return collator._masker.inspect(_ids_of(example))


def _spans(ends: list[int]) -> list[tuple[int, int]]:
    starts = [0, *ends[:-1]]
    return list(zip(starts, ends))


def trained_text(collator: Any, example: Any) -> list[str]:
    """The trained runs of one example as strings, in order.

    >>> trained_text(collator, ids)  # doctest: +SKIP
    ['The capital is Paris.<|im_end|>']
    """
    seen = _inspect(collator, example)
    text: bytes = seen["text"]
    out: list[str] = []
    run_start = run_end = None
    for (s, e), label in zip(_spans(seen["ends"]), seen["labels"].tolist()):
        if label != collator.ignore_index:
            if run_start is None:
                run_start = s
            run_end = e
        elif run_start is not None:
            out.append(text[run_start:run_end].decode("utf-8", "replace"))
            run_start = None
    if run_start is not None:
        out.append(text[run_start:run_end].decode("utf-8", "replace"))
    return out


class MaskView:
    """An example with its mask, ready to show.

    >>> view = collator.render(example)  # doctest: +SKIP
    >>> print(view)  # doctest: +SKIP
    <|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n[[Hello!<|im_end|>]]
    """

    def __init__(self, tokens: list[Token]):
        self.tokens = tokens

    @property
    def trained_fraction(self) -> float:
        """Share of tokens that are trained."""
        return sum(t.trained for t in self.tokens) / len(self.tokens) if self.tokens else 0.0

    def plain(self) -> str:
        """Text with ``[[`` and ``]]`` around trained runs."""
        out, inside = [], False
        for t in self.tokens:
            if t.trained != inside:
                out.append("[[" if t.trained else "]]")
                inside = t.trained
            out.append(t.text)
        if inside:
            out.append("]]")
        return "".join(out)

    def ansi(self) -> str:
        """Text with trained tokens in bold green and masked ones dimmed."""
        out = []
        for t in self.tokens:
            style = "\x1b[1;32m" if t.trained else "\x1b[2m"
            out.append(f"{style}{t.text}\x1b[0m")
        return "".join(out)

    def __str__(self) -> str:
        use_colour = sys.stdout.isatty() and os.environ.get("NO_COLOR") is None
        return self.ansi() if use_colour else self.plain()

    def __repr__(self) -> str:
        return f"MaskView({len(self.tokens)} tokens, {self.trained_fraction:.0%} trained)"

    def _repr_html_(self) -> str:
        cells = []
        for t in self.tokens:
            shown = html.escape(t.text).replace(" ", "\u00b7").replace("\n", "\u21b5<br>").replace("\t", "\u2192")
            if not shown:
                shown = "\u2205"  # a zero-width token (e.g. a phantom space) stays visible
            cls = "sftmask-t" if t.trained else "sftmask-m"
            cells.append(f'<span class="{cls}" title="id {t.id}">{shown}</span>')
        style = (
            "<style>.sftmask{font-family:monospace;white-space:normal;line-height:1.8}"
            ".sftmask span{border:1px solid #ccc;border-radius:3px;padding:0 1px;margin:0 1px}"
            ".sftmask-t{background:#c8f7c5;color:#000}"
            ".sftmask-m{color:#999}</style>"
        )
        legend = (
            '<div class="sftmask">'
            '<span class="sftmask-t">trained</span> <span class="sftmask-m">masked (-100)</span> '
            f"{sum(t.trained for t in self.tokens)}/{len(self.tokens)} tokens trained</div>"
        )
        return f'{style}{legend}<div class="sftmask">{"".join(cells)}</div>'


def render(collator: Any, example: Any) -> MaskView:
    """Renders one example as its collator masks it."""
    seen = _inspect(collator, example)
    text: bytes = seen["text"]
    ids = _ids_of(example)
    ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
    tokens = [
        Token(int(i), text[s:e].decode("utf-8", "backslashreplace"), label != collator.ignore_index)
        for i, (s, e), label in zip(ids, _spans(seen["ends"]), seen["labels"].tolist())
    ]
    return MaskView(tokens)
