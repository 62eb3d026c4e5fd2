"""`probe`: a trivial recipe that touches every hook and counts the calls.

It exists so tests can prove that llmcore calls each hook (tokenizer, loader, loss, step,
decoding, callbacks) without any real method in the way; no paper behind it. It also takes over the
optimizer step, doing exactly the default step. With `loss_weight: 0` training is bit-identical to the baseline.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn as nn

from llmcore.data import Sample
from recipes.base import Recipe, register


@register("probe")
class Probe(Recipe):
    """Counts hook calls in `self.calls`; optionally adds a small auxiliary loss."""

    TOKEN = "<probe>"
    testing_only = True  # its token is reserved only in test tokenizers

    @dataclass
    class Config:
        loss_weight: float = 0.0
        """Weight of the aux term mean(aux(h)^2); 0 keeps training identical to the baseline."""
        ignore_probe: bool = True
        """Exclude `<probe>` targets from the next-token loss."""

    def __init__(self, config=None):
        super().__init__(config or self.Config())
        self.calls: Counter = Counter()
        self.token_id = None

    @classmethod
    def declared_special_tokens(cls) -> list[str]:
        return [cls.TOKEN]

    def bind(self, tokenizer) -> None:
        self.calls["bind"] += 1
        self.token_id = tokenizer.token_id(self.TOKEN)

    def transform(self, sample: Sample, rng) -> Sample:
        self.calls["transform"] += 1
        return sample

    def ignore_ids(self) -> list[int]:
        return [self.token_id] if self.config.ignore_probe and self.token_id is not None else []

    def modules(self, model_args) -> nn.Module:
        self.calls["modules"] += 1
        return nn.Linear(model_args.d_model, 1, bias=False)

    def loss(self, ctx) -> dict:
        self.calls["loss"] += 1
        z = ctx.modules[self.name](ctx.hidden).float()  # (B, T, 1)
        return {"aux": (self.config.loss_weight * z.pow(2).sum(), z.numel())}

    def optimizer_step(self, ctx, closure) -> dict:
        self.calls["optimizer_step"] += 1
        stats = closure()
        ctx.finish_step()
        return stats

    def logits_processors(self):
        def ban_probe(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
            self.calls["logits_processor"] += 1
            logits[..., self.token_id] = float("-inf")
            return logits
        return [ban_probe]

    def prepare_prompt(self, ids: list[int]) -> list[int]:
        self.calls["prepare_prompt"] += 1
        return ids

    def on_train_start(self, **kw):
        self.calls["on_train_start"] += 1

    def on_step_end(self, **kw):
        self.calls["on_step_end"] += 1

    def on_eval(self, **kw):
        self.calls["on_eval"] += 1

    def on_train_end(self, **kw):
        self.calls["on_train_end"] += 1
