"""The maths of one optimizer step, in one place: loss terms, the closure, the term reduction.

Used by the trainer's loop. One step = draw all micro-batches, count the step's loss tokens
over every micro-batch and rank, then run the closure (forward/backward of every micro-batch,
each term's sum divided once by that global count), then the default ending (`StepContext.
finish_step`: clip, optimizer step) or a recipe's `optimizer_step`. The next-token term `ntp`
is llmcore's unless one recipe replaces it (`replaces_ntp`) or scales it (`ntp_weight`);
`train.ntp_weight=0` turns it off (its kernel is then not even called).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

from llmcore.engine.base import Engine
from llmcore.engine.train_module import TrainModule
from llmcore.recipe.context import LossContext
from llmcore.recipe.recipe_set import NTP, RecipeSet
from llmcore.train.losses import combine, count_loss_tokens, ntp_loss


class StepMaths:
    """Builds a step's loss function and closure for one run's engine and recipes."""

    def __init__(self, engine: Engine, recipes: RecipeSet, *, ignore_ids: torch.Tensor | None, z_loss: float,
                 ntp_weight: float, frozen: dict, autocast: Callable[[], contextlib.AbstractContextManager]):
        self.engine, self.recipes = engine, recipes
        self.ignore_ids, self.z_loss, self.ntp_weight = ignore_ids, z_loss, ntp_weight
        self.frozen, self.autocast = frozen, autocast

    def to_device(self, batch: dict) -> dict:
        """The micro-batch on the engine's device, with its count of next-token loss targets."""
        device = self.engine.device
        out = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
        out["n_loss_tokens"] = count_loss_tokens(out["labels"], self.ignore_ids)
        return out

    def loss_fn(self, step: int) -> Callable[[TrainModule, torch.Tensor, dict], dict]:
        """fn(module, hidden, batch) -> {name: (sum, count)} for the micro-batches of `step`."""
        weight = self.ntp_weight * self.recipes.ntp_weight(step)
        own_ntp = weight != 0 and not self.recipes.replaces_ntp

        def fn(module: TrainModule, hidden: torch.Tensor, batch: dict) -> dict:
            out_w = module.model.output_weight
            terms = {}
            if own_ntp:
                ce = ntp_loss(hidden, out_w, batch["labels"], self.ignore_ids, self.z_loss)
                terms[NTP] = (ce if weight == 1 else weight * ce, batch["n_loss_tokens"])
            if self.recipes:
                ctx = LossContext(hidden, batch, out_w, module.model, module.aux, step, self.ignore_ids,
                                  self.frozen)
                terms.update(self.recipes.losses(ctx))
            return terms
        return fn

    def closure(self, micro: list[dict], denom: int, step: int) -> Callable[..., dict]:
        loss_fn = self.loss_fn(step)

        def closure(no_sync: bool = False) -> dict:
            """Forward/backward every micro-batch; gradients sync on the last one unless
            `no_sync` (SAM's ascent pass). Returns the step's per-term means (all ranks)."""
            sums: dict[str, float] = {}
            counts: dict[str, float] = {}
            for i, batch in enumerate(micro):
                last = i == len(micro) - 1
                skip_sync = (no_sync or not last) and not self.engine.sharded_grads
                with (self.engine.no_sync() if skip_sync else contextlib.nullcontext()):
                    with self.autocast():
                        terms = self.engine.forward(batch, loss_fn)
                        if not terms:
                            raise ValueError(f"step {step}: no loss terms (train.ntp_weight=0 and no recipe loss)")
                        loss = combine(terms, denom)
                    self.engine.backward(loss)
                for name, (value, count) in terms.items():
                    sums[name] = sums.get(name, 0.0) + float(value.detach())
                    counts[name] = counts.get(name, 0.0) + float(count)
            return self.reduce_terms(sums, counts, denom)
        return closure

    def reduce_terms(self, sums: dict, counts: dict, denom: int) -> dict:
        """`loss`: the ntp term per loss token (the whole objective when there is no ntp term);
        every other term as its own sum / count, summed over ranks."""
        names = sorted(sums)
        t = torch.tensor([sums[n] for n in names] + [counts[n] for n in names], dtype=torch.float64,
                         device=self.engine.device)
        self.engine.all_reduce_sum(t)
        k = len(names)
        if NTP in names:
            loss = float(t[names.index(NTP)] / max(1, denom))
        else:
            loss = float(t[:k].sum() / max(1, denom))
        out = {"loss": loss}
        for i, n in enumerate(names):
            if n != NTP:
                out[n] = float(t[i] / max(1.0, float(t[k + i])))
        return out
