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


# --- import-hf --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_dir(run, tmp_path_factory):
    from llmcore.hf.folder import export_hf

    return export_hf(str(run), str(tmp_path_factory.mktemp("hf") / "hf"))


def import_with(hf_dir, tmp_path, config):
    from llmcore.hf.folder import import_hf

    src = tmp_path / "src"
    shutil.copytree(hf_dir, src)
    (src / "config.json").write_text(json.dumps(config))
    return src, lambda: import_hf(str(src), str(tmp_path / "imp"))


@pytest.mark.parametrize("config, kind", [([1, 2], "list"), ("llama", "str"), (None, "NoneType")])
def test_import_hf_config_json_that_is_not_an_object_is_named(hf_dir, tmp_path, config, kind):
    src, do = import_with(hf_dir, tmp_path, config)
    with pytest.raises(CheckpointError, match=rf"{src / 'config.json'} is not a model config: expected a JSON "
                                              rf"object, got a JSON {kind}"):
        do()
    assert not (tmp_path / "imp").exists()


@pytest.mark.parametrize("rope_parameters, rope_scaling, key, rope_type", [
    ({"rope_type": "default", "rope_theta": 10000.0}, {"rope_type": "linear", "factor": 4.0}, "rope_scaling", "linear"),
    ({"rope_type": "default", "rope_theta": 10000.0}, {"type": "dynamic", "factor": 2.0}, "rope_scaling", "dynamic"),
    ({"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}, None, "rope_parameters", "yarn"),
    ({"rope_type": "default"}, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0}, "rope_scaling", "llama3"),
])
def test_import_hf_refuses_scaled_rope_from_either_key(hf_dir, tmp_path, rope_parameters, rope_scaling, key, rope_type):
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg.update(rope_parameters=rope_parameters, rope_scaling=rope_scaling)
    _, do = import_with(hf_dir, tmp_path, cfg)
    with pytest.raises(CheckpointError, match=rf"rope type={rope_type!r} is not supported by llmcore's model "
                                              rf"\(supported: \['default'\]\): {key} asks for scaled RoPE"):
        do()
    assert not (tmp_path / "imp").exists()
    transformers = pytest.importorskip("transformers")
    # what transformers makes of the same config.json: the scaled type we refused
    assert transformers.LlamaConfig.from_dict(cfg).rope_parameters["rope_type"] == rope_type


def test_import_hf_reads_rope_theta_where_transformers_does(hf_dir, tmp_path):
    """A non-empty rope_scaling wins over rope_parameters, its theta from the top-level key."""
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg.update(rope_theta=20000.0, rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
               rope_scaling={"rope_type": "default"})
    _, do = import_with(hf_dir, tmp_path, cfg)
    do()
    model, _ = llmcore.load(str(tmp_path / "imp"), device="cpu")
    assert model.args.rope_theta == 20000.0
    transformers = pytest.importorskip("transformers")
    assert transformers.LlamaConfig.from_dict(cfg).rope_parameters["rope_theta"] == 20000.0


def test_import_hf_rope_key_of_another_type_is_named(hf_dir, tmp_path):
    cfg = dict(json.loads((hf_dir / "config.json").read_text()), rope_scaling="linear")
    src, do = import_with(hf_dir, tmp_path, cfg)
    with pytest.raises(CheckpointError, match=rf"{src / 'config.json'}: rope_scaling must be an object or null, "
                                              "got 'linear'"):
        do()
