"""The compiled core of sftmask (Rust, PyO3). Most users want ``sftmask.DataCollatorForCompletionOnlyLM``.

Signatures only: the docstrings live in one place, the Rust source (``src/python/*.rs``), and
``help()`` shows them; ``tests/test_doctests.py`` runs their examples.
"""

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, Literal, final

import numpy as np
import numpy.typing as npt
from typing_extensions import TypeAlias

__all__ = [
    "PARALLEL_MIN_TOKENS",
    "ChatTemplate",
    "Encoder",
    "InternalError",
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
    "_stats_from_dict",
    "locate_regions",
    "pack",
    "tokenize_and_mask",
    "tokenize_and_mask_arrow",
    "tokenize_conversations",
    "tokenize_conversations_arrow",
]

__version__: Final[str]
PARALLEL_MIN_TOKENS: Final[int]

_Ids: TypeAlias = Sequence[int] | npt.NDArray[np.integer[Any]]
_Template: TypeAlias = str | _Ids

class SftmaskError(Exception):
    row: int | None
    position: int | None
    reason: str | None

class RowError(SftmaskError, ValueError): ...
class RowTypeError(RowError, TypeError): ...
class OptionError(SftmaskError, ValueError): ...
class OptionTypeError(OptionError, TypeError): ...
class TokenizerError(SftmaskError, ValueError): ...
class InternalError(SftmaskError, RuntimeError): ...
class MissingTemplateWarning(UserWarning): ...

@final
class Stats:
    def __new__(
        cls,
        *,
        rows: int = 0,
        tokens: int = 0,
        trained_tokens: int = 0,
        straddling_tokens: int = 0,
        rows_without_template: int = 0,
        rows_without_instruction_template: int = 0,
        rows_without_trained_tokens: int = 0,
        rows_truncated: int = 0,
        missing_rows: Sequence[int] = ...,
        missing_instruction_rows: Sequence[int] = ...,
        rows_not_located: int = 0,
        turns_without_end_marker: int = 0,
        not_located_rows: Sequence[int] = ...,
        turns_without_end_marker_rows: Sequence[int] = ...,
    ) -> Stats: ...
    @property
    def rows(self) -> int: ...
    @property
    def tokens(self) -> int: ...
    @property
    def trained_tokens(self) -> int: ...
    @property
    def straddling_tokens(self) -> int: ...
    @property
    def rows_without_template(self) -> int: ...
    @property
    def rows_without_instruction_template(self) -> int: ...
    @property
    def rows_without_trained_tokens(self) -> int: ...
    @property
    def rows_truncated(self) -> int: ...
    @property
    def missing_rows(self) -> list[int]: ...
    @property
    def missing_instruction_rows(self) -> list[int]: ...
    @property
    def rows_not_located(self) -> int: ...
    @property
    def turns_without_end_marker(self) -> int: ...
    @property
    def not_located_rows(self) -> list[int]: ...
    @property
    def turns_without_end_marker_rows(self) -> list[int]: ...
    @property
    def trained_fraction(self) -> float: ...
    @property
    def examples(self) -> int: ...
    def as_dict(self) -> dict[str, Any]: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]: ...

def _stats_from_dict(fields: dict[str, Any]) -> Stats: ...

@final
class Vocab:
    @staticmethod
    def from_json(json: str) -> Vocab: ...
    @staticmethod
    def from_file(path: str | os.PathLike[str]) -> Vocab: ...
    @staticmethod
    def from_parts(
        parts: str, vocab_file: str | os.PathLike[str]
    ) -> tuple[Vocab, str | None, int | None, list[tuple[int, str]]]: ...
    def __len__(self) -> int: ...
    @property
    def decoding(self) -> Literal["byte_level", "sentencepiece", "wordpiece"]: ...
    @property
    def phantom(self) -> Literal["never", "first", "always"]: ...
    @property
    def fingerprint(self) -> int: ...
    def token_bytes(self, id: int) -> bytes | None: ...
    def token_id(self, content: str) -> int | None: ...
    def is_added(self, id: int) -> bool: ...
    def text(self, ids: _Ids) -> tuple[bytes, list[int]]: ...
    def normalize(self, text: str) -> str: ...

@final
class Masker:
    def __new__(
        cls,
        vocab: Vocab,
        response_template: _Template | None = None,
        instruction_templates: Iterable[_Template] | None = None,
        *,
        labels: Literal["mask", "keep"] = "mask",
        compat: Literal["exact", "trl"] = "exact",
        ignore_index: int = -100,
        train_on: Literal["all", "last"] = "all",
        on_missing: Literal["warn", "error", "ignore"] = "warn",
        pad_token_id: int | None = None,
        padding_side: Literal["right", "left"] = "right",
        padding_free: bool = False,
        pad_to_multiple_of: int | None = None,
        num_threads: int | None = None,
        pad_token_type_id: int = 0,
    ) -> Masker: ...
    @property
    def response_template(self) -> bytes: ...
    @property
    def instruction_templates(self) -> list[bytes]: ...
    @property
    def totals(self) -> Stats: ...
    def collate(
        self, examples: Iterable[Any]
    ) -> tuple[dict[str, npt.NDArray[np.int64] | npt.NDArray[np.int32] | int], Stats]: ...
    def check_padding(self) -> None: ...
    def inspect(self, ids: _Ids) -> dict[str, Any]: ...

