"""Fixtures of the multi-process tests (helpers live in `mp_helpers`)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from mp_helpers import overrides


@pytest.fixture(scope="module")
def single_ref(prepared, tmp_path_factory):
    """Single-process runs of the shared settings, by extra overrides; each run once per module."""
    from driver import TEST_RECIPES

    from llmcore.config.load import load_run_config
    from llmcore.recipe.registry import temporary_recipe
    from llmcore.train.loop import Trainer

    cache: dict[tuple, Path] = {}

    def run(*extra: str) -> Path:
        if extra not in cache:
            out = tmp_path_factory.mktemp("single")
            with contextlib.ExitStack() as stack:
                for name, cls in TEST_RECIPES.items():
                    stack.enter_context(temporary_recipe(name, cls))
                Trainer(load_run_config(None, overrides(prepared, out, *extra))).fit()
            cache[extra] = out
        return cache[extra]
    return run
