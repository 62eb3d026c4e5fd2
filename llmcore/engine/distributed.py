"""Process-group start-up and device choice for torchrun / slurm launches."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


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
