"""TrainModule: the model plus recipe modules, whose forward returns the named loss terms.

Computing the loss inside the module's forward lets backends that shard or gather parameters
around forward (ZeRO-3) see every use of every weight, the output weight and aux heads too.
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn


class TrainModule(nn.Module):
    """The model plus recipe modules; forward returns the named (sum, count) loss terms."""

    def __init__(self, model: nn.Module, aux: dict[str, nn.Module] | None = None):
        super().__init__()
        self.model = model
        self.aux = nn.ModuleDict(aux or {})

    def forward(self, batch: dict, loss_fn: Callable) -> dict:
        hidden = self.model(batch["input_ids"], batch.get("doc_ids"))  # (B, T, d)
        return loss_fn(self, hidden, batch)
