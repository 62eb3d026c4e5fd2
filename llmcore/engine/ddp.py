"""torchrun data parallelism: gloo on CPU, nccl on GPU; gradients averaged by DDP."""

from __future__ import annotations

import contextlib

import torch

from llmcore.config.schema import Config
from llmcore.engine.single import SingleEngine
from llmcore.engine.train_module import TrainModule


class DDPEngine(SingleEngine):
    """Every rank holds the whole module and optimizer; DDP all-reduces gradients in backward."""

    backend = "ddp"

    def __init__(self, module: TrainModule, cfg: Config, device: torch.device, rank: int, world_size: int):
        super().__init__(module, cfg, device, rank, world_size)
        from torch.nn.parallel import DistributedDataParallel
        ids = [device.index] if device.type == "cuda" else None
        self.wrapped = DistributedDataParallel(self.module, device_ids=ids)

    def backward(self, loss: torch.Tensor) -> None:
        # DDP averages over ranks; our loss is already divided by the GLOBAL token count, so
        # undo the average to keep the sum the trainer asked for.
        (loss * self.world_size).backward()

    @contextlib.contextmanager
    def no_sync(self):
        with self.wrapped.no_sync():
            yield
