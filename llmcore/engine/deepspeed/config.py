"""The DeepSpeed JSON of a run, generated from our typed config; a user JSON may override keys.

Used by `llmcore.engine.deepspeed.engine.DeepSpeedEngine` (and its tests). Kept apart from the engine
so it is a pure function of the config: no process group, no DeepSpeed import.

What llmcore owns and a user JSON may not change (the trainer's semantics depend on them):
the batch keys (one optimizer step per global batch, the loader slices it per rank), the
optimizer and scheduler (built from `optim.*` / `schedule.*`, set per step) and
`gradient_clipping` (the engine clips before the step so the trainer sees the norm and can skip
a non-finite step). Everything else (ZeRO buckets, persistence thresholds, offload details,
communication dtype, ...) is merged key by key into the generated dict.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmcore.config.schema import Config
from llmcore.errors import ConfigError

_OWNED = {
    "train_batch_size": "train.global_batch_size",
    "train_micro_batch_size_per_gpu": "train.micro_batch_size",
    "gradient_accumulation_steps": "train.global_batch_size / (micro_batch_size x world size)",
    "optimizer": "optim.*",
    "scheduler": "schedule.*",
    "gradient_clipping": "optim.grad_clip",
    "fp16": "train.precision (fp16 is not supported; use bf16)",
}


def use_bf16(cfg: Config, device_type: str, bf16_supported: bool) -> bool:
    """The trainer's precision rule: bf16 when asked, or `auto` on a GPU that has it."""
    p = cfg.train.precision
    return p == "bf16" or (p == "auto" and device_type == "cuda" and bf16_supported)


def generate(cfg: Config, world_size: int, bf16: bool, pin_memory: bool = False) -> dict:
    """The DeepSpeed config for `cfg` on `world_size` processes (before user overrides)."""
    stage = cfg.engine.zero_stage
    if stage not in (1, 2, 3):
        raise ConfigError(f"engine.backend=deepspeed needs engine.zero_stage 1, 2 or 3, got {stage} "
                          "(for plain data parallelism use engine.backend=ddp)")
    t = cfg.train
    micro = t.micro_batch_for(world_size)
    per_step = micro * world_size
    zero: dict[str, Any] = {"stage": stage}
    if stage == 3:
        # DeepSpeed keeps parameters under this size gathered between steps; an in-place edit of
        # their fp32 master (SAM's perturb/restore through engine.local_params()) would then
        # never reach the forward. 0 shards everything, so weight edits are always seen.
        zero["stage3_param_persistence_threshold"] = 0
    if cfg.engine.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin_memory}
    return {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": t.global_batch_size // per_step,
        "gradient_clipping": 0.0,  # the engine clips itself, before the step (see module doc)
        "bf16": {"enabled": bool(bf16)},
        "zero_optimization": zero,
        # Our AdamW (decay/no-decay groups) also drives offloaded partitions: DeepSpeed would
        # otherwise insist on its compiled CPU Adam.
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,  # llmcore logs; DeepSpeed's own progress lines are noise
        "wall_clock_breakdown": False,
    }


def load_user_json(path: str) -> dict:
    """The user's override JSON (`engine.deepspeed_config`), checked to be an object."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"engine.deepspeed_config: file not found: {p}")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"engine.deepspeed_config: {p} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"engine.deepspeed_config: {p} must hold a JSON object, got {type(data).__name__}")
    return data


def merge(generated: dict, user: dict, source: str = "<user json>") -> dict:
    """`generated` with `user` merged in recursively (user wins on leaves). A user value for a
    key llmcore owns is accepted only when it equals the generated one."""
    for key, value in user.items():
        if key in _OWNED and generated.get(key, _Missing) != value:
            raise ConfigError(f"{source}: key {key!r} is set by llmcore from {_OWNED[key]} "
                              f"(generated {generated.get(key)!r}, yours {value!r}); remove it from the JSON")
    return _deep_merge(generated, user)


class _Missing:
    pass


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build(cfg: Config, world_size: int, bf16: bool, pin_memory: bool = False) -> dict:
    """Generated config plus the user JSON named by `engine.deepspeed_config`, if any."""
    ds = generate(cfg, world_size, bf16, pin_memory)
    if cfg.engine.deepspeed_config:
        ds = merge(ds, load_user_json(cfg.engine.deepspeed_config), cfg.engine.deepspeed_config)
        if ds.get("zero_optimization", {}).get("stage") != cfg.engine.zero_stage:
            raise ConfigError(f"{cfg.engine.deepspeed_config}: zero_optimization.stage="
                              f"{ds['zero_optimization'].get('stage')!r} disagrees with engine.zero_stage="
                              f"{cfg.engine.zero_stage}; set the stage in the run config only")
    return ds
