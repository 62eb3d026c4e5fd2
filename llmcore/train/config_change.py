"""The keys of a resumed run's config that must match the checkpoint's.

Used by the trainer when it resumes: a config whose model, data, batch sizes or optimizer
differ from what the checkpoint was trained with would silently train another experiment on
this one's state (or another job's, on a shared out_dir). `train.allow_config_change: true`
accepts a deliberate change. Everything else (max_steps, schedule, logging, evaluation,
saving, engine) may change between a run and its resume: that is what resuming is for.
"""

from __future__ import annotations

import yaml

from llmcore.config.schema import Config
from llmcore.errors import ConfigError

SECTIONS = ("model", "data", "optim")
KEYS = ("train.micro_batch_size", "train.global_batch_size")
FREE = ("data.verify",)
"""Keys inside SECTIONS that change how a run checks its inputs, not what it trains on."""


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _relevant(raw: dict) -> dict:
    flat = _flat(raw) if isinstance(raw, dict) else {}
    return {k: v for k, v in flat.items()
            if (k.split(".")[0] in SECTIONS or k in KEYS) and k not in FREE}


def changed_keys(saved: dict, cfg: Config) -> list[str]:
    """`key: saved -> now` for every training-relevant key that differs between the saved
    config (a parsed config.yaml) and `cfg` (keys absent from one side, e.g. a field added
    since the save, are not compared)."""
    a, b = _relevant(saved), _relevant(yaml.safe_load(cfg.to_yaml()))
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in sorted(a.keys() & b.keys()) if a[k] != b[k]]


def check(saved: dict, cfg: Config, where: str) -> list[str]:
    """ConfigError naming the changed keys unless `train.allow_config_change`; returns them."""
    diff = changed_keys(saved, cfg)
    if diff and not cfg.train.allow_config_change:
        shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
        raise ConfigError(f"resuming from {where} with a config that changes what is trained ({shown}); "
                          "use another train.out_dir for a new run, or set train.allow_config_change=true "
                          "to continue this one with the change deliberately")
    return diff
