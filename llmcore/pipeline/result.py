"""A finished run's `result.json`: its final step, checkpoint and scalar metrics.

Written by the pipeline runner when a run completes and read on a rerun, which skips the run
instead of training it again (the trainer alone cannot tell: resumed at its last step it would
evaluate again and report no training loss).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from llmcore.errors import CheckpointError
from llmcore.fsutil import write_text_atomically
from llmcore.train.metrics import read_metrics

RESULT_FILE = "result.json"
# fit() keys that describe the run rather than measure it
_NOT_METRICS = ("step", "checkpoint", "stopped_by_signal")


def scalar_metrics(fit_result: dict) -> dict[str, float | int]:
    """The numbers among `Trainer.fit()`'s final metrics (loss, val_loss, lr, recipe metrics…)."""
    return {k: v for k, v in fit_result.items()
            if k not in _NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def last_train_metrics(out_dir: Path, step: int) -> dict:
    """Training metrics of `step` from metrics.jsonl: what fit() cannot report when a run is
    resumed at its last step (e.g. it crashed during the final evaluation)."""
    found = [r for r in read_metrics(out_dir / "metrics.jsonl") if r["step"] == step and "loss" in r]
    return scalar_metrics({k: v for k, v in found[-1].items() if k not in ("time", "tokens")}) if found else {}


def write_result(out_dir: Path, record: dict) -> None:
    """Write result.json atomically, so an interrupted write never looks like a finished run."""
    # NaN is not JSON: a diverged run's loss is stored as null
    clean = {**record, "metrics": {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                   for k, v in record["metrics"].items()}}
    write_text_atomically(out_dir / RESULT_FILE, json.dumps(clean, indent=1), durable=True)


def read_result(out_dir: Path) -> dict[str, Any]:
    path = out_dir / RESULT_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is unreadable: {e}; delete it to train the run again") from None
