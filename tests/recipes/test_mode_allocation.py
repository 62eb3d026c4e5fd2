"""Allocation of k samples across modes: exact sums, deterministic remainders, proportional
to the weights within one sample, and `llmcore eval --pass-at-k` on a mode-conditioned run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from run_configs import tiny_config

from llmcore.cli.main import main
from llmcore.errors import ConfigError
from llmcore.train.loop import Trainer
from recipes.mode_conditioning.allocation import allocate, pass1_weights
from recipes.tasks import countdown as cd


def test_uniform_split_is_exact_with_remainders_to_the_first_modes():
    assert allocate(7, [1, 1, 1]) == [3, 2, 2]
    assert allocate(64, [1, 1]) == [32, 32] and allocate(1, [1, 1]) == [1, 0]
    assert allocate(5, [1, 1, 1, 1]) == [2, 1, 1, 1] and allocate(0, [1, 2]) == [0, 0]


def test_weighted_split_sums_to_k_and_stays_within_one_of_the_quota():
    rng = np.random.default_rng(0)
    for _ in range(300):
        w = rng.random(int(rng.integers(1, 5))) * (rng.random() < 0.9)
        if w.sum() == 0:
            continue
        k = int(rng.integers(0, 70))
        got = allocate(k, w)
        quota = k * w / w.sum()
        assert sum(got) == k and all(abs(g - q) < 1 for g, q in zip(got, quota))
        assert got == allocate(k, list(w))  # deterministic
    assert allocate(10, [0.6, 0.3, 0.1]) == [6, 3, 1]
    assert allocate(3, [0.5, 0.25, 0.25]) == [1, 1, 1]  # largest remainders (.75, .75) before .5
    assert allocate(2, [2, 1, 1]) == [1, 1, 0]  # equal remainders: the lower index
    assert pass1_weights([0.0, 0.0]) == [1.0, 1.0] and pass1_weights([0.2, 0.1]) == [0.2, 0.1]
    for bad in ([], [0, 0], [-1, 2], [float("nan")]):
        with pytest.raises(ConfigError, match="weights"):
            allocate(3, bad)


def test_eval_pass_at_k_splits_samples_across_modes(tmp_path, capsys):
    tok_dir = tmp_path / "tok"
    cd.train_tokenizer(str(tok_dir))
    train = cd.write_jsonl(tmp_path / "train.jsonl", cd.problems(16, 0))
    cfg = tiny_config(tmp_path, tmp_path / "run", "data.format=sft", f"data.path={train}", f"data.val_path={train}",
                      f"data.tokenizer={tok_dir}", "data.seq_len=160", "data.sft_fields=[style]", "model.n_layers=1",
                      "train.max_steps=1", "train.micro_batch_size=4", "train.global_batch_size=4",
                      "recipes=[mode_conditioning]", "mode_conditioning.mode_field=style")
    Trainer(cfg).fit()
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--tasks", train, "--pass-at-k", "1,2,4",
                 "--samples", "4", "--verifier", "recipes.tasks.countdown:verify", "--max-tasks", "3",
                 "--max-new-tokens", "6"]) == 0
    res = json.loads(capsys.readouterr().out)["pass_at_k"]
    assert res["n"] == 4 and res["tasks"] == 3 and sorted(res["overall"]) == ["1", "2", "4"]
    assert sorted(res["groups"]) == ["mode_0", "mode_1"] and sorted(res["groups"]["mode_0"]) == ["1", "2"]
    for point in res["overall"].values():
        assert point["lo"] <= point["mean"] <= point["hi"]
    # validation pass@1 weights at decoding: 6 of the 8 samples to mode 0, so mode 1 (2 samples)
    # has no pass@4 of its own (the uniform split of the first call gives both modes 2 of 4)
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--tasks", train, "--pass-at-k", "1,4",
                 "--samples", "8",
                 "--verifier", "recipes.tasks.countdown:verify", "--max-tasks", "2", "--max-new-tokens", "4",
                 "--recipe-option", "mode_conditioning.allocation=weights",
                 "--recipe-option", "mode_conditioning.weights=[0.3,0.1]"]) == 0
    res = json.loads(capsys.readouterr().out)["pass_at_k"]
    assert sorted(res["groups"]["mode_0"]) == ["1", "4"] and sorted(res["groups"]["mode_1"]) == ["1"]
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--tasks", train, "--pass-at-k", "1",
                 "--recipe-option", "optim.lr=1"]) == 2
    assert "only options of the checkpoint's recipes (mode_conditioning)" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--tasks", train, "--pass-at-k", "1",
                 "--verifier", "recipes.tasks.countdown:nope"]) == 2
    assert "cannot be loaded" in capsys.readouterr().err


def test_shipped_configs_load_and_the_specialists_pipeline_plans_two_half_budget_runs(tmp_path, monkeypatch):
    from pathlib import Path

    from llmcore.config.load import load_run_config
    from llmcore.pipeline.run import load_plan

    root = Path(__file__).resolve().parents[2] / "recipes" / "configs"
    cfg = load_run_config(str(root / "modc_countdown.yaml"), [])
    assert cfg.recipes == ["mode_conditioning"] and cfg.recipe["mode_conditioning"].mode_field == "style"
    monkeypatch.chdir(tmp_path)
    _, runs = load_plan(str(root / "pipelines" / "modc_specialists.yaml"))
    assert [r.config.data.path for r in runs] == [f"runs/countdown/train.mode_{m}.jsonl" for m in (0, 1)]
    assert all(r.config.train.max_steps * 2 == cfg.train.max_steps and r.config.recipes == [] for r in runs)
