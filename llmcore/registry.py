"""The recipe registry and the fan-out of recipe hooks to llmcore's data, loss, step and decoding.

llmcore never imports a recipe by name: recipe packages register their classes here with
`register_recipe("name")`, and `discover()` imports every module advertised under the
`llmcore.recipes` entry-point group (the built-in `recipes` package is one). The hook
contract itself is documented on `recipes.base.Recipe`; here every hook is optional and looked
up with getattr, so a recipe may be any class.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.metadata
import os
from typing import Any, Callable

from llmcore.errors import ConfigError

_RECIPES: dict[str, type] = {}
_discovered = False


def register_recipe(name: str):
    """Class decorator: make a recipe available to configs as `recipes: [name]`."""
    def deco(cls: type) -> type:
        if name in _RECIPES and _RECIPES[name] is not cls:
            raise ValueError(f"recipe name {name!r} registered twice ({_RECIPES[name]} and {cls})")
        cls.name = name
        _RECIPES[name] = cls
        return cls
    return deco


def discover() -> dict[str, type]:
    """Import every module of the `llmcore.recipes` entry-point group (once) and return the registry.

    `LLMCORE_RECIPE_MODULES=a.b,c.d` adds modules without packaging them (handy in notebooks).
    """
    global _discovered
    if not _discovered:
        _discovered = True
        modules = [ep.value for ep in importlib.metadata.entry_points(group="llmcore.recipes")]
        modules += [m for m in os.environ.get("LLMCORE_RECIPE_MODULES", "").split(",") if m]
        for module in modules:
            importlib.import_module(module.split(":")[0])
    return _RECIPES


def recipe_class(name: str) -> type:
    recipes = discover()
    if name not in recipes:
        near = difflib.get_close_matches(name, list(recipes), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"unknown recipe {name!r} (registered: {', '.join(sorted(recipes)) or 'none'}){hint}")
    return recipes[name]


def recipe_config_class(name: str) -> type | None:
    """The recipe's typed options dataclass (its `Config` attribute), or None."""
    return getattr(recipe_class(name), "Config", None)


def all_special_tokens(include_testing: bool = False) -> list[str]:
    """Every special token any registered recipe declares, for tokenizer training. Recipes
    marked `testing_only` (the hook probe) are left out unless `include_testing`, so users'
    tokenizers carry no test tokens."""
    tokens: list[str] = []
    for cls in discover().values():
        if getattr(cls, "testing_only", False) and not include_testing:
            continue
        fn = getattr(cls, "declared_special_tokens", None)
        for tok in (fn() if fn else []):
            if tok not in tokens:
                tokens.append(tok)
    return tokens


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


@contextlib.contextmanager
def temporary_recipe(name: str, cls: type):
    """Register `cls` under `name` for the duration of a block (tests)."""
    old = _RECIPES.pop(name, None)
    register_recipe(name)(cls)
    try:
        yield cls
    finally:
        _RECIPES.pop(name, None)
        if old is not None:
            _RECIPES[name] = old
