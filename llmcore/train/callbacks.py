"""The trainer's own callbacks, written against the same `RunContext` recipes get.

- `BestTracker` (`train.keep_best_on`, `train.early_stop_patience`): after each evaluation,
  remembers whether the watched set's loss improved (the trainer then keeps that checkpoint as
  `out_dir/best`) and asks the run to stop after `patience` evaluations without improvement.
  Its state goes into every checkpoint, so a resumed run keeps counting.
"""

from __future__ import annotations

import math

from llmcore.recipe.context import RunContext
from llmcore.train.metrics import log


def eval_metric_key(set_name: str) -> str:
    """The metrics key of an evaluation set's loss: `val_loss` for the default set."""
    return "val_loss" if set_name == "val" else f"eval/{set_name}/loss"


class BestTracker:
    """Best loss so far on one evaluation set, and early stopping on it."""

    def __init__(self, set_name: str, patience: int = 0, min_delta: float = 0.0):
        self.key = eval_metric_key(set_name)
        self.set_name, self.patience, self.min_delta = set_name, patience, min_delta
        self.best = math.inf
        self.best_step = -1
        self.bad_evals = 0
        self.improved = False
        """True right after an evaluation that set a new best (the trainer keeps that checkpoint)."""

    def on_eval(self, ctx: RunContext, metrics: dict) -> None:
        loss = metrics.get(self.key)
        self.improved = loss is not None and loss < self.best - self.min_delta
        if loss is None:
            return
        if self.improved:
            self.best, self.best_step, self.bad_evals = float(loss), ctx.step, 0
            return
        self.bad_evals += 1
        if self.patience and self.bad_evals >= self.patience:
            reason = (f"early stop: {self.key} has not improved on {self.best:.4f} (step {self.best_step}) "
                      f"for {self.bad_evals} evaluations")
            if ctx.is_main:
                log.info(reason)
            ctx.request_stop(reason)

    def state_dict(self) -> dict:
        return {"set": self.set_name, "best": self.best if math.isfinite(self.best) else None,
                "best_step": self.best_step, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict) -> None:
        if state.get("set") != self.set_name:
            return  # another set is watched now: start afresh
        self.best = math.inf if state.get("best") is None else float(state["best"])
        self.best_step, self.bad_evals = int(state["best_step"]), int(state["bad_evals"])
