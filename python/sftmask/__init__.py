"""sftmask: exact, fast completion-only label masking for supervised fine-tuning.

A Rust drop-in for TRL's ``DataCollatorForCompletionOnlyLM``: change one import line.

>>> from sftmask import DataCollatorForCompletionOnlyLM  # instead of: from trl import …
>>> collator = DataCollatorForCompletionOnlyLM(
...     "<|start_header_id|>assistant<|end_header_id|>\\n\\n", tokenizer=tokenizer)  # doctest: +SKIP
"""

from sftmask._core import Encoder, InternalError, Masker, TokenizerError, Vocab, __version__
from sftmask.collator import CollatorStats, DataCollatorForCompletionOnlyLM
from sftmask.render import MaskView

__all__ = [
    "CollatorStats",
    "DataCollatorForCompletionOnlyLM",
    "Encoder",
    "InternalError",
    "MaskView",
    "Masker",
    "TokenizerError",
    "Vocab",
    "__version__",
]
