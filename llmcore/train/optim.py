"""Optimizer construction and learning-rate schedules (cosine, WSD, constant).

Used by the trainer; the schedule is a pure function of the step so a resumed run needs no
scheduler state beyond the step counter.
"""

from __future__ import annotations

import math

import torch

from llmcore.config.schema import OptimConfig, ScheduleConfig


def param_groups(named_params, weight_decay: float) -> list[dict]:
    """Decay matrices (embeddings included); never norms or other 1-D parameters, whose
    decay pulls gains toward 0 without regularising anything useful."""
    decay, no_decay = [], []
    for _, p in named_params:
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(named_params, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW over decay/no-decay groups. `foreach` keeps the update deterministic on CPU."""
    return torch.optim.AdamW(param_groups(named_params, cfg.weight_decay), lr=cfg.lr,
                             betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, foreach=True)


def lr_multiplier(step: int, max_steps: int, cfg: ScheduleConfig) -> float:
    """Factor on the peak learning rate for the update made at `step` (0-based).

    - warmup: linear from 1/warmup to 1 over `warmup_steps`;
    - cosine: then cosine from 1 to `min_lr_ratio` at max_steps;
    - wsd: then flat, and a linear anneal to `min_lr_ratio` over the last
      `anneal_fraction * max_steps` steps (the SAM paper's short final anneal);
    - constant: then flat.
    """
    warmup = min(cfg.warmup_steps, max_steps)
    if step < warmup:
        return (step + 1) / warmup
    floor = cfg.min_lr_ratio
    if cfg.kind == "constant":
        return 1.0
    if cfg.kind == "cosine":
        span = max(1, max_steps - warmup)
        progress = min(1.0, (step - warmup) / span)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.kind == "wsd":
        anneal = int(round(cfg.anneal_fraction * max_steps))
        start = max(warmup, max_steps - anneal)
        if step < start or anneal == 0:
            return 1.0
        progress = min(1.0, (step - start + 1) / max(1, max_steps - start))
        return 1.0 - (1.0 - floor) * progress
    raise ValueError(f"unknown schedule kind {cfg.kind!r}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
