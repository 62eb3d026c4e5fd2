"""alpha and temperature over training: constant, linear, or following the LR schedule.

Used by the `distill` recipe. `value(step)` goes from `start` to `end`:
- constant: `start` at every step;
- linear: start + (end - start) x step / max_steps;
- lr: end + (start - end) x m(step), with m the run's LR multiplier (`llmcore.train.optim.
  lr_multiplier`, 1 at the peak): the value follows the learning rate -- `start` at the peak
  LR, towards `end` as the LR decays (and during warm-up it rises from `end`).
"""

from __future__ import annotations

from llmcore.errors import ConfigError
from llmcore.train.optim import lr_multiplier

KINDS = ("constant", "linear", "lr")


def check(kind: str, key: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"{key}={kind!r} is not one of {', '.join(KINDS)}")


def value(kind: str, start: float, end: float | None, step: int, max_steps: int, schedule_cfg) -> float:
    if kind == "constant" or end is None:
        return float(start)
    if kind == "linear":
        return float(start + (end - start) * min(1.0, step / max(1, max_steps)))
    return float(end + (start - end) * lr_multiplier(step, max_steps, schedule_cfg))
