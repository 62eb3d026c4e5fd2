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
        # Two recipes each splitting k over their own variants have no meaningful product
        # (whose labels, whose counts?), so a run may fan prompts out through one recipe only.
        fanners = [r for r in recipes if _has(r, "fan_out")]
        if len(fanners) > 1:
            raise ConfigError(f"recipes {[r.name for r in fanners]} all fan prompts out (fan_out); at most one may")
        self.fanner = fanners[0] if fanners else None

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

    def beam_selector(self) -> Callable | None:
        """The recipes' beam selectors chained in config order, or None when no recipe has one.

        Chained, not at most one: pruning and re-scoring compose (each selector sees the
        survivors of the one before it, with the same lookahead), so e.g. SafeBeam can run
        beside a repetition filter. See `llmcore.generate.beam.Selector`.
        """
        fns = []
        for r in self.recipes:
            if _has(r, "beam_selector"):
                fn = r.beam_selector()
                if fn is not None:
                    fns.append((r.name, fn))
        if not fns:
            return None

        def chained(candidates, lookahead):
            for name, fn in fns:
                candidates = fn(candidates, lookahead)
                if candidates is None:
                    raise ConfigError(f"recipe {name!r}: its beam selector returned None; return the "
                                      "candidates to keep (none kept: an empty selection)")
            return candidates
        return chained

    def fan_out(self, prompt_ids: list[int], k: int) -> list[tuple[list[int], int, str]]:
        """One prompt's ids -> [(variant ids, n samples, group label)] with the n summing to k.

        Without a fan-out recipe: one group "all" with the prompt and all k samples. A recipe's
        answer is checked here (counts, labels), and a bad one is refused naming the recipe.
        """
        if self.fanner is None:
            return [(list(prompt_ids), k, "all")]
        name = self.fanner.name
        groups = [tuple(g) for g in self.fanner.fan_out(list(prompt_ids), k)]
        if not groups or any(len(g) != 3 for g in groups):
            raise ConfigError(f"recipe {name!r}: fan_out must return a non-empty list of "
                              f"(prompt ids, n samples, label), got {groups!r}")
        counts = [g[1] for g in groups]
        labels = [g[2] for g in groups]
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in counts) or sum(counts) != k:
            raise ConfigError(f"recipe {name!r}: fan_out(k={k}) gave sample counts {counts}, which "
                              f"must be integers >= 0 summing to {k}")
        if len(set(labels)) != len(labels) or not all(isinstance(x, str) for x in labels):
            raise ConfigError(f"recipe {name!r}: fan_out gave group labels {labels}; they must be distinct strings")
        if any(len(g[0]) == 0 for g in groups):
            raise ConfigError(f"recipe {name!r}: fan_out gave an empty prompt for a group")
        return [(list(ids), n, label) for ids, n, label in groups]

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
