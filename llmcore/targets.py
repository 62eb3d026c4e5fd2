"""`module:function` references in configs, flags and environment variables.

Used by recipe commands (`llmcore.commands` entry points, `LLMCORE_COMMANDS`) and by the
pass@k verifiers (`llmcore eval --verifier`), so a malformed or unloadable reference is named
the same way everywhere.
"""

from __future__ import annotations

import importlib
from typing import Any

from llmcore.errors import ConfigError


def load_target(target: str, what: str) -> Any:
    """The object `target` = `module:attribute` names. `what` starts the error messages (e.g.
    `verifier`), which then quote the target and say what is wrong."""
    module, _, attr = target.partition(":")
    if not attr:
        raise ConfigError(f"{what} {target!r} is not of the form module:function")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{what} {target!r} cannot be loaded: {e}") from None
