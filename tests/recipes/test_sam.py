"""The `sam` recipe on the `tiny` preset: one step equals a hand-written two-pass reference
(fp32, gradient accumulation, SAM and ASAM), restore is bitwise (fp32 and bf16 autocast), a
non-finite gradient means no perturbation, rho = 0 is bit-identical to no recipe, every_k,
rho schedules, modes and config errors."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from run_configs import RECIPE_RUN, tiny_config
from safetensors.torch import load_file

from llmcore.errors import ConfigError
from llmcore.recipe.context import StepContext
from llmcore.train import checkpoint
from llmcore.train.loop import Trainer
from llmcore.train.optim import param_groups
from recipes.sam import Sam


def make_cfg(prepared, out_dir, *extra):
    return tiny_config(prepared, out_dir, *RECIPE_RUN, "train.max_steps=4", *extra)


def micro_batches(trainer) -> list[dict]:
    """The micro-batches the trainer's next step will draw (the loader is rewound)."""
    state = trainer.loader.state_dict()
    full = trainer.loader.next_batch()
    trainer.loader.load_state_dict(state)
    mb = trainer.micro_batch
    return [{k: v[i * mb:(i + 1) * mb] for k, v in full.items()} for i in range(trainer.accum)]


def reference_sam_step(module, micro, rho, cfg, adaptive_eta=None):
    """SAM written out by hand on a copy of the TrainModule: logits + F.cross_entropy, float64
    norm, explicit w + e, exact restore, clip, torch AdamW. Returns (L(w), L(w + e))."""
    params = [p for p in module.parameters() if p.requires_grad]
    denom = sum(int((b["labels"] != -100).sum()) for b in micro)

    def loss_and_grads():
        for p in params:
            p.grad = None
        total = 0.0
        for b in micro:
            logits = module.model.logits(module.model(b["input_ids"], b["doc_ids"]))  # (B, T, V)
            loss = F.cross_entropy(logits.flatten(0, 1), b["labels"].flatten(), ignore_index=-100,
                                   reduction="sum") / denom
            loss.backward()
            total += float(loss.detach())
        return total

    l_w = loss_and_grads()
    w0 = [p.detach().clone() for p in params]
    with torch.no_grad():
        if adaptive_eta is None:
            direction = [p.grad.double() for p in params]
            norm = math.sqrt(sum(float(d.pow(2).sum()) for d in direction))
        else:
            tw = [p.double().abs() + adaptive_eta for p in params]
            direction = [t * t * p.grad.double() for t, p in zip(tw, params)]
            norm = math.sqrt(sum(float((t * p.grad.double()).pow(2).sum()) for t, p in zip(tw, params)))
        for p, d in zip(params, direction):
            p.add_((rho / (norm + 1e-12) * d).float())
    l_we = loss_and_grads()
    with torch.no_grad():
        for p, w in zip(params, w0):
            p.copy_(w)
        gnorm = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in params))
        for p in params:
            p.grad.mul_(min(1.0, cfg.optim.grad_clip / (gnorm + 1e-6)))
    o = cfg.optim
    opt = torch.optim.AdamW(param_groups(module.named_parameters(), o.weight_decay), lr=o.lr,
                            betas=(o.beta1, o.beta2), eps=o.eps)
    opt.step()
    return l_w, l_we


