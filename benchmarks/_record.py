"""What every benchmark row records beside its numbers: the commit it ran at, and the CSV it
is appended to; and the fresh worker process a measured case runs in. Shared by the benchmark
scripts."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
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
    """Append `rows` to the CSV at `path` (header written when the file is new; when the rows
    bring columns the file lacks, it is rewritten with them added, older rows left empty there)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0])
    old: list[dict] = []
    rewrite = not path.exists()
    if not rewrite:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            have = list(reader.fieldnames or [])
            # an empty file, or rows bringing columns it lacks: header (and old rows) written anew
            rewrite = not have or bool(set(fields) - set(have))
            if rewrite:
                old = list(reader)
        fields = have + [k for k in fields if k not in have]
    if rewrite:
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(old)
    with path.open("a", newline="") as f:
        csv.DictWriter(f, fieldnames=fields, restval="").writerows(rows)
    return path


def run_worker(module: str, case: str, args: list[str]) -> dict:
    """`python -m module --worker case *args` in a fresh process (its peak memory is its own),
    its last stdout line parsed as the row, the commit added; exits naming the case and the
    worker's error output when it fails."""
    cmd = [sys.executable, "-m", module, "--worker", case, *map(str, args)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if out.returncode:
        sys.exit(f"{case} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1]) | {"commit": git_commit()}
