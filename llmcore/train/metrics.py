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

from llmcore.fsutil import write_text_atomically

log = logging.getLogger("llmcore")


def setup_logging(level: int = logging.INFO, tag: str = "") -> None:
    """llmcore's log lines on stderr (once per process); `tag` starts every message (a pipeline
    worker's run name)."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        log.addHandler(handler)
        log.setLevel(level)
        log.propagate = False
    prefix = f"[{tag}] " if tag else ""
    for handler in log.handlers:
        handler.setFormatter(logging.Formatter(f"%(asctime)s llmcore %(levelname)s {prefix}%(message)s", "%H:%M:%S"))


def parse_row(line: str) -> dict | None:
    """One line of metrics.jsonl as its row (an object with an integer `step`), or None: a row
    cut short by a kill is never complete and never read."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) and isinstance(row.get("step"), int) else None


def read_metrics(path: str | Path) -> list[dict]:
    """Every row of a metrics.jsonl file, in order (a resumed run may repeat a step: later rows
    win); [] when there is no such file. Used by plots, reports, model cards and the pipeline."""
    path = Path(path)
    if not path.is_file():
        return []
    return [row for row in map(parse_row, path.read_text(errors="replace").splitlines()) if row is not None]


class MetricsWriter:
    """Appends one JSON object per call to `out_dir/metrics.jsonl` (appending keeps the history
    of a resumed run in one file)."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.trackers: list = []
        """Experiment trackers (`llmcore.train.loggers`) that get every row written here."""
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> int:
        """Drop the rows of steps after `step` (a resume replays them: kept, they would appear
        twice); rewritten atomically. Returns how many rows were dropped."""
        if self.path is None or not self.path.is_file():
            return 0
        lines = self.path.read_text().splitlines(keepends=True)
        keep = []
        for line in lines:
            row = parse_row(line)
            if row is not None and row["step"] <= step:
                keep.append(line if line.endswith("\n") else line + "\n")
        if len(keep) != len(lines):
            write_text_atomically(self.path, "".join(keep))
        return len(lines) - len(keep)

    def write(self, record: dict) -> None:
        if self.path is None:
            return
        record = {"time": round(time.time(), 3), **record}
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=float) + "\n")
        for tracker in self.trackers:
            tracker.log(record)

    def close(self) -> None:
        """Close the trackers (flushes TensorBoard, finishes the W&B run); metrics.jsonl needs none."""
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.close()


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
