"""Seeing a mask: trained tokens highlighted, masked ones dimmed.

``MaskView`` renders as HTML in Jupyter (``_repr_html_``: token boundaries, special tokens and
whitespace visible, with a legend), with ANSI colours when printed to a terminal, and as plain
text with ``[[…]]`` around trained text otherwise.

>>> import sftmask
>>> view = sftmask.render(batch["input_ids"][0], tokenizer, batch["labels"][0])
>>> view  # in Jupyter: the HTML view
MaskView(...)
"""

from __future__ import annotations

import html
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sftmask import _tokenizer
from sftmask._core import OptionError, OptionTypeError


@dataclass(frozen=True)
class Token:
    """One token of a rendered example.

    ``text`` is what the token stands for in the example's text (``""`` for a phantom space,
    ``\\xNN`` escapes for a piece of a multi-byte character); ``raw`` is those bytes.
    """

    id: int
    text: str
    trained: bool
    special: bool = False
    label: int | None = None
    raw: bytes = b""


def _as_list(x: Any, what: str) -> list[int]:
    """A 1-D id/label sequence (list, tuple, numpy array, torch tensor) as a list of ints."""
    if hasattr(x, "tolist"):
        x = x.tolist()
    if isinstance(x, (str, bytes)) or not isinstance(x, Sequence):
        raise OptionTypeError(f"{what} must be a 1-D sequence of ints, got {type(x).__name__}")
    if x and isinstance(x[0], (list, tuple)):
        raise OptionError(f"{what} must be one row (1-D), got a batch: pass batch[...][i]")
    bad = next((v for v in x if isinstance(v, bool) or (not isinstance(v, int) and not hasattr(v, "__index__"))), None)
    if bad is not None:
        raise OptionTypeError(f"{what} must hold ints, got {type(bad).__name__}")
    return [int(v) for v in x]


def _spans(ends: list[int]) -> list[tuple[int, int]]:
    starts = [0, *ends[:-1]]
    return list(zip(starts, ends))


def _build(
    vocab: Any, ids: list[int], text: bytes, ends: list[int], labels: list[int], ignore_index: int, padding: int = 0
) -> MaskView:
    tokens = []
    for i, (s, e), label in zip(ids, _spans(ends), labels):
        raw = text[s:e]
        tokens.append(
            Token(
                id=i,
                text=raw.decode("utf-8", "backslashreplace"),
                trained=label != ignore_index,
                special=vocab.is_added(i),
                label=label,
                raw=raw,
            )
        )
    return MaskView(tokens, padding=padding)


def _unpadded(
    ids: list[int],
    labels: list[int] | None,
    pad_token_id: int | None,
    eos_token_id: int | None,
    padding_side: str,
    ignore_index: int,
) -> tuple[int, int]:
    """``(start, end)`` of a row of a padded batch without its padding, found by position: the run
    of ``pad_token_id`` on the padding side whose labels (when given) are masked. When pad == EOS,
    the first pad of a right-side run is the row's own EOS and stays (unless the row's EOS is
    trained, and so not part of the run).

    >>> _unpadded([5, 6, 0, 0], [5, 6, -100, -100], 0, 2, "right", -100)
    (0, 2)
    >>> _unpadded([0, 0, 5, 2], None, 0, 2, "left", -100)
    (2, 4)
    >>> _unpadded([5, 2, 2, 2], [-100, -100, -100, -100], 2, 2, "right", -100)  # pad == EOS
    (0, 2)
    >>> _unpadded([5, 2, 2, 2], [5, 2, -100, -100], 2, 2, "right", -100)  # the EOS is trained
    (0, 2)
    """
    start, end = 0, len(ids)
    if pad_token_id is None:
        return start, end

    def is_pad(k: int) -> bool:
        return ids[k] == pad_token_id and (labels is None or labels[k] == ignore_index)

    if padding_side == "left":
        while start < end and is_pad(start):
            start += 1
    else:
        while end > start and is_pad(end - 1):
            end -= 1
        # pad == EOS: unless a trained EOS ended the run, its first token is the row's own EOS.
        if pad_token_id == eos_token_id and end < len(ids) and (end == 0 or ids[end - 1] != eos_token_id):
            end += 1
    return start, end


