"""Process entry point of the multi-process tests: `torchrun ... driver.py key=value ...`.

Registers two test-only recipes in this process (a recipe registered in the pytest process
would not exist in the torchrun workers; the tests use the same classes in-process through
`temporary_recipe`), then runs `llmcore train` with the given dotted
overrides exactly as a user would. Rank 0 writes the trainer's result to `$MP_RESULT` (JSON)
when that variable is set; a bad checkpoint or config exits with status 2 and a one-line
`llmcore: error: ...` message, as the CLI does.

- `mp_stop_at` sends this process SIGTERM (or `signum`) after step `step`, as slurm would.
- `mp_sam` is SAM written only against the Engine interface (closure, grad_norm, local_params,
  zero_grad, finish_step), so the same test runs on every engine: in its global-m form it must
  give single-process numbers through sharded parameter/gradient access.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from llmcore.recipe.registry import register_recipe
from recipes.base import Recipe


class StopAt(Recipe):
    @dataclass
    class Config:
        step: int = 3
        signum: int = int(signal.SIGTERM)

    def on_step_end(self, ctx, metrics):
        if ctx.step == self.config.step:
            os.kill(os.getpid(), self.config.signum)


class Sam(Recipe):
    """e = rho * g / ||g||; w += e; second pass; restore w exactly from a saved copy; clip and
    step. `per_device`: the ascent gradient is each rank's own (pass 1 under `no_sync`, the
    norm local), as DDP and ZeRO-1 allow; otherwise the reduced global-batch gradient."""

    @dataclass
    class Config:
        rho: float = 0.05
        per_device: bool = False

    def optimizer_step(self, ctx, closure):
        engine = ctx.engine
        stats = closure(no_sync=self.config.per_device)
        norm = engine.grad_norm()
        ctx.metrics["sam_ascent_norm"] = float(norm)
        if torch.isfinite(norm):
            scale = self.config.rho / (float(norm) + 1e-12)
            shards = list(engine.local_params())
            saved = []
            with torch.no_grad():
                for _, p in shards:
                    saved.append(p.detach().clone())
                    if p.grad is not None:
                        p.add_(p.grad.to(p.dtype), alpha=scale)
            engine.zero_grad()
            closure()
            with torch.no_grad():
                for (_, p), s in zip(shards, saved):
                    p.copy_(s)
        ctx.finish_step()
        return stats


TEST_RECIPES = {"mp_stop_at": StopAt, "mp_sam": Sam}


def main(argv: list[str]) -> int:
    for name, cls in TEST_RECIPES.items():  # here, not at import: pytest imports this module too
        register_recipe(name)(cls)
    torch.set_num_threads(1)  # as the pytest process: same float reduction order, 2 shared cores
    from llmcore.config.load import load_run_config
    from llmcore.errors import LlmcoreError
    from llmcore.train.loop import Trainer

    try:
        result = Trainer(load_run_config(None, argv)).fit()
    except LlmcoreError as e:
        print(f"llmcore: error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    path = os.environ.get("MP_RESULT")
    if path and int(os.environ.get("RANK", "0")) == 0:
        with open(path, "w") as f:
            json.dump({k: v for k, v in result.items() if not isinstance(v, dict)}, f, default=float)
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    # torch 2.13 + gloo: a worker thread may still be freeing the last collective's tensors
    # when the interpreter finalizes; it then needs the GIL and aborts the process
    # ("terminate called without an active exception"), which torchrun reports as a failure.
    # Nothing is left to clean up, so leave without finalizing.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
