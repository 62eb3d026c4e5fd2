"""The run's data, from its config: the training loader and the batches of each evaluation set.

Used by the trainer. Validation scores the same kind of sequence training sees: the recipes'
transform (after reversal for a right-to-left LM) is applied to evaluation windows too, each
window seeded by its index, so every evaluation sees the same sequences.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Callable

import numpy as np

from llmcore.config.schema import Config
from llmcore.data.loader import PackedLoader, eval_batches
from llmcore.data.sample import Sample
from llmcore.data.sft import SFTLoader, sft_eval_batches
from llmcore.data.shards import TokenShards



def tokenizer_dir(cfg: Config) -> str:
    """`data.tokenizer`, else the `tokenizer/` that `llmcore data prepare` put beside the data."""
    if cfg.data.tokenizer:
        return cfg.data.tokenizer
    root = cfg.data.path or cfg.data.sources[0].path
    return str(Path(root) / "tokenizer")


def sample_transform(reverse: bool, recipe_transform: Callable | None) -> Callable | None:
    """The recipes' sample rewrite, after reversal for a right-to-left LM (`data.reverse`)."""
    if not reverse:
        return recipe_transform

    def fn(sample: Sample, rng) -> Sample:
        sample = sample.reversed()  # every per-token field too
        return recipe_transform(sample, rng) if recipe_transform is not None else sample
    return fn


def train_loader(cfg: Config, tokenizer, rank: int, world_size: int, transform: Callable | None):
    """This rank's share of the run's training stream (packed windows or SFT rows)."""
    d, t = cfg.data, cfg.train
    common = dict(seed=t.seed, rank=rank, world_size=world_size, transform=transform)
    if d.format == "sft":
        return SFTLoader(d.path, tokenizer, d.seq_len, t.global_batch_size, prompt_field=d.prompt_field,
                         answer_field=d.answer_field, fields=d.sft_fields, sidecars=d.sidecars, **common)
    specs = ([(s.name or Path(s.path).name, s.path, s.weight, s.max_tokens, s.skip_tokens) for s in d.sources]
             or [(Path(d.path).name, d.path, 1.0, None, 0)])
    sources = [(name, TokenShards(path, "train", expected_tokenizer_hash=tokenizer.hash, verify=d.verify), w, cap,
                skip) for name, path, w, cap, skip in specs]
    return PackedLoader(sources, d.seq_len, t.global_batch_size, sidecars=d.sidecars, mixing=d.mixing, **common)


def default_eval_path(cfg: Config) -> str:
    """The default `val` set: data.val_path, else the training data's own val split."""
    d = cfg.data
    if d.format == "sft":
        return d.val_path
    return d.val_path or d.path or d.sources[0].path


def eval_set_batches(cfg: Config, tokenizer, path: str, n: int, transform: Callable | None,
                     micro_batch: int) -> list[dict]:
    """Up to `n` micro-batches (of `micro_batch` sequences, the run's resolved size) of the
    evaluation set at `path` (a prepared folder's `val` split, or an SFT jsonl), transformed
    with a per-window seed; [] when there is none."""
    d, mb, seed = cfg.data, micro_batch, cfg.train.seed
    if not path:
        return []
    if d.format == "sft":
        return list(sft_eval_batches(path, tokenizer, d.seq_len, mb, n, transform=transform, seed=seed,
                                     prompt_field=d.prompt_field, answer_field=d.answer_field,
                                     fields=d.sft_fields, sidecars=d.sidecars))
    shards = TokenShards(path, "val", expected_tokenizer_hash=tokenizer.hash, verify=d.verify)
    per_window = None
    if transform is not None:
        index = itertools.count()  # window i gets the same rng in every evaluation
        per_window = lambda s: transform(s, np.random.default_rng([seed, next(index), 13]))  # noqa: E731
    return list(eval_batches(shards, d.seq_len, mb, n, transform=per_window, sidecars=d.sidecars))
