"""Each benchmark owns one section of ``benches/RESULTS.md``, between ``<!-- NAME:begin -->`` and
``<!-- NAME:end -->`` markers, so that running one benchmark (or bench_collators.py's rewrite of
the file, which keeps every marked section) leaves the others' results alone.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "R.md"
>>> write_section("demo", "| a |\\n", p); write_section("demo", "| b |", p)
>>> p.read_text()
'<!-- demo:begin -->\\n| b |\\n<!-- demo:end -->\\n'
"""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def write_section(name: str, text: str, path: Path = RESULTS) -> None:
    """Puts ``text`` between ``name``'s markers in ``path`` (appended the first time)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{text.rstrip(chr(10))}\n{end}\n"
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        # One blank line between the section and whatever followed it.
        tail = rest.split(end, 1)[1].lstrip("\n")
        new = head + block + ("\n" + tail if tail else "")
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + block
    path.write_text(new, encoding="utf-8")