def render(
    example: Any, tokenizer: Any, labels: Any = None, *, ignore_index: int = -100, attention_mask: Any = None
) -> MaskView:
    """Shows one row with the labels given: trained tokens (label ≠ ``ignore_index``) highlighted.

    Works for labels from anywhere (TRL, your own preprocessing, ``tokenize_and_mask``). Padding
    is left out of the view and of its trained share: the positions where ``attention_mask`` is 0
    when there is one (an argument, or ``example["attention_mask"]``), else the run of the
    tokenizer's pad token on its padding side whose labels are masked.

    >>> batch = collator(examples)
    >>> sftmask.render(batch["input_ids"][1], tokenizer, batch["labels"][1])
    MaskView(13 tokens, 8% trained; 3 padding positions left out)
    >>> sftmask.render({"input_ids": ids, "labels": labels}, tokenizer).trained_text()
    ['Paris.<|im_end|>\\n']

    Args:
        example: one row of token ids (list, numpy array, torch tensor), or a mapping with
            ``input_ids`` (and ``labels``, and ``attention_mask``).
        tokenizer: what the collator accepts (transformers fast tokenizer, ``tokenizers.Tokenizer``,
            path to ``tokenizer.json`` or its folder).
        labels: the row's labels, one per token; taken from ``example["labels"]`` when omitted.
        ignore_index: the label of masked tokens.
        attention_mask: the row's attention mask: positions where it is 0 are padding.
    """
    info = _tokenizer.resolve(tokenizer)
    return _render_row(
        info.vocab,
        example,
        labels,
        ignore_index,
        attention_mask=attention_mask,
        pad_token_id=info.pad_token_id,
        eos_token_id=info.eos_token_id,
        padding_side=info.padding_side,
    )


def _keep_mask(example: Any, attention_mask: Any, n: int) -> list[bool] | None:
    """The row's attention mask as booleans (``None`` when there is none)."""
    if attention_mask is None and isinstance(example, Mapping):
        attention_mask = example.get("attention_mask")
    if attention_mask is None:
        return None
    keep = [bool(m) for m in _as_list(attention_mask, "attention_mask")]
    if len(keep) != n:
        raise OptionError(f"attention_mask has {len(keep)} entries for {n} tokens")
    return keep


def _render_row(
    vocab: Any,
    example: Any,
    labels: Any,
    ignore_index: int,
    *,
    attention_mask: Any = None,
    pad_token_id: int | None = None,
    eos_token_id: int | None = None,
    padding_side: str = "right",
) -> MaskView:
    source = example
    if isinstance(example, Mapping):
        if "input_ids" not in example:
            raise OptionError("the example has no 'input_ids' key")
        if labels is None:
            if "labels" not in example:
                raise OptionError("no labels: pass labels=… or an example with a 'labels' key")
            labels = example["labels"]
        example = example["input_ids"]
    elif labels is None:
        raise OptionError("no labels: pass labels=… (e.g. batch['labels'][i])")
    ids = _as_list(example, "input_ids")
    label_list = _as_list(labels, "labels")
    if len(label_list) != len(ids):
        raise OptionError(f"labels has {len(label_list)} entries for {len(ids)} tokens")
    width = len(ids)
    keep = _keep_mask(source, attention_mask, width)
    if keep is not None:
        ids = [i for i, k in zip(ids, keep) if k]
        label_list = [lab for lab, k in zip(label_list, keep) if k]
    else:
        start, end = _unpadded(ids, label_list, pad_token_id, eos_token_id, padding_side, ignore_index)
        ids, label_list = ids[start:end], label_list[start:end]
    text, ends = vocab.text(ids)
    return _build(vocab, ids, text, ends, label_list, ignore_index, padding=width - len(ids))


def render_collated(collator: Any, example: Any) -> MaskView:
    """One example as ``collator`` labels it (``collator.render``); a row of a padded batch is
    shown without its padding (``attention_mask``, or the collator's pad token on its side)."""
    pad = getattr(collator, "pad_token_id", None)
    eos = getattr(collator, "eos_token_id", None)
    side = getattr(collator, "padding_side", "right")
    if getattr(collator, "labels", "mask") == "keep":
        return _render_row(
            collator._vocab,
            example,
            None,
            collator.ignore_index,
            pad_token_id=pad,
            eos_token_id=eos,
            padding_side=side,
        )
    if isinstance(example, Mapping) and "input_ids" not in example:
        raise OptionError("the example has no 'input_ids' key")
    ids = _as_list(example["input_ids"] if isinstance(example, Mapping) else example, "input_ids")
    keep = _keep_mask(example, None, len(ids))
    if keep is not None:
        row = [i for i, k in zip(ids, keep) if k]
    else:
        start, end = _unpadded(ids, None, pad, eos, side, collator.ignore_index)
        row = ids[start:end]
    view = render_masked(collator._masker, collator._vocab, row, collator.ignore_index)
    view.padding = len(ids) - len(row)
    return view


