"""JSON-lines input files: the objects of a file, one per non-blank line, with named errors.

Used by every reader of user-written jsonl (SFT and task files, bits-per-byte documents, the
recipes' prompt and label files), so a missing file, invalid UTF-8, a line that is not JSON or
not an object is reported the same way everywhere: the file, the line and what is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

from llmcore.data.files import check_utf8
from llmcore.errors import DataError


def read_json_lines(path: str | Path, what: str = "file") -> list[tuple[int, dict]]:
    """`[(line number, object), ...]` of a JSON-lines file; blank lines are skipped. `what`
    names the file's role in the errors (`task file`, `prompt file`, ...)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} {p} does not exist")
    rows = []
    try:
        with p.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{p}:{lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{p}:{lineno}: expected a JSON object, got {type(row).__name__}")
                rows.append((lineno, row))
    except UnicodeDecodeError:
        check_utf8(str(p))  # names the line and byte
        raise
    return rows
