"""Raising sftmask's exceptions from Python with their attributes set (the classes live in the core)."""

from __future__ import annotations

from sftmask._core import RowError, RowTypeError


def row_error(row: int, reason: str, *, type_error: bool = False, position: int | None = None) -> RowError:
    """A :class:`RowError` (or :class:`RowTypeError`) for ``row``, as the core makes them.

    >>> e = row_error(3, "the text is empty")
    >>> str(e), e.row, e.reason
    ('row 3: the text is empty', 3, 'the text is empty')
    """
    e = (RowTypeError if type_error else RowError)(f"row {row}: {reason}")
    e.row, e.position, e.reason = row, position, reason
    return e
