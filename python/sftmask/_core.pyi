"""The compiled core of sftmask (Rust, PyO3). Most users want ``sftmask.DataCollatorForCompletionOnlyLM``."""

import os
from collections.abc import Iterable, Sequence
from typing import Any, Final, Literal, final

import numpy as np
import numpy.typing as npt
from typing_extensions import TypeAlias

__all__ = [
    "PARALLEL_MIN_TOKENS",
    "Encoder",
    "InternalError",
    "Masker",
    "TokenizerError",
    "Vocab",
    "__version__",
    "tokenize_and_mask",
]

__version__: Final[str]
PARALLEL_MIN_TOKENS: Final[int]

_Ids: TypeAlias = Sequence[int] | npt.NDArray[np.integer[Any]]
_Template: TypeAlias = str | _Ids

class TokenizerError(ValueError):
    """The tokenizer cannot be read, or has no exact byte rule (e.g. an unknown decoder type)."""

class InternalError(RuntimeError):
    """A bug in sftmask (a Rust panic was caught). Please report it with the input that caused it."""

@final
class Vocab:
    """The byte table of one tokenizer: for every token id, the exact bytes it stands for.

    >>> vocab = Vocab.from_file("tokenizer.json")  # doctest: +SKIP
    >>> vocab.token_bytes(128006)  # doctest: +SKIP
    b'<|start_header_id|>'
    """

    @staticmethod
    def from_json(json: str) -> Vocab:
        """Builds (or fetches from the cache) the table for the text of a tokenizer.json."""

    @staticmethod
    def from_file(path: str | os.PathLike[str]) -> Vocab:
        """Builds (or fetches from the cache) the table for a tokenizer.json file."""

    @staticmethod
    def from_parts(
        parts: str, vocab_file: str | os.PathLike[str]
    ) -> tuple[Vocab, str | None, int | None, list[tuple[int, str]]]:
        """Builds the table from a loaded tokenizer's parts and the model vocabulary of a file."""

    def __len__(self) -> int: ...
    @property
    def decoding(self) -> Literal["byte_level", "sentencepiece", "wordpiece"]:
        """How token strings map to bytes."""

    @property
    def phantom(self) -> Literal["never", "first", "always"]:
        """Where a phantom space is left out of the searchable text."""

    @property
    def fingerprint(self) -> int:
        """A stable hash of the table: equal tables, equal fingerprints."""

    def token_bytes(self, id: int) -> bytes | None:
        """The bytes ``id`` stands for (no phantom rule), or None for an unknown id."""

    def token_id(self, content: str) -> int | None:
        """The id of the token whose text is ``content`` (added/special tokens first), or None."""

    def is_added(self, id: int) -> bool:
        """``True`` when ``id`` is an added or special token (``<|eot_id|>``, ``<s>``, …).

        >>> vocab.is_added(128009)  # doctest: +SKIP
        True
        """

    def text(self, ids: _Ids) -> tuple[bytes, list[int]]:
        """The searchable text of ``ids`` and the end offset of every token in it."""

    def normalize(self, text: str) -> str:
        """The tokenizer's content normalization (e.g. NFC) applied to ``text``."""

@final
class Masker:
    """Masks and collates batches for one tokenizer and one set of templates.

    >>> masker = Masker(vocab, "<|im_start|>assistant\\n", ["<|im_start|>user\\n"])  # doctest: +SKIP
    >>> arrays, stats = masker.collate([{"input_ids": ids}], pad_token_id=0)  # doctest: +SKIP
    """

    def __new__(
        cls,
        vocab: Vocab,
        response_template: _Template,
        instruction_templates: Iterable[_Template] | None = None,
        *,
        ignore_index: int = -100,
        train_on: Literal["all", "last"] = "all",
        compat: Literal["exact", "trl"] = "exact",
        pad_token_id: int | None = None,
    ) -> Masker: ...
    @property
    def response_template(self) -> bytes:
        """The response template as bytes of the searchable text."""

    @property
    def instruction_templates(self) -> list[bytes]:
        """The instruction templates as bytes of the searchable text."""

    @property
    def totals(self) -> tuple[int, int, int, int, int]:
        """Totals since this masker was made: (rows, rows_without_template, tokens, trained, straddling)."""

    def collate(
        self,
        examples: Iterable[Any],
        *,
        pad_token_id: int | None = None,
        padding_side: Literal["right", "left"] = "right",
        pad_to_multiple_of: int | None = None,
        padding_free: bool = False,
        num_threads: int | None = None,
    ) -> tuple[
        dict[str, npt.NDArray[np.int64] | npt.NDArray[np.int32] | int], tuple[int, int, int, int, list[int], list[int]]
    ]:
        """Pads (or flattens) a batch and masks its labels.

        Returns ``(arrays, (rows, tokens, trained, straddling, missing_rows, missing_instruction_rows))``.
        """

    def inspect(self, ids: _Ids) -> dict[str, Any]:
        """Masks one example and returns what went into it (text, ends, regions, occurrences, labels, …)."""

@final
class Encoder:
    """A tokenizer run in Rust (the ``tokenizers`` crate over the same tokenizer.json).

    >>> enc = Encoder.from_json(open("tokenizer.json").read())  # doctest: +SKIP
    >>> enc.encode_batch(["Hello"], add_special_tokens=False)  # doctest: +SKIP
    [[9707]]
    """

    @staticmethod
    def from_json(json: str) -> Encoder:
        """Loads a tokenizer from the text of a tokenizer.json."""

    def encode_batch(
        self, texts: Sequence[str], *, add_special_tokens: bool = True, num_threads: int | None = None
    ) -> list[list[int]]:
        """Token ids of each text, in parallel and without the GIL."""

def tokenize_and_mask(
    texts: Sequence[str],
    encoder: Encoder,
    masker: Masker,
    *,
    add_special_tokens: bool = True,
    max_length: int | None = None,
    num_threads: int | None = None,
) -> tuple[list[list[int]], list[list[int]], tuple[int, int, int, list[int]]]:
    """Tokenizes ``texts`` with ``encoder`` and masks each row with ``masker``, in parallel and without the GIL.

    Returns ``(input_ids, labels, (tokens, trained, straddling, missing_rows))``.

    >>> ids, labels, stats = tokenize_and_mask(["<|im_start|>user\\nHi<|im_end|>\\n"], enc, masker)  # doctest: +SKIP
    """
