"""The keys of a resumed run's config that must match the checkpoint's.

Used by the trainer when it resumes: a config whose model, data, batch sizes or optimizer
differ from what the checkpoint was trained with would silently train another experiment on
this one's state (or another job's, on a shared out_dir). `train.allow_config_change: true`
accepts a deliberate change. Everything else (max_steps, schedule, logging, evaluation,
saving, engine) may change between a run and its resume: that is what resuming is for.
"""

from __future__ import annotations

import copy

import yaml

from llmcore.config.batch import resolve_micro_batch_size
from llmcore.config.diff import differences, shown
from llmcore.config.load import read_saved
from llmcore.config.schema import Config, TrainConfig
from llmcore.errors import ConfigError
from llmcore.recipe.registry import recipe_config_class

SECTIONS = ("model", "data", "optim")
KEYS = ("train.micro_batch_size", "train.global_batch_size")
FREE = ("data.verify",)
"""Keys inside SECTIONS that change how a run checks its inputs, not what it trains on."""


def _relevant(key: str) -> bool:
    return (key.split(".")[0] in SECTIONS or key in KEYS) and key not in FREE


def _resolved_micro_batch(config: dict, world_size: int) -> None:
    """Replace `train.micro_batch_size` in the parsed `config` by the size it ran with on
    `world_size` processes: `auto` and the explicit size it resolves to are the same run."""
    t = config.get("train")
    if not isinstance(t, dict) or "micro_batch_size" not in t:
        return
    try:
        t["micro_batch_size"] = resolve_micro_batch_size(
            t["micro_batch_size"], t.get("global_batch_size"),
            t.get("max_micro_batch_size", TrainConfig.max_micro_batch_size), world_size)
    except (ConfigError, TypeError):
        pass  # not resolvable (a hand-edited file): compared as written


def changed_keys(saved: dict, cfg: Config, saved_world: int = 1, world: int = 1) -> list[str]:
    """`key: saved -> now` for every training-relevant key that differs between the saved
    config (a parsed config.yaml, run on `saved_world` processes) and `cfg` (on `world`). The
    saved config is read as this version reads it (`read_saved`: a field added since the save
    at its default, the pipeline's rule too); the micro-batch sizes are compared as resolved
    (`auto` -> a number)."""
    saved = read_saved(copy.deepcopy(saved), recipe_config_class) if isinstance(saved, dict) else {}
    now = yaml.safe_load(cfg.to_yaml())
    _resolved_micro_batch(saved, saved_world)
    _resolved_micro_batch(now, world)
    return differences(saved, now, keep=_relevant, common_only=True)


def check(saved: dict, cfg: Config, where: str, saved_world: int = 1, world: int = 1) -> list[str]:
    """ConfigError naming the changed keys unless `train.allow_config_change`; returns them."""
    diff = changed_keys(saved, cfg, saved_world, world)
    if diff and not cfg.train.allow_config_change:
        raise ConfigError(f"resuming from {where} with a config that changes what is trained ({shown(diff, 6)}); "
                          "use another train.out_dir for a new run, or set train.allow_config_change=true "
                          "to continue this one with the change deliberately")
    return diff
