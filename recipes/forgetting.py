"""The forgetting harness of the SAM pretraining paper (Watts, Li, Goyal et al. 2026) and the
sensitivity diagnostic of catastrophic overtraining (arXiv 2503.19206).

What it measures on a checkpoint:
- fine-tuning forgetting: fine-tune on a second domain B at a sweep of learning rates, track
  the first domain A's validation loss along the way (the `forgetting` recipe below does it at
  every evaluation), and report the frontier: for each fine-tune loss on B, the lowest
  pretraining loss on A any run kept (`frontier`, `pretrain_loss_at`);
- quantization: 4-bit round-to-nearest (RTN) weight quantization, symmetric, per group of
  `group_size` consecutive input weights of each output row (group_size=0: one scale per
  output channel). scale = max|w| / 7 over the group, q = clamp(round_half_even(w / scale),
  -8, 7), w' = q * scale (so q uses -7..7);
- Gaussian weight noise: `llmcore.eval.perturb.noised` (explicit law, seeded, exact restore)
  and `llmcore.eval.sensitivity.loss_increase`, the diagnostic shared with `llmcore sensitivity`.
Quantization covers the same tensors as the noise (`llmcore.eval.perturb.target_weights`: the
2-D weight matrices of the transformer blocks; embeddings / unembedding join with
`include_embeddings=True`; norm gains never) and is undone the same way, by copying back a
saved copy (bitwise), never by inverting the edit.

Used by `benchmarks/experiments/sam_forgetting.py`; from Python: `quantized(model)`,
`finetune_sweep(...)` (or, inside a larger pipeline, `finetune_stage(...)` and
`forgetting_runs(rows)`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import yaml

from llmcore.config.batch import resolve_micro_batch_size
from llmcore.config.schema import TrainConfig
from llmcore.errors import ConfigError
from llmcore.eval.perturb import edited_weights
from llmcore.pipeline.spec import Pipeline, Stage, Sweep
from recipes.base import Recipe, register

# --- 4-bit weights (the edit and its exact restore: llmcore.eval.perturb) -----------------------


def quantize_rtn(w: torch.Tensor, bits: int = 4, group_size: int = 128) -> torch.Tensor:
    """Symmetric round-to-nearest fake quantization of w [rows, cols] -> dequantized [rows, cols].

    Groups are `group_size` consecutive entries of a row (the last group may be shorter:
    zero padding never changes a max); group_size=0 or >= cols: one scale per row."""
    if w.ndim != 2:
        raise ValueError(f"quantize_rtn: expected a 2-D weight, got shape {tuple(w.shape)}")
    if bits < 2:
        raise ValueError(f"quantize_rtn: bits={bits} leaves no symmetric grid (need >= 2)")
    rows, cols = w.shape
    gs = cols if group_size <= 0 else min(group_size, cols)
    pad = (-cols) % gs
    x = torch.nn.functional.pad(w.float(), (0, pad)).reshape(rows, -1, gs)  # (rows, groups, gs)
    qmax = 2 ** (bits - 1) - 1
    scale = x.abs().amax(dim=-1, keepdim=True) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group stays 0
    q = torch.clamp(torch.round(x / scale), -qmax - 1, qmax)
    return (q * scale).reshape(rows, -1)[:, :cols].to(w.dtype)


def quantized(model: nn.Module, bits: int = 4, group_size: int = 128, include_embeddings: bool = False):
    """Context manager: the model's target weights RTN-quantized (see `quantize_rtn`)."""
    return edited_weights(model, lambda i, name, w: quantize_rtn(w, bits, group_size), include_embeddings)


# --- fine-tuning forgetting -----------------------------------------------------------------

@register("forgetting")
class ForgettingTracker(Recipe):
    """Adds the first domain's validation loss to every evaluation of a fine-tuning run:
    `recipes: [forgetting]`, `forgetting: {val_path: <domain-A data folder>}`. Logged as
    `forgetting/val_loss_a` beside the run's own `val_loss` (domain B). Reads the model's full
    weights, so it serves engines that keep them on every rank (single, ddp, ZeRO-1/2)."""

    @dataclass
    class Config:
        val_path: str = ""
        """Prepared data folder whose `val` split is the pretraining domain."""
        eval_batches: int = 8
        """Batches of train.micro_batch_size windows of data.seq_len tokens."""

    def __init__(self, config=None):
        super().__init__(config or self.Config())
        if not self.config.val_path:
            raise ConfigError("forgetting.val_path is empty: give the pretraining domain's prepared data folder")

    def on_eval(self, ctx, metrics) -> dict:
        # through the run's own evaluation loop: the same windows and batching as val_loss
        out = ctx.eval_loss(self.config.val_path, self.config.eval_batches)
        return {"forgetting/val_loss_a": out["loss"]}


