"""The engine protocol: what the trainer and step-replacing recipes (SAM) may ask of a backend.

Implemented by `single.SingleEngine`, `ddp.DDPEngine` and `deepspeed.engine.DeepSpeedEngine`;
built by `build.build_engine`. The base owns only what every backend shares (rank facts, the
global gradient norm from local gradients, clipping, collectives); each backend implements the
forward/backward/step and state methods. Every method is called on every rank.
"""

from __future__ import annotations

import abc
import contextlib
from typing import Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

from llmcore.config.schema import Config
from llmcore.engine.train_module import TrainModule


class Engine(abc.ABC):
    """One training engine over one TrainModule; see the module docstring."""

    backend: str = "abstract"
    sharded_grads: bool = False
    """True when each rank holds only a shard of the gradients (ZeRO-2/3): no `no_sync`."""

    def __init__(self, module: TrainModule, cfg: Config, device: torch.device, rank: int = 0,
                 world_size: int = 1):
        self.cfg = cfg
        self.device = device
        self.rank, self.world_size = rank, world_size
        self.module = module
        self.wrapped: nn.Module = module

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- the step (backend-specific) ------------------------------------------------------
    @abc.abstractmethod
    def forward(self, batch: dict, loss_fn: Callable) -> dict:
        """The TrainModule's forward (loss terms) through whatever wraps it."""

    @abc.abstractmethod
    def backward(self, loss: torch.Tensor) -> None:
        """Backward of a loss already divided by the step's global token count."""

    @contextlib.contextmanager
    def no_sync(self):
        """Skip gradient synchronisation across ranks inside the block (a no-op unless overridden)."""
        yield

    @abc.abstractmethod
    def step(self) -> None:
        """The optimizer step, then zero the gradients."""

    @abc.abstractmethod
    def zero_grad(self) -> None: ...

    @abc.abstractmethod
    def set_lr(self, lr: float) -> None: ...

    @abc.abstractmethod
    def local_params(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, parameter) pairs this rank holds and updates; full tensors unless sharded."""

    # --- gradient norm and clipping (shared) ----------------------------------------------
    def _local_grads(self) -> tuple[list[torch.Tensor], bool]:
        """The gradient tensors this rank holds, and whether they are shards of one global
        gradient (then norms need a sum over ranks) rather than full copies."""
        return [p.grad for _, p in self.local_params() if p.grad is not None], self.grads_are_shards()

    def grads_are_shards(self) -> bool:
        """True when this rank's current gradients are shards of one global gradient (sum
        squared norms over ranks), False when they are whole per-rank gradients."""
        return self.sharded_grads

    def grad_norm(self) -> torch.Tensor:
        """Global L2 norm of the full gradient (fp32), over all parameters and ranks."""
        grads, sharded = self._local_grads()
        sq = torch.zeros((), dtype=torch.float32, device=self.device)
        for g in grads:
            sq += g.detach().float().pow(2).sum().to(self.device)
        if sharded:
            self.all_reduce_sum(sq)
        return sq.sqrt()

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """Clip to `max_norm` (0: measure only); returns the norm before clipping."""
        norm = self.grad_norm()
        if max_norm > 0:
            scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
            for g in self._local_grads()[0]:
                g.mul_(scale.to(device=g.device, dtype=g.dtype))
        return norm

    # --- frozen modules (shared) ----------------------------------------------------------
    def place_frozen(self, modules: dict[str, nn.Module], dtype: torch.dtype) -> dict[str, nn.Module]:
        """Frozen modules a recipe declared (a teacher, a reverse LM) on this rank's device in
        the run's dtype (`dtype`: bf16 when the run trains in bf16, else fp32), in eval mode,
        without gradients. Every backend replicates them: a whole copy on each rank, outside
        the optimizer, the checkpoint and ZeRO's partitioning -- under ZeRO-3 too, so they cost
        (their parameter count x dtype size) on every rank and no gather per forward."""
        placed = {}
        for name, module in modules.items():
            module = module.to(device=self.device, dtype=dtype)  # casts floating tensors only
            module.requires_grad_(False)
            placed[name] = module.eval()
        return placed

    # --- collectives (shared) -------------------------------------------------------------
    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    # --- state (backend-specific) ---------------------------------------------------------
    @abc.abstractmethod
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole TrainModule state on CPU (gathered from shards where needed). Complete on
        rank 0; sharded engines may return {} on other ranks. Every rank must call it."""

    @abc.abstractmethod
    def load_full_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True):
        """Load a whole TrainModule state (the same dict on every rank); returns missing and
        unexpected keys like nn.Module.load_state_dict. A collective on sharded engines."""

    @abc.abstractmethod
    def save_optimizer(self, ckpt_dir: str) -> None: ...

    @abc.abstractmethod
    def load_optimizer(self, ckpt_dir: str) -> None: ...

    def check_optimizer_files(self, ckpt_dir: str) -> None:
        """Raise CheckpointError, naming them, when this engine's optimizer files are missing
        (on every rank, before anything is read); engines whose load names a missing file
        itself need not override it."""
