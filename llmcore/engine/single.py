"""The single-process engine: the module on one device, our AdamW, nothing to synchronise.

`DDPEngine` builds on it (same optimizer and state handling, DDP around the module).
"""

from __future__ import annotations

import os
from typing import Callable, Iterator

import torch
import torch.nn as nn

from llmcore.config.schema import Config
from llmcore.engine.base import Engine
from llmcore.engine.train_module import TrainModule
from llmcore.errors import CheckpointError
from llmcore.train.optim import build_optimizer


class SingleEngine(Engine):
    """One process, one device."""

    backend = "single"

    def __init__(self, module: TrainModule, cfg: Config, device: torch.device, rank: int = 0,
                 world_size: int = 1):
        super().__init__(module.to(device), cfg, device, rank, world_size)
        self.optimizer = build_optimizer(self.module.named_parameters(), cfg.optim)

    def forward(self, batch: dict, loss_fn: Callable) -> dict:
        return self.wrapped(batch, loss_fn)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        self.optimizer.step()
        self.zero_grad()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def local_params(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.module.named_parameters() if p.requires_grad)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.module.state_dict().items()}

    def load_full_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True):
        return self.module.load_state_dict(state, strict=strict)

    def save_optimizer(self, ckpt_dir: str) -> None:
        if self.is_main:
            torch.save(self.optimizer.state_dict(), os.path.join(ckpt_dir, "optimizer.pt"))

    def load_optimizer(self, ckpt_dir: str) -> None:
        path = os.path.join(ckpt_dir, "optimizer.pt")
        try:  # weights only: an optimizer state is tensors and numbers, and nothing else is unpickled
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{path} is not a tensors-only optimizer state and was not unpickled "
                                  f"(missing, truncated or modified): {str(e).splitlines()[0]}") from None
        self.optimizer.load_state_dict(state)
