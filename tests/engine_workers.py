"""The worker side of tests/test_engines.py: what Ray's and Spark's worker processes import.

It imports nothing from the test suite (no conftest, no pytest), because those processes import it
by name from this folder (the test puts it on their ``PYTHONPATH``), as a user's job would import
its own module.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import sftmask


class Shipped:
    """A tokenizer in transit that leaves a file named after the process each time it is
    unpickled, so the test can count how often each worker received it (once, not per batch)."""

    def __init__(self, tokenizer: Any, arrivals: str) -> None:
        self.tokenizer = tokenizer
        self.arrivals = arrivals

    def __getstate__(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer, "arrivals": self.arrivals}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        (Path(self.arrivals) / f"{os.getpid()}-{uuid.uuid4().hex}").write_text("")


class RayTokenizeAndMask:
    """A Ray Data callable class: Ray pickles the constructor's arguments (the tokenizer) once per
    actor, and calls the instance on every ``pyarrow.Table`` batch."""

    def __init__(self, shipped: Shipped, response: str | None, instructions: list[str] | None) -> None:
        self.tokenizer = shipped.tokenizer
        self.response = response
        self.instructions = instructions

    def __call__(self, batch: Any) -> Any:
        # No response template: a `messages` column, labelled by the tokenizer's chat template.
        return sftmask.tokenize_and_mask(batch, self.tokenizer, self.response, self.instructions, on_missing="ignore")


def spark_tokenize_and_mask(broadcast: Any, response: str | None, instructions: list[str] | None):
    """The function for ``DataFrame.mapInArrow``: called per partition with an iterator of
    ``pyarrow.RecordBatch``. ``broadcast`` holds the tokenizer; a reused Python worker unpickles
    it once and keeps it for every later partition."""

    def run(batches):
        tokenizer = broadcast.value.tokenizer
        for batch in batches:
            out = sftmask.tokenize_and_mask(batch, tokenizer, response, instructions, on_missing="ignore")
            yield from out.to_batches()

    return run
