"""The recipe protocol: the hooks through which a method changes training and decoding.

A recipe is a class registered by name (`@register("pause")`) and listed in a run's config
(`recipes: [pause]`); its options are a dataclass named `Config` on the class, filled from the
config section of the same name. Every hook is optional: the no-op defaults below are skipped
by llmcore. A recipe never edits llmcore; if a hook is missing, widen it in llmcore for all.
"""

from __future__ import annotations

from typing import Any, Callable

from llmcore.recipe.registry import register_recipe as register  # noqa: F401  (the decorator recipes use)


def _default(fn):
    fn._default_hook = True
    return fn


class Recipe:
    """Base class with every hook as a no-op. Subclasses override only what they need.

    Hooks (see ARCHITECTURE.md "The recipe interface"):
    - `special_tokens()` -> names the tokenizer must reserve (e.g. "<pause>").
    - `bind(tokenizer)` -> resolve token ids once the run's tokenizer is loaded.
    - `transform(sample, rng)` -> rewrite one packed sample on the loader side. `sample` holds
      numpy arrays "tokens", "doc_ids", "loss_mask" of length seq_len + 1; `rng` is seeded by
      the sample's global index, so a resumed run repeats the same rewrite.
    - `ignore_ids()` -> target ids excluded from the next-token loss inside the fused kernel.
    - `modules(model_args)` -> an extra nn.Module (aux heads), trained, saved and sharded with
      the model; it is reachable in `loss` as `ctx.modules[self.name]`.
    - `loss(ctx)` -> {name: (sum, count)}; llmcore divides each sum once by the global count of
      next-token loss tokens of the optimizer step (all micro-batches, all ranks), and logs
      sum / count per term.
    - `optimizer_step(ctx, closure)` -> replace the step (SAM); at most one recipe per run.
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
    - `on_train_start`, `on_step_end`, `on_eval`, `on_train_end` -> callbacks returning metrics.
    """

    name = "base"
    Config = None

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
    def transform(self, sample: dict, rng) -> dict:
        return sample

    @_default
    def ignore_ids(self) -> list[int]:
        return []

    @_default
    def modules(self, model_args):
        return None

    @_default
    def loss(self, ctx) -> dict:
        return {}

    @_default
    def optimizer_step(self, ctx, closure: Callable) -> dict:
        raise NotImplementedError

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