def render_masked(masker: Any, vocab: Any, ids: Any, ignore_index: int) -> MaskView:
    """One row of ids as ``masker`` (a ``sftmask.Masker``) labels it: the one call into the
    extension's ``Masker.inspect`` for rendering."""
    seen = masker.inspect(ids)
    return _build(vocab, _as_list(ids, "input_ids"), seen["text"], seen["ends"], seen["labels"].tolist(), ignore_index)


def trained_text(collator: Any, example: Any) -> list[str]:
    """The trained runs of one example as strings, in order (``collator.trained_text``).

    >>> trained_text(collator, ids)
    ['Paris.<|im_end|>\\n']
    """
    return render_collated(collator, example).trained_text()


def use_colour() -> bool:
    """Whether ``print(view)`` shows ANSI colours: stdout is a terminal and ``NO_COLOR`` is unset."""
    return sys.stdout.isatty() and os.environ.get("NO_COLOR") is None


def legend(colour: bool | None = None) -> str:
    """What the marks of ``print(view)`` mean, in the same style (``colour``: default
    :func:`use_colour`), for a header above printed views.

    >>> legend(colour=False)
    '[[…]] = trained'
    """
    if colour if colour is not None else use_colour():
        return (
            f"{_ANSI_TRAINED}bold green{_ANSI_RESET} = trained, {_ANSI_MASKED}dim{_ANSI_RESET} = masked, "
            f"{_ANSI_MASKED_SPECIAL}magenta{_ANSI_RESET} or {_ANSI_TRAINED_SPECIAL}underlined{_ANSI_RESET} "
            "= special token"
        )
    return "[[…]] = trained"


_ANSI_TRAINED, _ANSI_TRAINED_SPECIAL = "\x1b[1;32m", "\x1b[1;32;4m"
_ANSI_MASKED, _ANSI_MASKED_SPECIAL, _ANSI_RESET = "\x1b[2m", "\x1b[2;35m", "\x1b[0m"


# Whitespace made visible in HTML; each marker is styled apart from text that looks the same.
_WS = {" ": "\u00b7", "\t": "\u2192", "\n": "\u21b5", "\r": "\u240d"}

_CSS = """
.sftmask{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px;line-height:2}
.sftmask .sm-legend{margin-bottom:6px;color:#333}
.sftmask .sm-legend span.sm-tok{margin-right:8px}
.sftmask .sm-tok{display:inline-block;border:1px solid;border-radius:3px;padding:0 2px;margin:0 1px 2px 0;
  white-space:pre;line-height:1.5}
.sftmask .sm-t{background:#c9f2c7;border-color:#3c9a3c;color:#000}
.sftmask .sm-m{background:#f4f4f4;border-color:#d6d6d6;color:#8a8a8a}
.sftmask .sm-s{font-weight:bold;font-style:italic;color:#6b2fa0}
.sftmask .sm-m.sm-s{color:#a98bc4}
.sftmask .sm-x{border-style:dashed;border-color:#d62728}
.sftmask .sm-ws{color:#5b9bd5}
.sftmask .sm-m .sm-ws{color:#b7cde3}
.sftmask .sm-z{color:#bbb}
.sftmask .sm-b{font-size:10px;color:#b35900;border:1px dotted #e0a060;border-radius:2px;padding:0 1px;margin:0 1px}
"""


def _pieces(raw: bytes) -> list[tuple[str, bool]]:
    """``raw`` as (text, False) runs and (hex, True) runs of bytes that are only part of a
    character (byte-level tokens may split one, e.g. an emoji over three tokens)."""
    out: list[tuple[str, bool]] = []
    i = 0
    while i < len(raw):
        for k in (1, 2, 3, 4):
            try:
                ch = raw[i : i + k].decode("utf-8")
            except UnicodeDecodeError:
                continue
            out.append((ch, False))
            i += k
            break
        else:
            out.append((f"{raw[i]:02X}", True))
            i += 1
    return out


def _html_text(token: Token) -> str:
    """Escaped token text with whitespace shown as markers and split-character bytes as hex."""
    pieces = _pieces(token.raw) if token.raw else [(ch, False) for ch in token.text]
    out = []
    for text, is_byte in pieces:
        if is_byte:
            out.append(f'<span class="sm-b" title="byte 0x{text} of a split character">{text}</span>')
        elif text in _WS:
            out.append(f'<span class="sm-ws">{_WS[text]}</span>')
        else:
            out.append(html.escape(text))
    return "".join(out)


