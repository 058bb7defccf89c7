"""The one error type of ``sftmask check`` and the helper that keeps its messages to one line."""

from __future__ import annotations


class CheckError(Exception):
    """A problem with the user's input, reported as one line (exit code 2).

    >>> from sftmask.check import CheckError
    >>> str(CheckError("no such file or folder: data.jsonl"))
    'no such file or folder: data.jsonl'
    """


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (library errors can run to pages).

    >>> first_line(ValueError("bad row\\nmore detail"))
    'bad row'
    >>> first_line(KeyError())
    'KeyError'
    """
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
