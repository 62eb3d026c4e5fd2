"""The keys of a resumed run's config that must match the checkpoint's.

Used by the trainer when it resumes: a config whose model, data, batch sizes or optimizer
differ from what the checkpoint was trained with would silently train another experiment on
this one's state (or another job's, on a shared out_dir). `train.allow_config_change: true`
accepts a deliberate change. Everything else (max_steps, schedule, logging, evaluation,
saving, engine) may change between a run and its resume: that is what resuming is for.
"""

from __future__ import annotations

import yaml

from llmcore.config.diff import differences, shown
from llmcore.config.schema import Config
from llmcore.errors import ConfigError

SECTIONS = ("model", "data", "optim")
KEYS = ("train.micro_batch_size", "train.global_batch_size")
FREE = ("data.verify",)
"""Keys inside SECTIONS that change how a run checks its inputs, not what it trains on."""


def _relevant(key: str) -> bool:
    return (key.split(".")[0] in SECTIONS or key in KEYS) and key not in FREE


def changed_keys(saved: dict, cfg: Config) -> list[str]:
    """`key: saved -> now` for every training-relevant key that differs between the saved
    config (a parsed config.yaml) and `cfg` (keys absent from one side, e.g. a field added
    since the save, are not compared)."""
    if not isinstance(saved, dict):
        saved = {}
    return differences(saved, yaml.safe_load(cfg.to_yaml()), keep=_relevant, common_only=True)


def check(saved: dict, cfg: Config, where: str) -> list[str]:
    """ConfigError naming the changed keys unless `train.allow_config_change`; returns them."""
    diff = changed_keys(saved, cfg)
    if diff and not cfg.train.allow_config_change:
        raise ConfigError(f"resuming from {where} with a config that changes what is trained ({shown(diff, 6)}); "
                          "use another train.out_dir for a new run, or set train.allow_config_change=true "
                          "to continue this one with the change deliberately")
    return diff
