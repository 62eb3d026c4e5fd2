"""The typed contexts recipe hooks receive: what a recipe may see and touch, and nothing more.

Built by the trainer for each hook call; recipes import them (through `recipes.base`) to type
their hooks. Renaming an internal of the trainer breaks no recipe as long as these stay.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from llmcore.engine.base import Engine
from llmcore.model.transformer import Transformer


@dataclass
class LossContext:
    """What a recipe's `loss` hook sees for one micro-batch."""

    hidden: torch.Tensor  # (B, T, d) final hidden states
    batch: dict  # input_ids, labels, doc_ids (B, T) and anything a transform added
    output_weight: torch.Tensor  # (V, d) shared unembedding
    model: Transformer
    modules: Any  # nn.ModuleDict of recipe modules, by recipe name
    step: int
    ignore_ids: torch.Tensor | None


@dataclass
class StepContext:
    """What a recipe's `optimizer_step` hook sees. `finish_step()` is the default ending:
    clip the gradient, take the optimizer step (skipped if the norm is not finite)."""

    engine: Engine
    step: int
    grad_clip: float
    metrics: dict = field(default_factory=dict)

    def finish_step(self) -> None:
        norm = self.engine.clip_grad_norm(self.grad_clip)
        self.metrics["grad_norm"] = float(norm)
        if torch.isfinite(norm):
            self.engine.step()
        else:
            self.metrics["skipped_nonfinite"] = 1
            self.engine.zero_grad()