def finetune_stage(name: str, data_b: str, val_a: str, lrs: list[float], steps: int, eval_every: int,
                   init_from: str = "", overrides: list[str] = (), eval_batches: int = 8) -> Stage:
    """The fine-tune half of the harness as one pipeline stage: fine-tune on prepared folder
    `data_b` once per learning rate (a sweep over optim.lr) with the tracker scoring `val_a`
    at every evaluation, so a pretraining stage `init_from` and its forgetting sweep are one
    pipeline. `overrides` come last (model, batch size, schedule, ...)."""
    return Stage(name=name, init_from=init_from, sweep=Sweep("optim.lr", list(lrs)), overrides=[
        f"data.path={data_b}", f"train.max_steps={steps}", f"train.eval_every={eval_every}",
        f"train.eval_batches={eval_batches}", "train.progress=false", "train.keep_last=1",
        "recipes=[forgetting]", f"forgetting.val_path={val_a}", f"forgetting.eval_batches={eval_batches}",
        *overrides])


def forgetting_runs(rows: list[dict]) -> list[dict]:
    """{"lr", "points": [(step, fine-tune val loss on B, pretraining val loss on A)]} per
    pipeline row of a `finetune_stage`; step 0 is the checkpoint the run started from, scored
    once per checkpoint with the run's own eval settings (windows, batches, folders)."""
    starts: dict[str, tuple[float, float]] = {}
    out = []
    for row in rows:
        cfg = yaml.safe_load((Path(row["checkpoint"]) / "config.yaml").read_text())
        init = cfg["train"]["init_from"]
        if init not in starts:
            starts[init] = _start_point(init, cfg)
        points = [(0, *starts[init])]
        points += [(r["step"], r["val_loss"], r["forgetting/val_loss_a"]) for r in _eval_rows(Path(row["out_dir"]))]
        out.append({"lr": row["params"]["optim.lr"], "points": points})
    return out


def finetune_sweep(checkpoint: str, data_b: str, val_a: str, lrs: list[float], steps: int, out_dir: str,
                   eval_every: int, overrides: list[str] = (), eval_batches: int = 8) -> list[dict]:
    """Fine-tune `checkpoint` on prepared folder `data_b` once per learning rate, each run in
    `<out_dir>/optim.lr=<lr>` (a one-stage pipeline: a rerun skips finished runs).

    The model, seq_len and tokenizer come from the checkpoint (`llmcore.train.finetune.
    from_checkpoint`); `overrides` are more dotted keys (batch size, schedule, ...). Returns
    `forgetting_runs` of the sweep."""
    from llmcore.pipeline.run import run_pipeline  # the trainer: only when a sweep runs
    from llmcore.train.finetune import from_checkpoint

    stage = finetune_stage("finetune", data_b, val_a, lrs, steps, eval_every,
                           overrides=[*from_checkpoint(checkpoint), *overrides],
                           eval_batches=eval_batches)
    stage.out_dir = "."
    return forgetting_runs(run_pipeline(Pipeline(out_dir=out_dir, stages=[stage]), print_summary=False))


def _start_point(init: str, cfg: dict) -> tuple[float, float]:
    """(B loss, A loss) of checkpoint `init`, on the windows the run's evaluations score."""
    from llmcore import load
    from llmcore.eval.loss import validation_loss

    model, _ = load(init)
    t = cfg["train"]
    # the batch the run's own (single-process) evaluations used; `auto` resolved as it was
    batch = resolve_micro_batch_size(t["micro_batch_size"], t["global_batch_size"],
                                     t.get("max_micro_batch_size", TrainConfig.max_micro_batch_size), 1)
    seq_len = cfg["data"]["seq_len"]
    b = validation_loss(model, cfg["data"]["val_path"] or cfg["data"]["path"], seq_len, batch,
                        cfg["train"]["eval_batches"])["loss"]
    a = validation_loss(model, cfg["forgetting"]["val_path"], seq_len, batch, cfg["forgetting"]["eval_batches"])
    return b, a["loss"]


def _eval_rows(out_dir: Path) -> list[dict]:
    """The run's evaluations by step; a step evaluated twice (a resumed run repeats the steps
    after its last checkpoint) keeps its last record."""
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line]
    by_step = {r["step"]: r for r in rows if "forgetting/val_loss_a" in r}
    return [by_step[s] for s in sorted(by_step)]


def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Lower-left envelope of (fine-tune loss, pretraining loss) points, by fine-tune loss: a
    point stays if no point with a lower-or-equal fine-tune loss has a lower pretraining loss."""
    out: list[tuple[float, float]] = []
    for b, a in sorted(points):
        if not out or a < out[-1][1]:
            out.append((b, a))
    return out


def pretrain_loss_at(front: list[tuple[float, float]], finetune_loss: float) -> float:
    """Pretraining loss on the frontier at a given fine-tune loss (linear between frontier
    points); NaN when no run reached that fine-tune loss."""
    if not front or finetune_loss < front[0][0]:
        return math.nan
    for (b0, a0), (b1, a1) in zip(front, front[1:]):
        if b0 <= finetune_loss <= b1:
            return a0 + (a1 - a0) * (finetune_loss - b0) / (b1 - b0)
    return front[-1][1]  # past the highest fine-tune loss: the best pretraining loss of all
