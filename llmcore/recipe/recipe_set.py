"""The recipes of one run and the fan-out of every hook over them, in config order.

Built by the trainer, the checkpoint loader and decoding; each hook is optional and looked
up on the recipe's class, so a recipe may be any class (base-class no-ops count as absent).
"""

from __future__ import annotations

from typing import Any, Callable

from llmcore.errors import ConfigError
from llmcore.recipe.registry import recipe_class


class RecipeSet:
    """The recipes of one run, in config order, with each hook fanned out over them."""

    def __init__(self, recipes: list[Any]):
        self.recipes = recipes
        steppers = [r for r in recipes if _has(r, "optimizer_step")]
        if len(steppers) > 1:
            raise ConfigError(f"recipes {[r.name for r in steppers]} all replace the optimizer step; at most one may")
        self.stepper = steppers[0] if steppers else None

    @classmethod
    def from_config(cls, cfg) -> "RecipeSet":
        return cls([recipe_class(n)(cfg.recipe.get(n)) for n in cfg.recipes])

    def __bool__(self) -> bool:
        return bool(self.recipes)

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.recipes]

    def special_tokens(self) -> list[str]:
        out: list[str] = []
        for r in self.recipes:
            fn = getattr(r, "special_tokens", None)
            for tok in (fn() if fn else []):
                if tok not in out:
                    out.append(tok)
        return out

    def bind(self, tokenizer) -> None:
        """Give each recipe the tokenizer (to resolve its special-token ids) before training."""
        for r in self.recipes:
            if _has(r, "bind"):
                r.bind(tokenizer)

    def transform(self) -> Callable | None:
        fns = [r.transform for r in self.recipes if _has(r, "transform")]
        if not fns:
            return None

        def chained(sample: dict, rng) -> dict:
            for fn in fns:
                sample = fn(sample, rng)
            return sample
        return chained

    def ignore_ids(self) -> list[int]:
        """Target ids no recipe wants a next-token loss on (e.g. `<pause>`)."""
        out: list[int] = []
        for r in self.recipes:
            if _has(r, "ignore_ids"):
                out += [i for i in r.ignore_ids() if i not in out]
        return out

    def modules(self, model_args) -> dict[str, Any]:
        """Recipe name -> extra trainable nn.Module (aux heads), saved and sharded with the model."""
        out = {}
        for r in self.recipes:
            if _has(r, "modules"):
                mod = r.modules(model_args)
                if mod is not None:
                    out[r.name] = mod
        return out

    def losses(self, ctx) -> dict[str, tuple]:
        """Named (sum, count) loss terms from every recipe for one micro-batch."""
        terms: dict[str, tuple] = {}
        for r in self.recipes:
            if _has(r, "loss"):
                for key, term in (r.loss(ctx) or {}).items():
                    terms[f"{r.name}/{key}"] = term
        return terms

    def logits_processors(self) -> list[Callable]:
        out: list[Callable] = []
        for r in self.recipes:
            if _has(r, "logits_processors"):
                out += list(r.logits_processors())
        return out

    def prepare_prompt(self, ids: list[int]) -> list[int]:
        for r in self.recipes:
            if _has(r, "prepare_prompt"):
                ids = r.prepare_prompt(ids)
        return ids

    def callback(self, event: str, **kwargs) -> dict:
        """Call `on_<event>` of every recipe; merge the metric dicts they return."""
        metrics: dict = {}
        for r in self.recipes:
            fn = getattr(r, f"on_{event}", None)
            if fn is not None:
                metrics.update(fn(**kwargs) or {})
        return metrics


def _has(recipe: Any, hook: str) -> bool:
    """True when the recipe overrides `hook` (base-class no-ops count as absent)."""
    fn = getattr(type(recipe), hook, None)
    if fn is None:
        return False
    return not getattr(fn, "_default_hook", False)
