"""Arrow data at the edge of the Python package: recognising it, and turning the core's output
stream back into a ``pyarrow.Table``."""

from __future__ import annotations

from typing import Any

from sftmask._core import OptionTypeError


def is_arrow(data: Any) -> bool:
    """Arrow data by the PyCapsule interface: pyarrow, polars, DuckDB, nanoarrow… tables.

    >>> import pyarrow as pa
    >>> is_arrow(pa.table({"text": ["x"]})), is_arrow(["x"])
    (True, False)
    """
    return hasattr(data, "__arrow_c_stream__") or hasattr(data, "__arrow_c_array__")


class _Stream:
    """Hands an ``arrow_array_stream`` capsule to ``pyarrow.table``."""

    def __init__(self, capsule: Any) -> None:
        self._capsule = capsule

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        return self._capsule


def table(capsule: Any) -> Any:
    """The ``pyarrow.Table`` of an ``arrow_array_stream`` capsule the core returned."""
    try:
        import pyarrow as pa
    except ImportError:  # pragma: no cover - Arrow input without pyarrow: polars, DuckDB
        raise OptionTypeError("Arrow output is a pyarrow.Table: install pyarrow (pip install pyarrow)") from None
    return pa.table(_Stream(capsule))
