"""Named model sizes and the concrete architecture record the model is built from.

Used by the config (`model.preset`) and the export adapter.
Presets are small functions in one registry, derived from each other with
`dataclasses.replace`; `resolve_model_args` fills a preset with the config's explicit fields.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Callable

from llmcore.errors import ConfigError
from llmcore.model.args import ModelArgs

_PRESETS: dict[str, Callable[[], ModelArgs]] = {}


def register_preset(name: str):
    """Decorator: add a zero-argument function returning ModelArgs under `name`."""
    def deco(fn: Callable[[], ModelArgs]):
        _PRESETS[name] = fn
        return fn
    return deco


def preset_names() -> list[str]:
    return sorted(_PRESETS)


def get_preset(name: str) -> ModelArgs:
    if name not in _PRESETS:
        near = difflib.get_close_matches(name, list(_PRESETS), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"unknown model.preset {name!r} (have {', '.join(preset_names())}){hint}")
    return _PRESETS[name]()


@register_preset("tiny")
def tiny() -> ModelArgs:
    # ~1M parameters at vocab 2048: trains in seconds on a CPU, so CI can afford real runs.
    return ModelArgs(vocab_size=2048, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2,
                     ffn_hidden=352, max_seq_len=1024)


@register_preset("demo")
def demo() -> ModelArgs:
    # ~3M parameters: the README's `make demo` trains it on 2 CPU cores in a few minutes.
    return dataclasses.replace(tiny(), vocab_size=4096, d_model=192, n_layers=6, n_heads=6,
                               n_kv_heads=2, ffn_hidden=512)


# The SAM paper's three sizes (d256/8L, d512/8L, d768/12L) with the GPT-2 vocabulary padded
# to 50304 (a multiple of 128), which puts the smallest at the ~20M its name promises.
@register_preset("20m")
def m20() -> ModelArgs:
    return ModelArgs(vocab_size=50304, d_model=256, n_layers=8, n_heads=4, n_kv_heads=4,
                     ffn_hidden=688)


@register_preset("60m")
def m60() -> ModelArgs:
    return dataclasses.replace(m20(), d_model=512, n_heads=8, n_kv_heads=8, ffn_hidden=1376)


@register_preset("150m")
def m150() -> ModelArgs:
    return dataclasses.replace(m20(), d_model=768, n_layers=12, n_heads=12, n_kv_heads=12,
                               ffn_hidden=2048)


# Llama-3.2 1B / 3B and Llama-3.1 8B shapes (128256-token vocabulary, rope theta 500000).
@register_preset("1b")
def b1() -> ModelArgs:
    return ModelArgs(vocab_size=128256, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8,
                     ffn_hidden=8192, max_seq_len=8192, rope_theta=500000.0, tie_embeddings=True)


@register_preset("3b")
def b3() -> ModelArgs:
    return dataclasses.replace(b1(), d_model=3072, n_layers=28, n_heads=24, n_kv_heads=8)


@register_preset("8b")
def b8() -> ModelArgs:
    return dataclasses.replace(b1(), d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                               ffn_hidden=14336, tie_embeddings=False)


def resolve_model_args(model_cfg, vocab_size: int | None = None) -> ModelArgs:
    """The preset named by `model_cfg.preset` with every explicitly set field applied.

    `vocab_size` (from the tokenizer) wins over the preset's unless the config sets one.
    """
    args = get_preset(model_cfg.preset)
    changes = {f.name: getattr(model_cfg, f.name) for f in dataclasses.fields(ModelArgs)
               if hasattr(model_cfg, f.name) and getattr(model_cfg, f.name) is not None}
    if "vocab_size" not in changes and vocab_size is not None:
        changes["vocab_size"] = vocab_size
    return dataclasses.replace(args, **changes).validate()


def model_section(args: ModelArgs) -> dict:
    """A config `model` section that rebuilds `args` exactly: every architecture field set,
    with the preset `args` equals (else `tiny`, whose fields are all overridden anyway)."""
    preset = next((n for n in preset_names() if get_preset(n) == args), "tiny")
    return {"preset": preset, **dataclasses.asdict(args)}
