"""How a run's global batch splits into micro-batches on each process: the one owner of the
batch divisibility rule.

Used by the trainer (its accumulation steps), the DeepSpeed config and anything that evaluates
in a run's micro-batches. `train.micro_batch_size: auto` (the default) follows the world size,
so a config that runs on one process runs unchanged under `torchrun --nproc_per_node N`; an
explicit size is kept and checked as it always was.
"""

from __future__ import annotations

from llmcore.errors import ConfigError

AUTO = "auto"


def resolve_micro_batch_size(micro: int | str, global_batch: int, max_micro: int, world_size: int) -> int:
    """Sequences per forward pass on one process.

    `micro` = "auto": the largest divisor of `global_batch / world_size` that is at most
    `max_micro` (`train.max_micro_batch_size`: what fits in memory), so the accumulation steps
    are as few as memory allows. An integer is returned as given, after checking that
    `global_batch` is a multiple of `micro x world_size`. ConfigError naming the keys otherwise."""
    if micro == AUTO:
        if global_batch % world_size:
            raise ConfigError(f"train.global_batch_size={global_batch} is not a multiple of the world size "
                              f"{world_size} (train.micro_batch_size=auto splits it evenly over the processes)")
        per_rank = global_batch // world_size
        return next(d for d in range(min(max_micro, per_rank), 0, -1) if per_rank % d == 0)
    if not isinstance(micro, int) or isinstance(micro, bool) or micro <= 0:
        raise ConfigError(f"train.micro_batch_size must be a positive integer or {AUTO!r}, got {micro!r}")
    if global_batch % (micro * world_size):
        split = (f"train.micro_batch_size={micro}" if world_size == 1 else
                 f"micro_batch_size x world size = {micro} x {world_size}")
        raise ConfigError(f"train.global_batch_size={global_batch} is not a multiple of {split}")
    return micro
