"""The typed contexts recipe hooks receive: what a recipe may see and touch, and nothing more.

Built by the trainer for each hook call; recipes import them (through `recipes.base`) to type
their hooks. A recipe never receives the Trainer or the Engine itself: renaming an internal of
either breaks no recipe as long as these stay.

- `RunContext`: the run (config, tokenizer, model args, device, rank/world, an `EngineView`,
  the placed frozen modules), the current step, `request_stop`, and `eval_loss` through the
  run's one evaluation loop. Callbacks get it.
- `LossContext`: one micro-batch's hidden states and batch, for the `loss` hook.
- `StepContext`: one optimizer step, for the `optimizer_step` hook.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.nn as nn

from llmcore.config.schema import Config
from llmcore.engine.base import Engine
from llmcore.model.args import ModelArgs
from llmcore.model.transformer import Transformer
from llmcore.tokenizer import Tokenizer


class EngineView:
    """The engine as a recipe sees it: facts about the processes, the collectives, and the
    parameter and gradient access a step-replacing recipe (SAM) needs. Nothing here saves,
    loads, rebuilds or steps: those stay with the trainer."""

    def __init__(self, engine: Engine):
        self._engine = engine

    @property
    def backend(self) -> str:
        return self._engine.backend

    @property
    def device(self) -> torch.device:
        return self._engine.device

    @property
    def rank(self) -> int:
        return self._engine.rank

    @property
    def world_size(self) -> int:
        return self._engine.world_size

    @property
    def is_main(self) -> bool:
        return self._engine.is_main

    @property
    def sharded_grads(self) -> bool:
        """True when each rank holds only a shard of the gradients (ZeRO-2/3): no `no_sync`."""
        return self._engine.sharded_grads

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return self._engine.all_reduce_sum(t)

    def barrier(self) -> None:
        self._engine.barrier()

    def no_sync(self) -> contextlib.AbstractContextManager:
        return self._engine.no_sync()

    def local_params(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) this rank holds and updates, `.grad` set; edit in place between passes."""
        return self._engine.local_params()

    def grads_are_shards(self) -> bool:
        return self._engine.grads_are_shards()

    def grad_norm(self) -> torch.Tensor:
        return self._engine.grad_norm()

    def zero_grad(self) -> None:
        self._engine.zero_grad()


@dataclass
class RunState:
    """What changes during a run and callbacks may read or ask for (owned by the trainer)."""

    step: int = 0
    stop_reason: str | None = None


class RunContext:
    """The run as every callback sees it (see the module docstring)."""

    def __init__(self, *, config: Config, tokenizer: Tokenizer, model_args: ModelArgs, engine: EngineView,
                 frozen: Mapping[str, nn.Module], state: RunState,
                 eval_loss: Callable[[str, int | None], dict]):
        self.config = config
        self.tokenizer = tokenizer
        self.model_args = model_args
        self.engine = engine
        self.frozen = frozen
        """Frozen modules the recipes declared, by name: on the run's device and dtype, eval mode."""
        self._state = state
        self._eval_loss = eval_loss

    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def rank(self) -> int:
        return self.engine.rank

    @property
    def world_size(self) -> int:
        return self.engine.world_size

    @property
    def is_main(self) -> bool:
        return self.engine.is_main

    @property
    def out_dir(self) -> Path:
        return Path(self.config.train.out_dir)

    @property
    def step(self) -> int:
        """Optimizer steps completed so far."""
        return self._state.step

    def request_stop(self, reason: str) -> None:
        """End training after this step: checkpoint, final evaluation, `on_train_end`, as at
        `max_steps`. Any rank may ask; every rank stops on the same step."""
        self._state.stop_reason = self._state.stop_reason or reason

    def eval_loss(self, path: str, max_batches: int | None = None) -> dict:
        """{"loss", "ppl", "tokens"} of the current model on another prepared folder's `val`
        split (or an SFT jsonl), through the run's evaluation loop: same transforms, same
        batching, every rank sharing the batches. A collective: call it on every rank."""
        return self._eval_loss(path, max_batches)


@dataclass
class LossContext:
    """What a recipe's `loss` hook sees for one micro-batch."""

    hidden: torch.Tensor  # (B, T, d) final hidden states
    batch: dict  # input_ids, labels, doc_ids (B, T), n_loss_tokens, and every extra field
    output_weight: torch.Tensor  # (V, d) shared unembedding
    model: Transformer
    modules: Any  # nn.ModuleDict of recipe modules, by recipe name
    step: int
    ignore_ids: torch.Tensor | None
    frozen: Mapping[str, nn.Module] = field(default_factory=dict)
    """The placed frozen modules, by the names their recipes gave them."""


class StepContext:
    """What a recipe's `optimizer_step` hook sees. `finish_step()` is the default ending:
    clip the gradient, take the optimizer step (skipped if the norm is not finite)."""

    def __init__(self, engine: Engine, step: int, grad_clip: float, metrics: dict | None = None):
        self._engine = engine
        self.engine = EngineView(engine)
        self.step = step
        self.grad_clip = grad_clip
        self.metrics: dict = {} if metrics is None else metrics

    def finish_step(self) -> None:
        norm = self._engine.clip_grad_norm(self.grad_clip)
        self.metrics["grad_norm"] = float(norm)
        if torch.isfinite(norm):
            self._engine.step()
        else:
            self.metrics["skipped_nonfinite"] = 1
            self._engine.zero_grad()
