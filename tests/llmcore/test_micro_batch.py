"""`train.micro_batch_size: auto` follows the world size; an explicit size keeps its check."""

from __future__ import annotations

import pytest
from run_configs import tiny_config

from llmcore.config.batch import resolve_micro_batch_size
from llmcore.config.load import load_config
from llmcore.errors import ConfigError
from llmcore.train import config_change
from llmcore.train.loop import Trainer
from llmcore.train.metrics import log, setup_logging


def largest_fitting_divisor(per_rank: int, cap: int) -> int:
    """Reference: try every size from 1 up, keep the last that divides and fits."""
    return max(d for d in range(1, per_rank + 1) if per_rank % d == 0 and d <= cap)


@pytest.mark.parametrize("global_batch,world,cap", [(8, 1, 8), (8, 2, 8), (12, 2, 4), (12, 2, 5), (7, 1, 4),
                                                   (256, 8, 16), (24, 3, 7), (6, 2, 1), (10, 2, 100)])
def test_auto_is_the_largest_divisor_that_fits(global_batch, world, cap):
    micro = resolve_micro_batch_size("auto", global_batch, cap, world)
    assert micro == largest_fitting_divisor(global_batch // world, cap)
    assert (global_batch // world) % micro == 0 and micro <= cap


def test_auto_examples():
    assert resolve_micro_batch_size("auto", 8, 8, 1) == 8  # the defaults on one process: unchanged
    assert resolve_micro_batch_size("auto", 8, 8, 2) == 4  # ... and on two, where 8 x 2 failed before
    assert resolve_micro_batch_size("auto", 12, 5, 2) == 3  # 6 per rank, 5 does not divide it: 3 x 2 steps
    assert resolve_micro_batch_size("auto", 7, 4, 1) == 1  # a prime per-rank batch: one sequence at a time


def test_auto_needs_a_global_batch_the_world_divides():
    with pytest.raises(ConfigError, match=r"train.global_batch_size=9 is not a multiple of the world size 2 "
                                          r"\(train.micro_batch_size=auto"):
        resolve_micro_batch_size("auto", 9, 8, 2)


def test_explicit_sizes_keep_their_check_and_message():
    assert resolve_micro_batch_size(2, 8, 1, 2) == 2  # max_micro_batch_size does not cap an explicit size
    with pytest.raises(ConfigError, match=r"^train.global_batch_size=8 is not a multiple of micro_batch_size x "
                                          r"world size = 8 x 2$"):
        resolve_micro_batch_size(8, 8, 8, 2)
    with pytest.raises(ConfigError, match="train.global_batch_size=8 is not a multiple of train.micro_batch_size=3"):
        load_config(None, ["data.path=d", "train.micro_batch_size=3", "train.global_batch_size=8"])


def test_config_default_is_auto_and_bad_values_are_named():
    cfg = load_config(None, ["data.path=d"])
    assert cfg.train.micro_batch_size == "auto" and cfg.train.micro_batch_for(2) == 4
    assert load_config(None, ["data.path=d", "train.micro_batch_size=2"]).train.micro_batch_size == 2
    with pytest.raises(ConfigError, match=r"train.micro_batch_size must be a positive integer or 'auto', got 'big'"):
        load_config(None, ["data.path=d", "train.micro_batch_size=big"])
    with pytest.raises(ConfigError, match=r"train.micro_batch_size must be a positive integer or 'auto', got 0"):
        load_config(None, ["data.path=d", "train.micro_batch_size=0"])
    with pytest.raises(ConfigError, match=r"train.max_micro_batch_size must be positive, got 0"):
        load_config(None, ["data.path=d", "train.max_micro_batch_size=0"])


def test_resume_compares_resolved_micro_batches():
    """`auto` resolving to the saved explicit size is no change; one resolving elsewhere is named."""
    saved = {"train": {"micro_batch_size": 4, "global_batch_size": 8}}
    cfg = load_config(None, ["data.path=d", "train.max_micro_batch_size=4"])
    assert config_change.changed_keys(saved, cfg) == []
    assert config_change.changed_keys(saved, cfg, saved_world=1, world=2) == []  # 8 / 2 = 4 per rank: still 4
    small = {"train": {"micro_batch_size": 2, "global_batch_size": 8}}
    assert config_change.changed_keys(small, cfg, saved_world=1, world=2) == ["train.micro_batch_size: 2 -> 4"]
    auto_saved = {"train": {"micro_batch_size": "auto", "global_batch_size": 8}}  # max defaults to 8
    assert config_change.changed_keys(auto_saved, cfg) == ["train.micro_batch_size: 8 -> 4"]


def test_trainer_uses_the_resolved_size(prepared, tmp_path, caplog, monkeypatch):
    setup_logging()
    monkeypatch.setattr(log, "propagate", True)  # llmcore's own handler stops at its logger; caplog listens above
    cfg = tiny_config(prepared, tmp_path / "r", "data.seq_len=32", "train.micro_batch_size=auto",
                      "train.max_micro_batch_size=3", "train.global_batch_size=6", "train.max_steps=1",
                      "model.n_layers=2", "train.eval_batches=1")
    with caplog.at_level("INFO", logger="llmcore"):
        trainer = Trainer(cfg)
    assert (trainer.micro_batch, trainer.accum) == (3, 2)
    assert "train.micro_batch_size=auto -> 3 (global batch 6 over 1 processes, 2 accumulation steps" in caplog.text
    assert trainer.eval_batches(str(prepared), 1)[0]["input_ids"].shape == (3, 32)
    trainer.lock.release()
