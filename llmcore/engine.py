"""One training-engine interface over three backends: `single`, `ddp` (torchrun) and `deepspeed`.

The trainer and step-replacing recipes (SAM) talk only to `Engine`: forward, backward, step,
`no_sync`, global gradient norm, local parameter shards, collectives, and state save/load.
`TrainModule` bundles the model with recipe aux modules and computes the loss terms inside its
forward, so backends that shard or gather parameters around forward (ZeRO-3) see every use.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

from llmcore.config import Config
from llmcore.errors import ConfigError
from llmcore.optim import build_optimizer


class TrainModule(nn.Module):
    """The model plus recipe modules; forward returns the named (sum, count) loss terms."""

    def __init__(self, model: nn.Module, aux: dict[str, nn.Module] | None = None):
        super().__init__()
        self.model = model
        self.aux = nn.ModuleDict(aux or {})

    def forward(self, batch: dict, loss_fn: Callable) -> dict:
        hidden = self.model(batch["input_ids"], batch.get("doc_ids"))  # (B, T, d)
        return loss_fn(self, hidden, batch)


def init_distributed(device_type: str, required: bool = False) -> tuple[int, int, int]:
    """Start the process group when launched by torchrun/slurm (or when the backend needs one
    even for a single process, as DDP does); return (rank, local_rank, world)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if (world > 1 or required) and not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", rank=rank, world_size=world)
    return rank, local_rank, world


def pick_device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


class Engine:
    """Single-process engine; `DDPEngine` and the DeepSpeed engine override what differs."""

    backend = "single"
    sharded_grads = False
    """True when each rank holds only a shard of the gradients (ZeRO-2/3): no `no_sync`."""

    def __init__(self, module: TrainModule, cfg: Config, device: torch.device, rank: int = 0, world_size: int = 1):
        self.cfg = cfg
        self.device = device
        self.rank, self.world_size = rank, world_size
        self.module = module.to(device)
        self.wrapped: nn.Module = self.module
        self.optimizer = build_optimizer(self.module.named_parameters(), cfg.optim)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- the step -------------------------------------------------------------------------
    def forward(self, batch: dict, loss_fn: Callable) -> dict:
        return self.wrapped(batch, loss_fn)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    @contextlib.contextmanager
    def no_sync(self):
        """Skip gradient synchronisation across ranks inside the block (a no-op here)."""
        yield

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

    def step(self) -> None:
        self.optimizer.step()
        self.zero_grad()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def local_params(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) pairs this rank holds and updates; full tensors unless sharded."""
        return ((n, p) for n, p in self.module.named_parameters() if p.requires_grad)

    # --- collectives ------------------------------------------------------------------------
    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    # --- state ----------------------------------------------------------------------------
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole TrainModule state on CPU (gathered from shards where needed). Complete on
        rank 0; sharded engines may return {} on other ranks. Every rank must call it."""
        return {k: v.detach().cpu() for k, v in self.module.state_dict().items()}

    def load_full_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True):
        """Load a whole TrainModule state (the same dict on every rank); returns missing and
        unexpected keys like nn.Module.load_state_dict. Sharded engines write their shards and
        fp32 master copies (a collective: every rank calls it)."""
        return self.module.load_state_dict(state, strict=strict)

    def save_optimizer(self, ckpt_dir: str) -> None:
        if self.is_main:
            torch.save(self.optimizer.state_dict(), os.path.join(ckpt_dir, "optimizer.pt"))

    def load_optimizer(self, ckpt_dir: str) -> None:
        path = os.path.join(ckpt_dir, "optimizer.pt")
        self.optimizer.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))


class DDPEngine(Engine):
    """torchrun data parallelism: gloo on CPU, nccl on GPU; gradients averaged by DDP."""

    backend = "ddp"

    def __init__(self, module: TrainModule, cfg: Config, device, rank: int, world_size: int):
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


def build_engine(module: TrainModule, cfg: Config) -> Engine:
    """Create the engine named by `cfg.engine.backend`, starting the process group if needed."""
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    rank, local_rank, world = init_distributed(device_type, required=cfg.engine.backend == "ddp")
    device = pick_device(local_rank)
    backend = cfg.engine.backend
    if backend == "single":
        if world > 1:
            raise ConfigError(f"engine.backend=single but WORLD_SIZE={world}: use engine.backend=ddp or deepspeed")
        return Engine(module, cfg, device)
    if backend == "ddp":
        return DDPEngine(module, cfg, device, rank, world)
    from llmcore.engine_deepspeed import DeepSpeedEngine  # deepspeed is heavy: import on demand
    return DeepSpeedEngine(module, cfg, device, rank, world)
