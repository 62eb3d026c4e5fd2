"""Experiment trackers beside `metrics.jsonl`: TensorBoard and Weights & Biases (`train.loggers`).

Used by the trainer through `MetricsWriter`: every row it appends to metrics.jsonl (train rows:
loss terms, lr, grad norm, tokens/s, MFU; evaluation rows: `val_loss`, `eval/<set>/loss`, ...)
goes to each tracker too, with the same keys and the optimizer step as the x axis, so the
three views never disagree. Only rank 0 logs. Each tracker is an optional extra, imported
only when listed: `pip install 'llmcore[tensorboard]'` / `'llmcore[wandb]'`.

- tensorboard: `torch.utils.tensorboard.SummaryWriter` writing `out_dir/tensorboard/`; on
  resume it purges the events of the steps the run replays (as metrics.jsonl drops its rows).
- wandb: one W&B run per out_dir (its id kept in `out_dir/wandb/run-id`, so a resume continues
  it), the full config as the run config; offline (files under `out_dir/wandb/`, upload later
  with `wandb sync`) unless `WANDB_API_KEY` is set or `WANDB_MODE` says otherwise.
"""

from __future__ import annotations

import math
import os
import secrets
from pathlib import Path
from typing import Protocol

from llmcore.errors import ConfigError


class Tracker(Protocol):
    def log(self, record: dict) -> None: ...

    def close(self) -> None: ...


def scalars(record: dict, prefix: str = "") -> dict[str, float]:
    """The numbers of a metrics row, nested mappings flattened with `/`; `step` (the x axis)
    and `time` (wall clock, which the trackers record themselves) left out."""
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(scalars(value, name + "/"))
        elif isinstance(value, (int, float)) and name not in ("step", "time"):
            out[name] = float(value)
    return out


def _missing(name: str, package: str) -> ConfigError:
    return ConfigError(f"train.loggers lists {name}, but the {package} package is not installed: "
                       f"pip install 'llmcore[{name}]' (or drop {name} from train.loggers)")


class TensorBoardTracker:
    """Scalars to a TensorBoard event file under `log_dir`."""

    def __init__(self, log_dir: Path, resumed_step: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard", "tensorboard") from None
        # a resume replays the steps after its checkpoint: drop their old events
        self.writer = SummaryWriter(str(log_dir), purge_step=resumed_step + 1 if resumed_step else None)

    def log(self, record: dict) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(key, value, record["step"])
        self.writer.flush()  # one flush per logged row: a killed run keeps what it logged

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """One W&B run per out_dir, offline unless a key or WANDB_MODE says otherwise."""

    def __init__(self, out_dir: Path, project: str, config: dict):
        try:
            import wandb
        except ImportError:
            raise _missing("wandb", "wandb") from None
        folder = out_dir / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / "run-id"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        id_file.write_text(run_id + "\n")
        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        self.run = wandb.init(project=project, name=out_dir.name, id=run_id, resume="allow", dir=str(out_dir),
                              mode=mode, config=config)

    def log(self, record: dict) -> None:
        values = {k: v for k, v in scalars(record).items() if math.isfinite(v)}
        self.run.log(values, step=record["step"])

    def close(self) -> None:
        self.run.finish()


def build_trackers(names: list[str], out_dir: Path, resumed_step: int, project: str,
                   config: dict) -> list[Tracker]:
    """The trackers `names` (train.loggers) lists besides jsonl, which MetricsWriter itself is."""
    out: list[Tracker] = []
    if "tensorboard" in names:
        out.append(TensorBoardTracker(out_dir / "tensorboard", resumed_step))
    if "wandb" in names:
        out.append(WandbTracker(out_dir, project, config))
    return out

