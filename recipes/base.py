"""The recipe protocol: the hooks through which a method changes training and decoding.

A recipe is a class registered by name (`@register("pause")`) and listed in a run's config
(`recipes: [pause]`); its options are a dataclass named `Config` on the class, filled from the
config section of the same name. Every hook is optional: the no-op defaults below are skipped
by llmcore (`llmcore.recipe.recipe_set.HOOKS` is the list, in this order). A recipe never
edits llmcore; if a hook is missing, widen it in llmcore for every recipe.

The typed contexts hooks receive are re-exported here so recipes can annotate with them.
"""

from __future__ import annotations

from typing import Any, Callable

from llmcore.data.sample import Sample  # noqa: F401  (what transforms take)
from llmcore.recipe.context import EngineView, LossContext, RunContext, StepContext  # noqa: F401
from llmcore.recipe.registry import register_recipe as register  # noqa: F401  (the decorator recipes use)


def _default(fn):
    fn._default_hook = True
    return fn


class Recipe:
    """Base class with every hook as a no-op. Subclasses override only what they need.

    Hooks (README's hook table says the same):
    - `special_tokens()` -> names the tokenizer must reserve (e.g. "<pause>").
    - `bind(tokenizer)` -> resolve token ids once the run's tokenizer is loaded.
    - `transform(sample: Sample, rng)` -> a rewritten `llmcore.data.Sample` (loader side); its
      `insert` / `trim` / `reversed` move every per-token field (side-cars too) with its token.
      `rng` is seeded by the sample's global index, so a resumed run repeats the same rewrite.
    - `ignore_ids()` -> target ids excluded from the next-token loss inside the fused kernel.
    - `frozen_modules(model_args)` -> {name: nn.Module}: frozen models (a teacher, a reverse LM)
      the engine places on the device in the run's dtype, eval mode, never trained or saved;
      reachable as `ctx.frozen[name]` in `loss` and callbacks. Called before `modules`.
    - `modules(model_args)` -> an extra nn.Module (aux heads), trained, saved and sharded with
      the model; it is reachable in `loss` as `ctx.modules[self.name]`.
    - `loss(ctx: LossContext)` -> {name: (sum, count)}; llmcore divides each sum once by the
      global count of next-token loss tokens of the optimizer step (all micro-batches, all
      ranks), and logs sum / count per term. The name `ntp` is reserved: only a recipe with
      `replaces_ntp = True` returns it, and llmcore then computes no next-token term itself.
    - `ntp_weight(step)` -> multiplier of llmcore's next-token term at `step`. At most one
      recipe per run replaces or scales `ntp`.
    - `optimizer_step(ctx: StepContext, closure)` -> replace the step (SAM); at most one recipe.
    - `on_train_start(ctx: RunContext)`, `on_step_end(ctx, metrics)`, `on_eval(ctx, metrics)`,
      `on_train_end(ctx, metrics)` -> callbacks; return a dict of metrics to log (or None).
      `ctx.request_stop(reason)` ends training after the step (early stopping).
    - `state_dict()` / `load_state_dict(state)` -> JSON-serialisable recipe state kept in every
      checkpoint and restored on resume (SAM's counters).
    - `logits_processors()` / `prepare_prompt(ids)` -> decoding hooks.
    - `beam_selector()` -> None or a selector `fn(candidates, lookahead) -> candidates` for
      beam search (`llmcore.generate.beam`): each step it sees the proposed extensions
      (parent beam, next token, cumulative log-prob, extended ids) and may prune, re-score or
      reorder them; `lookahead(candidates)` gives (N, V) next-token log-probs after each
      candidate from the cache, unprocessed (SafeBeam: drop the half with the highest P(tag)).
      Selectors of several recipes chain in config order.
    - `fan_out(prompt_ids, k)` -> [(variant ids, n samples, group label)] with the n summing to
      k: split one prompt's k samples into groups (ModC: one `<mode_i>` prefix per group);
      at most one recipe per run (`llmcore.generate.groups.sample_groups`).
    """

    name = "base"
    Config = None
    replaces_ntp = False
    """True when this recipe's `loss` returns the `ntp` term (e.g. a fused CE + KD)."""

    def __init__(self, config: Any = None):
        self.config = config

    @classmethod
    def declared_special_tokens(cls) -> list[str]:
        """Tokens to reserve at tokenizer training, before any config exists."""
        return []

    @_default
    def special_tokens(self) -> list[str]:
        return self.declared_special_tokens()

    @_default
    def bind(self, tokenizer) -> None:
        pass

    @_default
    def transform(self, sample: Sample, rng) -> Sample:
        return sample

    @_default
    def ignore_ids(self) -> list[int]:
        return []

    @_default
    def frozen_modules(self, model_args) -> dict:
        return {}

    @_default
    def modules(self, model_args):
        return None

    @_default
    def loss(self, ctx: LossContext) -> dict:
        return {}

    @_default
    def ntp_weight(self, step: int) -> float:
        return 1.0

    @_default
    def optimizer_step(self, ctx: StepContext, closure: Callable) -> dict:
        raise NotImplementedError

    @_default
    def on_train_start(self, ctx: RunContext) -> dict | None:
        return None

    @_default
    def on_step_end(self, ctx: RunContext, metrics: dict) -> dict | None:
        return None

    @_default
    def on_eval(self, ctx: RunContext, metrics: dict) -> dict | None:
        return None

    @_default
    def on_train_end(self, ctx: RunContext, metrics: dict) -> dict | None:
        return None

    @_default
    def uses_max_steps(self) -> bool:
        return False

    @_default
    def state_dict(self) -> dict:
        return {}

    @_default
    def load_state_dict(self, state: dict) -> None:
        pass

    @_default
    def logits_processors(self) -> list[Callable]:
        return []

    @_default
    def prepare_prompt(self, ids: list[int]) -> list[int]:
        return ids

    @_default
    def beam_selector(self) -> Callable | None:
        return None

    @_default
    def fan_out(self, prompt_ids: list[int], k: int) -> list[tuple[list[int], int, str]]:
        return [(prompt_ids, k, "all")]
