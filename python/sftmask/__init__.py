"""sftmask: exact, fast completion-only label masking for supervised fine-tuning.

A Rust drop-in for TRL's ``DataCollatorForCompletionOnlyLM``: change one import line.

>>> from sftmask import DataCollatorForCompletionOnlyLM  # instead of: from trl import …
>>> collator = DataCollatorForCompletionOnlyLM("<|im_start|>assistant\\n", tokenizer=tokenizer)
>>> collator.stats.rows
0

Also: ``chat_markers`` (a chat template's collator templates), ``ensure_pad_token`` (a pad
token for Llama-3 without resizing), ``render`` (see a mask), ``tokenize_and_mask`` (preprocess a
dataset once), ``pack`` (masked rows into bins), and the ``sftmask check`` command. Every error
is a :class:`SftmaskError` (and a ``ValueError`` or ``TypeError``); errors about one example are
:class:`RowError` with its ``row``.
"""

from sftmask._core import (
    Encoder,
    InternalError,
    Masker,
    MissingTemplateWarning,
    OptionError,
    OptionTypeError,
    PackStats,
    RowError,
    RowTypeError,
    SftmaskError,
    Stats,
    TokenizerError,
    Vocab,
    __version__,
)
from sftmask.chat import ChatMarkers, chat_markers
from sftmask.collator import CollatorStats, DataCollatorForCompletionOnlyLM
from sftmask.pack import pack
from sftmask.pad import ensure_pad_token
from sftmask.preprocess import tokenize_and_mask
from sftmask.render import MaskView, render

__all__ = [
    "ChatMarkers",
    "CollatorStats",
    "DataCollatorForCompletionOnlyLM",
    "Encoder",
    "InternalError",
    "MaskView",
    "Masker",
    "MissingTemplateWarning",
    "OptionError",
    "OptionTypeError",
    "PackStats",
    "RowError",
    "RowTypeError",
    "SftmaskError",
    "Stats",
    "TokenizerError",
    "Vocab",
    "__version__",
    "chat_markers",
    "ensure_pad_token",
    "pack",
    "render",
    "tokenize_and_mask",
]