@final
class Encoder:
    @staticmethod
    def from_json(json: str, *, engine: str = "auto") -> Encoder: ...
    @staticmethod
    def from_parts(
        parts: str, tokenizer_file: str | os.PathLike[str], *, engine: str = "auto"
    ) -> tuple[Encoder, str | None, int | None, list[tuple[int, str]]]: ...
    @property
    def engine(self) -> str: ...
    @property
    def fast_refusal(self) -> str | None: ...
    def encode_batch(
        self, texts: Sequence[str], *, add_special_tokens: bool = True, num_threads: int | None = None
    ) -> list[list[int]]: ...

def tokenize_and_mask(
    texts: Sequence[str],
    encoder: Encoder,
    masker: Masker,
    *,
    add_special_tokens: bool = True,
    max_length: int | None = None,
) -> tuple[list[list[int]], list[list[int]], Stats]: ...
def tokenize_and_mask_arrow(
    data: object,
    encoder: Encoder,
    masker: Masker,
    *,
    column: str = "text",
    add_special_tokens: bool = True,
    max_length: int | None = None,
) -> tuple[Any, Stats]: ...

@final
class ChatTemplate:
    def __new__(
        cls,
        source: str,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        unk_token: str | None = None,
        pad_token: str | None = None,
        prefix_plan: bool = True,
    ) -> ChatTemplate: ...
    @property
    def unsupported(self) -> str | None: ...
    def render(
        self, conversations_json: str, *, add_generation_prompt: bool = False, kwargs_json: str = "{}"
    ) -> list[tuple[str, str]]: ...
    def regions(
        self, conversations_json: str, special_tokens: Sequence[str], *, kwargs_json: str = "{}"
    ) -> list[tuple[str, str, list[tuple[int, int, int, str | None]]]]: ...
    def prefix_renders(
        self, conversation_json: str, *, kwargs_json: str = "{}"
    ) -> list[tuple[int, bool, str, bool]]: ...
    @property
    def prefix_renders_in_full(self) -> str | None: ...

def tokenize_conversations(
    template: ChatTemplate,
    encoder: Encoder,
    rows: list[str | tuple[Any, Any]],
    *,
    rendered: dict[int, tuple[str, list[tuple[int, tuple[int, int] | None, str | None, str | None]]]] | None = None,
    kwargs_json: str = "{}",
    train_on: str = "all",
    ignore_index: int = -100,
    max_length: int | None = None,
    on_missing: str = "warn",
    reasoning: str = "train",
    num_threads: int | None = None,
) -> tuple[list[list[int]], list[list[int]], Stats, list[tuple[int, str]], list[tuple[int, str]]]: ...
def locate_regions(
    full: str,
    messages_json: str,
    special_tokens: Sequence[str],
    render: Callable[[str, bool], str],
) -> list[tuple[int, tuple[int, int] | None, str | None, str | None]]: ...
def tokenize_conversations_arrow(
    data: object,
    template: ChatTemplate,
    encoder: Encoder,
    *,
    column: str = "messages",
    tools_column: str | None = None,
    tools_json: str | None = None,
    kwargs_json: str = "{}",
    train_on: str = "all",
    ignore_index: int = -100,
    max_length: int | None = None,
    on_missing: str = "warn",
    reasoning: str = "train",
    num_threads: int | None = None,
) -> tuple[Any | None, Stats | None, list[tuple[int, str]], list[tuple[int, str]]]: ...

@final
class PackStats:
    @property
    def rows(self) -> int: ...
    @property
    def rows_empty(self) -> int: ...
    @property
    def sequences(self) -> int: ...
    @property
    def bins(self) -> int: ...
    @property
    def tokens(self) -> int: ...
    @property
    def max_length(self) -> int: ...
    @property
    def rows_truncated(self) -> int: ...
    @property
    def rows_split(self) -> int: ...
    @property
    def tokens_dropped(self) -> int: ...
    @property
    def trained_tokens(self) -> int: ...
    @property
    def fill_ratio(self) -> float: ...
    def as_dict(self) -> dict[str, Any]: ...
    def __eq__(self, value: object, /) -> bool: ...

def pack(
    input_ids: Iterable[_Ids] | _Ids,
    labels: Iterable[_Ids] | _Ids,
    max_length: int,
    *,
    truncation: Literal["right", "split"] = "right",
    ignore_index: int = -100,
    offsets: _Ids | None = None,
) -> tuple[dict[str, npt.NDArray[np.int64]], PackStats]: ...
