"""Bad input met by a named error (the file, the key, the problem), never a raw traceback or a
silent wrong result: checkpoints, data files, HF folders, generation and evaluation limits.

Config ranges (learning rate, betas, log_every, ...) are tested in test_config.py."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from run_configs import RECIPE_RUN, tiny_config

import llmcore
from llmcore.cli.main import main
from llmcore.errors import CheckpointError
from llmcore.train.loop import Trainer


@pytest.fixture(scope="module")
def run(prepared, tmp_path_factory):
    """A finished one-step `tiny` run (its folder holds `latest` and ckpt-000001)."""
    out = tmp_path_factory.mktemp("named") / "run"
    Trainer(tiny_config(prepared, out, *RECIPE_RUN, "train.max_steps=1")).fit()
    return out


def copy_ckpt(run, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(run / "ckpt-000001", dst)
    return dst


# --- checkpoints ------------------------------------------------------------------------------

@pytest.mark.parametrize("state", [{"world_size": 1}, {"step": "3"}, [1, 2]])
def test_state_json_without_an_integer_step_is_named(run, tmp_path, state):
    ckpt = copy_ckpt(run, tmp_path)
    (ckpt / "state.json").write_text(json.dumps(state))
    from llmcore.train import checkpoint

    with pytest.raises(CheckpointError, match=rf"{ckpt / 'state.json'} has no integer `step`"):
        checkpoint.read_state(ckpt)


def test_resume_with_state_json_without_step_exits_2_naming_the_file(prepared, run, tmp_path, capsys):
    out = tmp_path / "r"
    shutil.copytree(run, out)
    state = json.loads((out / "ckpt-000001" / "state.json").read_text())
    del state["step"]
    (out / "ckpt-000001" / "state.json").write_text(json.dumps(state))
    args = ["train", f"data.path={prepared}", f"train.out_dir={out}", "train.progress=false", *RECIPE_RUN,
            "train.max_steps=2"]
    assert main(args) == 2
    assert f"{out / 'ckpt-000001' / 'state.json'} has no integer `step` (got None)" in capsys.readouterr().err


@pytest.mark.parametrize("text, problem", [("model: {preset: tiny\n", "is missing or unreadable"),
                                           ("- a\n- b\n", "is not a run config (a YAML mapping), got list")])
def test_config_yaml_that_is_not_a_run_config_is_named_by_generate_and_export(run, tmp_path, capsys, text, problem):
    ckpt = copy_ckpt(run, tmp_path)
    (ckpt / "config.yaml").write_text(text)
    expected = f"{ckpt / 'config.yaml'} {problem}"
    assert main(["generate", "--checkpoint", str(ckpt), "--prompt", "x", "--max-new-tokens", "2"]) == 2
    assert expected in capsys.readouterr().err
    assert main(["export-hf", "--checkpoint", str(ckpt), "--out", str(tmp_path / "hf")]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


def test_resume_with_another_preset_names_both_presets_and_the_shapes(prepared, run, tmp_path):
    out = tmp_path / "r"
    shutil.copytree(run, out)
    with pytest.raises(CheckpointError) as e:
        Trainer(tiny_config(prepared, out, *RECIPE_RUN, "model.preset=demo", "train.max_steps=2"))
    msg = str(e.value)
    assert (f"cannot resume from {out / 'ckpt-000001'}: it holds model preset 'tiny', this run builds preset "
            "'demo' and the shapes differ (d_model 128 -> 192, n_heads 4 -> 6, ffn_hidden 352 -> 512, "
            "checkpoint -> run)") in msg
    assert "model.preset=tiny" in msg and "new train.out_dir" in msg


def test_init_from_another_size_is_named_before_loading(prepared, run, tmp_path):
    with pytest.raises(CheckpointError, match=r"cannot initialise from .*ckpt-000001: it holds model preset "
                                              r"'tiny', this run builds preset 'tiny' and the shapes differ "
                                              r"\(n_layers 2 -> 3, checkpoint -> run\)"):
        Trainer(tiny_config(prepared, tmp_path / "new", *RECIPE_RUN, "model.n_layers=3",
                            f"train.init_from={run}"))


def test_resume_that_changes_no_shape_still_loads(prepared, run, tmp_path):
    out = tmp_path / "r"
    shutil.copytree(run, out)
    trainer = Trainer(tiny_config(prepared, out, *RECIPE_RUN, "train.max_steps=2", "model.max_seq_len=512"))
    assert trainer.step == 1