class MaskView:
    """An example with its mask, ready to show.

    ``print(view)`` gives ANSI colours in a terminal and ``[[…]]`` markers otherwise; in
    Jupyter the view shows as HTML.

    >>> view = collator.render(ids)
    >>> print(view.plain())
    <|im_start|>user
    Capital of France?<|im_end|>
    <|im_start|>assistant
    [[Paris.<|im_end|>
    ]]
    """

    def __init__(self, tokens: list[Token], padding: int = 0):
        self.tokens = tokens
        #: Padding positions of the row that were left out of the view.
        self.padding = padding

    @property
    def trained_fraction(self) -> float:
        """Share of tokens that are trained."""
        return sum(t.trained for t in self.tokens) / len(self.tokens) if self.tokens else 0.0

    def trained_text(self) -> list[str]:
        """The trained runs as strings, in order (for assertions in tests).

        >>> collator.render(ids).trained_text()
        ['Paris.<|im_end|>\\n']
        """
        out: list[str] = []
        run: list[bytes] | None = None
        for t in self.tokens:
            if t.trained:
                if run is None:
                    run = []
                run.append(t.raw)
            elif run is not None:
                out.append(b"".join(run).decode("utf-8", "replace"))
                run = None
        if run is not None:
            out.append(b"".join(run).decode("utf-8", "replace"))
        return out

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
        """Text with trained tokens in bold green, masked ones dimmed, special tokens in colour,
        and line ends marked ``↵``."""
        out = []
        for t in self.tokens:
            if t.trained:
                style = _ANSI_TRAINED_SPECIAL if t.special else _ANSI_TRAINED
            else:
                style = _ANSI_MASKED_SPECIAL if t.special else _ANSI_MASKED
            out.append(f"{style}{t.text.replace(chr(10), chr(0x21B5) + chr(10))}{_ANSI_RESET}")
        return "".join(out)

    def __str__(self) -> str:
        return self.ansi() if use_colour() else self.plain()

    def __repr__(self) -> str:
        padding = f"; {self.padding} padding positions left out" if self.padding else ""
        return f"MaskView({len(self.tokens)} tokens, {self.trained_fraction:.0%} trained{padding})"

    def _repr_html_(self) -> str:
        return self.html()

    def html(self) -> str:
        """A self-contained HTML fragment: one box per token (green: trained, grey: masked),
        special tokens in bold purple, whitespace as ``·`` ``↵`` ``→``, and a legend.

        >>> collator.render(ids).html().startswith("<div")
        True
        """
        cells = []
        for t in self.tokens:
            classes = ["sm-tok", "sm-t" if t.trained else "sm-m"]
            if t.special:
                classes.append("sm-s")
            if t.trained and t.label is not None and t.label != t.id:
                classes.append("sm-x")
            shown = _html_text(t) if t.text else '<span class="sm-z">\u2205</span>'
            label = "" if t.label is None else f", label {t.label}"
            title = html.escape(f"id {t.id}{label}", quote=True)
            cell = f'<span class="{" ".join(classes)}" title="{title}">{shown}</span>'
            cells.append(cell + "<br>" * t.text.count("\n"))
        trained = sum(t.trained for t in self.tokens)
        mismatched = any(t.trained and t.label is not None and t.label != t.id for t in self.tokens)
        legend = [
            '<span class="sm-tok sm-t">trained</span>',
            '<span class="sm-tok sm-m">masked</span>',
            '<span class="sm-tok sm-m sm-s">special</span>',
        ]
        if mismatched:
            legend.append('<span class="sm-tok sm-t sm-x">label \u2260 input id</span>')
        if any(is_byte for t in self.tokens for _, is_byte in _pieces(t.raw)):
            legend.append('<span class="sm-b">F0</span> byte of a character split across tokens')
        legend.append(
            '<span class="sm-ws">\u00b7</span> space &nbsp;<span class="sm-ws">\u21b5</span> newline '
            '&nbsp;<span class="sm-ws">\u2192</span> tab &nbsp;<span class="sm-z">\u2205</span> zero-width '
            "(phantom space) &nbsp;&nbsp;"
            f"<strong>{trained}/{len(self.tokens)}</strong> tokens trained ({self.trained_fraction:.0%}"
            + (f"; {self.padding} padding positions left out" if self.padding else "")
            + "); "
            "hover a token for its id and label"
        )
        return (
            f'<div class="sftmask"><style>{_CSS}</style>'
            f'<div class="sm-legend">{" ".join(legend)}</div>'
            f'<div class="sm-body">{"".join(cells)}</div></div>'
        )
