"""Weight-noise sensitivity: the noise laws against their definitions, seeding, bit-identical
restore (also after an exception), the loss rise of a trained tiny model (0 at sigma 0,
positive under noise), log-spaced checkpoint saves, the fine-tune probe, and `llmcore
sensitivity` writing its table, with named errors for bad input."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import shutil

import pytest
import torch
from torch import nn

import llmcore
from llmcore.cli.main import main
from llmcore.errors import ConfigError, DataError
from llmcore.eval.loss import validation_loss
from llmcore.eval.perturb import edited_weights, gaussian_noise, noised, target_weights
from llmcore.eval.sensitivity import (
    checkpoint_sensitivity,
    loss_increase,
    noise_sensitivity,
)
from llmcore.model.args import ModelArgs
from llmcore.model.transformer import Transformer
from llmcore.train import checkpoint
from llmcore.train.loop import Trainer
from tests.run_configs import tiny_config

RUN = ["model.d_model=32", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2", "model.ffn_hidden=64",
       "data.seq_len=32", "train.micro_batch_size=4", "train.global_batch_size=4", "train.eval_batches=1",
       "optim.lr=1e-2", "schedule.kind=constant", "schedule.warmup_steps=0", "train.log_every=100"]


def small_model(seed=0, n_layers=2, d=64) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelArgs(vocab_size=64, d_model=d, n_layers=n_layers, n_heads=4, n_kv_heads=2,
                                 ffn_hidden=2 * d, max_seq_len=32))


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_bits(model, before):
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), f"{n} not restored bit for bit"


@pytest.fixture(scope="module")
def trained_run(prepared, tmp_path_factory):
    """40 steps of a 2-layer model, saved at steps 2, 6 and 18 (log-spaced) and at the end."""
    out = tmp_path_factory.mktemp("sens") / "run"
    Trainer(tiny_config(prepared, out, *RUN, "train.max_steps=40", "train.save_at_steps=[2,6,18]",
                        "train.keep_last=0")).fit()
    return out


def test_tensor_rms_law_matches_its_definition():
    # 240,000 draws: the sample std of the noise is within ~0.15% of its true value (1 sigma)
    w = torch.randn(400, 600, generator=torch.Generator().manual_seed(1)) * 0.37 + 0.05
    rms = w.pow(2).mean().sqrt()
    for sigma in (0.01, 0.1, 0.5):
        d = (gaussian_noise(w, 3, sigma, "tensor_rms", seed=5) - w).double()
        assert (d.pow(2).mean().sqrt() / rms).item() == pytest.approx(sigma, rel=0.01)
        assert abs(d.mean().item()) < 5 * sigma * rms.item() / math.sqrt(d.numel())
    d = gaussian_noise(w, 3, 0.1, "init_std", seed=5, init_std=0.02) - w
    assert d.pow(2).mean().sqrt().item() == pytest.approx(0.002, rel=0.01)  # fixed: rms(w) plays no part
    with pytest.raises(ConfigError, match="noise law init_std needs the tensor's init std"):
        gaussian_noise(w, 0, 0.1, "init_std")
    with pytest.raises(ConfigError, match="noise law 'uniform' is not one of tensor_rms, init_std"):
        gaussian_noise(w, 0, 0.1, "uniform")
    with pytest.raises(ConfigError, match="noise sigma must be a finite number >= 0, got -0.1"):
        gaussian_noise(w, 0, -0.1)


def test_init_std_law_follows_the_models_own_init_rule():
    model = small_model(n_layers=2, d=64)
    # the rule the law reads is the one the initialisation drew from
    for name, p in target_weights(model):
        assert p.detach().std().item() == pytest.approx(model.init_std(name), rel=0.1), name
    assert model.init_std("layers.0.self_attn.o_proj.weight") == pytest.approx(0.02 / 2)  # 0.02 / sqrt(2L)
    before = snapshot(model)
    with noised(model, 0.5, "init_std", seed=2):
        for name, p in target_weights(model):
            d = (p.detach() - before[name]).double()
            assert (d.pow(2).mean().sqrt() / (0.5 * model.init_std(name))).item() == pytest.approx(1.0, rel=0.1), name
    assert_bits(model, before)
    plain = nn.Sequential()
    plain.add_module("layers", nn.ModuleList([nn.Linear(4, 4)]))
    with (pytest.raises(ConfigError, match="Sequential states no init std for 'layers.0.weight'.*use law tensor_rms"),
          noised(plain, 0.1, "init_std")):
        pass


def test_same_seed_same_noise_other_seed_other_noise():
    model = small_model()
    with noised(model, 0.1, seed=3):
        first = snapshot(model)
    with noised(model, 0.1, seed=3):
        again = snapshot(model)
    with noised(model, 0.1, seed=4):
        other = snapshot(model)
    names = [n for n, _ in target_weights(model)]
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert all(not torch.equal(first[n], other[n]) for n in names)
    # no shared streams: tensor i+1 under seed s is not tensor i under seed s+1
    w = torch.ones(100, 100)
    a = (gaussian_noise(w, 1, 1.0, seed=0) - w).flatten()
    b = (gaussian_noise(w, 0, 1.0, seed=1) - w).flatten()
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 0.05  # 10,000 pairs: 5 sigma


def test_restore_is_bit_identical_also_after_an_exception():
    model = small_model()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="inside"), noised(model, 0.3, seed=1, include_embeddings=True) as names:
        assert "embed_tokens.weight" in names and "norm.weight" not in names
        assert not torch.equal(model.embed_tokens.weight, before["embed_tokens.weight"])
        raise RuntimeError("inside")
    assert_bits(model, before)

    def edit(i, name, w):  # fails half-way, after some weights were already changed
        if i == 3:
            raise ValueError("edit failed")
        return w + 1.0

    with pytest.raises(ValueError, match="edit failed"), edited_weights(model, edit):
        pass
    assert_bits(model, before)


def test_loss_increase_reports_base_and_edited_loss():
    model = small_model()

    def sq(m):  # a loss that sees every target weight
        return sum(float(p.detach().double().pow(2).sum()) for _, p in target_weights(m))

    out = loss_increase(model, sq, noised(model, 0.5, seed=1))
    assert out["base"] == sq(model) and out["edited"] > out["base"]
    assert out["increase"] == pytest.approx(out["edited"] - out["base"])


def test_loss_rise_is_zero_at_sigma_zero_and_positive_under_noise(trained_run, prepared):
    model, _ = llmcore.load(str(trained_run), device="cpu")
    before = snapshot(model)

    def loss_fn(m):
        return validation_loss(m, str(prepared), 32, 4, 2)["loss"]

    base = loss_fn(model)
    for law, sigma in (("tensor_rms", 0.5), ("init_std", 2.0)):  # similar noise: trained rms ~ 4x init std
        rows = noise_sensitivity(model, loss_fn, [0.0, sigma], seeds=5, laws=[law])
        assert_bits(model, before)
        zero, noisy = rows
        assert zero["base_loss"] == base and zero["rises"] == [0.0] * 5 and zero["rise_std"] == 0.0
        assert len(set(noisy["rises"])) == 5  # five different perturbations
        assert noisy["rise_mean"] == pytest.approx(sum(noisy["rises"]) / 5)
        # positive in expectation: every draw raises the loss, the mean by > 2 standard errors
        assert min(noisy["rises"]) > 0, (law, noisy["rises"])
        assert noisy["rise_mean"] > 2 * noisy["rise_std"] / math.sqrt(5), (law, noisy["rises"])
        assert noisy["loss_mean"] == pytest.approx(base + noisy["rise_mean"], rel=1e-12)


def test_save_at_steps_saves_log_spaced_checkpoints(trained_run, prepared, tmp_path):
    assert checkpoint.complete_steps(trained_run) == [2, 6, 18, 40]
    assert checkpoint.read_state(trained_run / "ckpt-000006")["tokens_seen"] == 6 * 4 * 32
    with pytest.raises(ConfigError, match=r"train.save_at_steps has \[50\]: each step must be in \[1, "
                                          r"train.max_steps=40\]"):
        tiny_config(prepared, tmp_path, "train.max_steps=40", "train.save_at_steps=[4,50]")


def test_finetune_probe_scores_the_finetuned_weights(trained_run, prepared, tmp_path):
    ckpt = trained_run / "ckpt-000018"
    rows = checkpoint_sensitivity([ckpt], str(prepared), [0.1], 1, seq_len=32, batch_size=4, max_batches=2,
                                  finetune={"data": str(prepared), "steps": 2, "lr": 1e-2, "overrides": []},
                                  work_dir=tmp_path, device="cpu")
    (noise, ft) = rows
    assert noise["probe"] == "noise" and ft["probe"] == "finetune" and ft["base_loss"] == noise["base_loss"]
    (run,) = (tmp_path / "finetune").iterdir()
    assert checkpoint.read_state(checkpoint.resolve(run))["step"] == 2
    tuned, _ = llmcore.load(str(run), device="cpu")
    ref = validation_loss(tuned, str(prepared), 32, 4, 2)["loss"]
    assert ft["loss_mean"] == ref and ft["rise_mean"] == pytest.approx(ref - noise["base_loss"], abs=1e-12)
    assert not torch.equal(tuned.layers[0].mlp.up_proj.weight, llmcore.load(str(ckpt), device="cpu")[0]
                           .layers[0].mlp.up_proj.weight)
    again = checkpoint_sensitivity([ckpt], str(prepared), [0.1], 1, seq_len=32, batch_size=4, max_batches=2,
                                   finetune={"data": str(prepared), "steps": 2, "lr": 1e-2, "overrides": []},
                                   work_dir=tmp_path, device="cpu")
    assert again == rows  # a rerun finds the finished fine-tune and scores the same weights


def test_cli_writes_the_table_and_plot(trained_run, prepared, tmp_path, capsys):
    out = tmp_path / "sens"
    argv = ["sensitivity", "--run", str(trained_run), "--data", str(prepared), "--sigmas", "0,0.2", "--seeds", "2",
            "--law", "tensor_rms,init_std", "--max-batches", "2", "--batch-size", "4", "--out", str(out),
            "--device", "cpu"]
    has_plots = importlib.util.find_spec("matplotlib") is not None  # the optional `plots` extra
    if not has_plots:  # refused by name before any work, then the tables alone
        assert main(argv) == 2 and "needs matplotlib" in capsys.readouterr().err and not out.exists()
        argv.append("--no-plot")
    assert main(argv) == 0
    printed = capsys.readouterr().out
    with open(out / "sensitivity.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 * 2 * 2  # checkpoints x laws x sigmas
    assert [int(r["step"]) for r in table[::4]] == [2, 6, 18, 40]
    rows = json.loads((out / "sensitivity.json").read_text())
    for r, j in zip(table, rows):  # the CSV holds the same numbers as the JSON
        assert float(r["rise_mean"]) == j["rise_mean"] and r["law"] == j["law"] and int(r["tokens"]) == j["tokens"]
    assert all(float(r["rise_mean"]) == 0.0 for r in table if float(r["sigma"]) == 0.0)
    md = (out / "sensitivity.md").read_text()
    assert md in printed and md.count("\n") == 2 + 4 and "rise, noise init_std σ=0.2" in md
    assert (out / "sensitivity.png").is_file() == has_plots
    if has_plots:
        assert (out / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"


def test_data_of_another_tokenizer_is_refused_before_any_work(trained_run, prepared, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(prepared, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["tokenizer"]["hash"] = "0" * 16
    (other / "manifest.json").write_text(json.dumps(manifest))
    for kwargs in ({"data": str(other)}, {"data": str(prepared), "finetune": {"data": str(other), "steps": 1,
                                                                              "lr": 1e-3, "overrides": []}}):
        with pytest.raises(DataError, match=f"{other} was made with tokenizer 0000000000000000"):
            checkpoint_sensitivity([trained_run / "ckpt-000002"], sigmas=[0.1], seeds=1, work_dir=tmp_path / "w",
                                   on_checkpoint=pytest.fail, **kwargs)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("args, message", [
    (["--checkpoints", "{tmp}/nope"], "checkpoint not found: {tmp}/nope"),
    (["--run", "{tmp}"], "{tmp} has no checkpoints"),
    (["--run", "{run}", "--data", "{tmp}/nodata"], "{tmp}/nodata is not a prepared data folder"),
    (["--run", "{run}", "--sigmas", "0.1,abc"], "--sigmas: 'abc' is not a number"),
    (["--run", "{run}", "--sigmas", "-0.1"], "--sigmas: '-0.1' is not a finite noise scale >= 0"),
    (["--run", "{run}", "--sigmas", "nan"], "--sigmas: 'nan' is not a finite noise scale >= 0"),
    (["--run", "{run}", "--law", "uniform"], "--law: 'uniform' is not one of tensor_rms, init_std"),
    (["--run", "{run}", "--seeds", "0"], "--seeds must be >= 1, got 0"),
    (["--run", "{run}", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--run", "{run}", "--finetune-steps", "3"], "needs --finetune-data, --finetune-steps (> 0) and --finetune-lr"),
    (["--run", "{run}", "--finetune-data", "{tmp}/nodata", "--finetune-steps", "3", "--finetune-lr", "1e-3"],
     "fine-tune data {tmp}/nodata is not a prepared data folder"),
])
def test_cli_names_bad_input(trained_run, prepared, tmp_path, capsys, args, message):
    fill = {"tmp": str(tmp_path), "run": str(trained_run)}
    argv = ["sensitivity", "--data", str(prepared), "--sigmas", "0.1", "--out", str(tmp_path / "o"), "--no-plot"]
    assert main(argv + [a.format(**fill) for a in args]) == 2
    assert message.format(**fill) in capsys.readouterr().err
    assert not (tmp_path / "o" / "sensitivity.csv").exists()
