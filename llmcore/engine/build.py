"""build_engine: the engine named by `engine.backend`, with the process group it needs."""

from __future__ import annotations

import torch

from llmcore.config.schema import Config
from llmcore.engine.base import Engine
from llmcore.engine.distributed import init_distributed, pick_device
from llmcore.engine.train_module import TrainModule
from llmcore.errors import ConfigError


def build_engine(module: TrainModule, cfg: Config) -> Engine:
    """Create the engine named by `cfg.engine.backend`, starting the process group if needed."""
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    rank, local_rank, world = init_distributed(device_type, required=cfg.engine.backend == "ddp")
    device = pick_device(local_rank)
    backend = cfg.engine.backend
    if backend == "single":
        if world > 1:
            raise ConfigError(f"engine.backend=single but WORLD_SIZE={world}: use engine.backend=ddp or deepspeed")
        from llmcore.engine.single import SingleEngine
        return SingleEngine(module, cfg, device)
    if backend == "ddp":
        from llmcore.engine.ddp import DDPEngine
        return DDPEngine(module, cfg, device, rank, world)
    from llmcore.engine.deepspeed.engine import DeepSpeedEngine  # deepspeed is heavy: import on demand
    return DeepSpeedEngine(module, cfg, device, rank, world)
