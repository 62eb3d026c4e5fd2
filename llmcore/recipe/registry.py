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
