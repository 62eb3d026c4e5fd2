"""What every benchmark row records beside its numbers: the commit it ran at, and the CSV it
is appended to. Shared by the benchmark scripts."""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    """Short commit id, `-dirty` when the tree has uncommitted changes, or "unknown".

    ``LLMCORE_COMMIT`` names it where the tree is a copy without git (a remote GPU box)."""
    if os.environ.get("LLMCORE_COMMIT"):
        return os.environ["LLMCORE_COMMIT"]
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def append_csv(path: str | Path, rows: list[dict]) -> Path:
    """Append `rows` to the CSV at `path` (header written when the file is new)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            writer.writeheader()
        writer.writerows(rows)
    return path
