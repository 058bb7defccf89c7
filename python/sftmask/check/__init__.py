"""``sftmask check``: scan a dataset file and report how its rows would be masked.

Reads JSON Lines, JSON, Parquet or a saved ``datasets`` folder; tokenizes a ``text`` column (or
renders a ``messages`` column with the tokenizer's chat template, or reads an ``input_ids`` column);
masks every row as the collator would; and reports rows without a response template, the
trained-token fraction, straddling tokens, truncation by ``--max-length``, and the rows TRL's
token matching would lose. ``--format json`` is for CI; ``--fail-if-missing-above`` sets the exit
code so the command can guard a data pipeline.

    sftmask check data.jsonl --tokenizer ./tokenizer --response-template '<|im_start|>assistant\\n'

The parts: :mod:`~sftmask.check.readers` (files to chunks of one column),
:mod:`~sftmask.check.tokenizer` (the ``--tokenizer`` argument), :mod:`~sftmask.check.analysis`
(masking and counts) and :mod:`~sftmask.check.report` (the command: output and exit codes).
"""

from __future__ import annotations

from sftmask.check.analysis import SAMPLE_ROWS, Report, scan
from sftmask.check.errors import CheckError
from sftmask.check.readers import DEFAULT_COLUMNS, Source, open_source
from sftmask.check.report import EXIT_BAD_INPUT, EXIT_FAILED_CHECK, EXIT_OK, add_parser, as_json, run, text_report

__all__ = [
    "DEFAULT_COLUMNS",
    "EXIT_BAD_INPUT",
    "EXIT_FAILED_CHECK",
    "EXIT_OK",
    "SAMPLE_ROWS",
    "CheckError",
    "Report",
    "Source",
    "add_parser",
    "as_json",
    "open_source",
    "run",
    "scan",
    "text_report",
]
