"""Run logging: a JSONL metrics file, a console logger, and the progress bar.

Used by the trainer (and the benchmarks). Only rank 0 writes; other ranks get no-op objects,
so callers never branch on rank.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("llmcore")


def setup_logging(level: int = logging.INFO) -> None:
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s llmcore %(levelname)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(level)
        log.propagate = False


class MetricsWriter:
    """Appends one JSON object per call to `out_dir/metrics.jsonl` (appending keeps the history
    of a resumed run in one file)."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        if self.path is None:
            return
        record = {"time": round(time.time(), 3), **record}
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=float) + "\n")


def progress_bar(total: int, initial: int, enabled: bool, desc: str = "train"):
    """A tqdm bar, or a do-nothing stand-in when disabled (non-main ranks, --no-progress)."""
    if enabled:
        from tqdm.auto import tqdm
        return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=sys.stderr)
    return _NoBar()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def write(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass
