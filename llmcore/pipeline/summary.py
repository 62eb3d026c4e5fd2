"""A pipeline's rows (one per run) and their summary: a markdown table and `summary.csv`.

A row is a flat dict: the run's identity (`stage`, `variant`, `params`, `out_dir`, `status`,
`step`, `checkpoint`) and then its final scalar metrics (`loss`, `val_loss`, `train_s`, any
recipe metric), so `row["val_loss"]` reads as it does in `Trainer.fit()`'s result.
"""

from __future__ import annotations

import csv
from pathlib import Path

from llmcore.pipeline.plan import Run

ROW_KEYS = ("stage", "variant", "params", "out_dir", "status", "step", "checkpoint")
CSV_KEYS = ("stage", "variant", "out_dir", "step")
FIRST_METRICS = ("loss", "val_loss")
"""Shown first: what a reader of a sweep compares."""


def make_row(run: Run, status: str, step: int, checkpoint: str, metrics: dict) -> dict:
    """The row of `run`: status is trained | resumed | skipped | stopped (by a signal)."""
    return {"stage": run.stage, "variant": run.variant, "params": dict(run.params), "out_dir": str(run.out_dir),
            "status": status, "step": step, "checkpoint": checkpoint, **metrics}


def metric_columns(rows: list[dict]) -> list[str]:
    """The union of the rows' metric names: loss and val_loss first, the rest sorted."""
    names = {k for row in rows for k in row if k not in ROW_KEYS}
    return [c for c in FIRST_METRICS if c in names] + sorted(names - set(FIRST_METRICS))


def write_csv(rows: list[dict], path: Path) -> None:
    """One line per run; a metric a run did not report is left empty."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, [*CSV_KEYS, *metric_columns(rows)], restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)


def table(rows: list[dict]) -> str:
    """Markdown: stage, variant, step, every metric (4 significant digits), status."""
    columns = metric_columns(rows)
    lines = ["| stage | variant | step | " + " | ".join(columns) + " | status |",
             "| --- " * (len(columns) + 4) + "|"]
    for row in rows:
        cells = [row["stage"], row["variant"] or "-", str(row["step"])] + [_cell(row.get(c)) for c in columns]
        lines.append("| " + " | ".join(cells + [row["status"]]) + " |")
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