@pytest.mark.parametrize("variant", ["sam", "asam"])
def test_one_step_matches_hand_written_two_pass_reference(prepared, tmp_path, variant):
    extra = ["sam.adaptive=true", "sam.rho=0.5"] if variant == "asam" else ["sam.rho=0.05"]
    # AdamW's first update is g / (|g| + eps): a large eps keeps it smooth in g, so the
    # comparison measures SAM's gradient, not the float noise of near-zero gradients.
    cfg = make_cfg(prepared, tmp_path / "r", "recipes=[sam]", "optim.eps=1e-3", *extra)
    trainer = Trainer(cfg)
    assert trainer.accum == 2
    import copy

    ref = copy.deepcopy(trainer.engine.module)
    micro = micro_batches(trainer)
    l_w, l_we = reference_sam_step(ref, micro, cfg.recipe["sam"].rho, cfg,
                                   0.01 if variant == "asam" else None)
    metrics = trainer.train_step()
    assert metrics["sam/perturbed"] == 1 and metrics["sam/mode"] == "per-device"
    assert metrics["loss"] == pytest.approx(l_w, rel=1e-6)
    assert metrics["sam/loss_perturbed"] == pytest.approx(l_we, rel=1e-6)
    assert metrics["sam/sharpness"] == pytest.approx(l_we - l_w, abs=1e-6)
    assert l_we > l_w  # an ascent step raises the loss
    for (name, p), r in zip(trainer.engine.module.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.detach(), r.detach(), rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_restore_is_bitwise_through_a_step(prepared, tmp_path, precision):
    # lr = 0: AdamW leaves w untouched, so after the step w must be the exact bits it had
    # before the perturbation, whatever w + e - e would have rounded to
    trainer = Trainer(make_cfg(prepared, tmp_path / "r", "recipes=[sam]", "sam.rho=0.5", "optim.lr=0",
                               f"train.precision={precision}"))
    before = {n: p.detach().clone() for n, p in trainer.engine.module.named_parameters()}
    seen = []
    trainer.engine.module.register_forward_pre_hook(
        lambda mod, args: seen.append(mod.model.embed_tokens.weight.detach().clone()))
    metrics = trainer.train_step()
    assert metrics["sam/perturbed"] == 1 and metrics["sam/sharpness"] > 0
    # pass 2 ran at w + e (each micro-batch), then w came back bit for bit
    assert torch.equal(seen[0], before["model.embed_tokens.weight"])
    assert not torch.equal(seen[2], seen[0])
    for n, p in trainer.engine.module.named_parameters():
        assert torch.equal(p.detach(), before[n]), n


def test_non_finite_gradient_means_no_perturbation(prepared, tmp_path):
    trainer = Trainer(make_cfg(prepared, tmp_path / "r", "recipes=[sam]"))
    sam = trainer.recipes.stepper
    params = [p for _, p in trainer.engine.local_params()]
    seen = []

    def closure(no_sync=False):
        seen.append([p.detach().clone() for p in params])
        for p in params:
            p.grad = torch.full_like(p, 1e-3)
        if len(seen) == 1:
            params[3].grad[0] = float("inf")
        return {"loss": 1.0}

    ctx = StepContext(trainer.engine, 0, 1.0)
    sam.optimizer_step(ctx, closure)
    assert len(seen) == 2
    assert all(torch.equal(a, b) for a, b in zip(seen[0], seen[1])), "pass 2 must run at w"
    assert ctx.metrics["sam/skipped_nonfinite"] == 1 and ctx.metrics["sam/perturbed"] == 0
    assert math.isnan(ctx.metrics["sam/ascent_norm"]) and "sam/sharpness" not in ctx.metrics
    assert not torch.equal(params[0], seen[0][0]), "the (finite) pass-2 gradient still steps"
    sam.optimizer_step(StepContext(trainer.engine, 1, 1.0), closure)
    assert sam.skipped_total == 1  # the second step's gradients were finite


def _trunk(out_dir):
    return load_file(str(checkpoint.resolve(out_dir) / "model.safetensors"))


def _rows(out_dir):
    return [json.loads(line) for line in open(os.path.join(out_dir, "metrics.jsonl")) if '"loss"' in line]


def test_rho_zero_is_bit_identical_to_no_recipe(prepared, tmp_path):
    Trainer(make_cfg(prepared, tmp_path / "base")).fit()
    Trainer(make_cfg(prepared, tmp_path / "off", "recipes=[sam]", "sam.rho=0")).fit()
    a, b = _trunk(tmp_path / "base"), _trunk(tmp_path / "off")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in _rows(tmp_path / "base")] == [r["loss"] for r in _rows(tmp_path / "off")]


def test_every_k_alternates_and_global_m_equals_per_device_on_one_process(prepared, tmp_path):
    Trainer(make_cfg(prepared, tmp_path / "k", "recipes=[sam]", "sam.every_k=2")).fit()
    assert [r["sam/perturbed"] for r in _rows(tmp_path / "k")] == [1, 0, 1, 0]
    Trainer(make_cfg(prepared, tmp_path / "pd", "recipes=[sam]", "train.max_steps=2")).fit()
    Trainer(make_cfg(prepared, tmp_path / "gm", "recipes=[sam]", "train.max_steps=2", "sam.mode=global-m")).fit()
    assert [r["sam/mode"] for r in _rows(tmp_path / "gm")] == ["global-m"] * 2
    a, b = _trunk(tmp_path / "pd"), _trunk(tmp_path / "gm")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_rho_schedules():
    sam = Sam(Sam.Config(rho=0.2, warmup_steps=4))
    assert [sam.rho_at(s) for s in (0, 1, 3, 4, 100)] == pytest.approx([0.05, 0.1, 0.2, 0.2, 0.2])
    lin = Sam(Sam.Config(rho=1.0, schedule="linear", final_rho=0.1, warmup_steps=2))
    with pytest.raises(ConfigError, match="sam.schedule=linear needs train.max_steps"):
        lin.rho_at(5)
    lin.max_steps = 12  # steps 0..11: warmup 0,1; linear 2 -> 11
    assert [lin.rho_at(s) for s in (0, 1, 2, 11, 20)] == pytest.approx([0.5, 1.0, 1.0, 0.1, 0.1])
    assert lin.rho_at(6) == pytest.approx(1.0 - 0.9 * 4 / 9)


def test_config_errors(prepared, tmp_path):
    for override, message in [("sam.schedule=cosine", "sam.schedule='cosine' is not one of constant, linear"),
                              ("sam.every_k=0", "sam.every_k must be >= 1"),
                              ("sam.mode=local", "sam.mode='local' is not one of auto, per-device, global-m"),
                              ("sam.rho=-1", "sam.rho must be >= 0")]:
        with pytest.raises(ConfigError, match=message):
            Trainer(make_cfg(prepared, tmp_path / "r", "recipes=[sam]", override))

    class Sharded:
        sharded_grads, backend = True, "deepspeed"

    assert Sam(Sam.Config()).mode(Sharded()) == "global-m"
    with pytest.raises(ConfigError, match="sam.mode=per-device needs per-device gradients"):
        Sam(Sam.Config(mode="per-device")).mode(Sharded())
