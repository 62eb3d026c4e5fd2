"""Subcommands that recipe packages add to `llmcore` (`llmcore distill cache`, `llmcore safety
score`, `llmcore modes cluster`), found the way recipes are: never by name.

A package advertises `name = "module:function"` under the `llmcore.commands` entry-point group
(pyproject: `[project.entry-points."llmcore.commands"]`); `LLMCORE_COMMANDS=name=module:function,...`
adds more without packaging. `function(parser)` receives the `argparse` parser of `llmcore
<name>` and adds its arguments or sub-actions, each setting `fn` (called with the parsed
arguments) through `set_defaults`, exactly as the built-in commands do; an `LlmcoreError` it
raises prints one line and exits 2, as for every command.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
from collections.abc import Callable

from llmcore.errors import ConfigError
from llmcore.targets import load_target

GROUP = "llmcore.commands"


def _load(name: str, target: str, where: str) -> Callable[[argparse.ArgumentParser], None]:
    return load_target(target, f"{where}: command {name!r} ->")


def recipe_commands() -> dict[str, Callable[[argparse.ArgumentParser], None]]:
    """Command name -> its parser-building function, from the entry points and the variable."""
    out: dict[str, Callable] = {}
    for ep in importlib.metadata.entry_points(group=GROUP):
        out[ep.name] = _load(ep.name, ep.value, f"entry point group {GROUP!r}")
    for item in filter(None, os.environ.get("LLMCORE_COMMANDS", "").split(",")):
        name, sep, target = item.partition("=")
        if not sep:
            raise ConfigError(f"LLMCORE_COMMANDS: {item!r} is not of the form name=module:function")
        out[name.strip()] = _load(name.strip(), target.strip(), "LLMCORE_COMMANDS")
    return out


def add_recipe_commands(sub: argparse._SubParsersAction, builtin: set[str]) -> None:
    """Add every recipe command to `llmcore`'s subparsers; a name taken by a built-in command
    is an error naming both, so a package can never shadow `train`."""
    for name, build in sorted(recipe_commands().items()):
        if name in builtin:
            raise ConfigError(f"recipe command {name!r} ({build.__module__}) clashes with the built-in "
                              f"`llmcore {name}`")
        build(sub.add_parser(name, help=(build.__doc__ or f"{name} (recipe command)").strip().splitlines()[0]))
