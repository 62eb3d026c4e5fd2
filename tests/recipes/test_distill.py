"""The `distill` recipe with an online teacher: alpha = 0 bit-identical to plain training, the
loss hook against a dense float64 reference (top-k, top-p, dense, reverse, routing), padded
vocabularies, logged metrics, and the named errors before step 1."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from run_configs import RECIPE_RUN, tiny_config
from safetensors.torch import load_file

import llmcore
from llmcore.errors import ConfigError
from llmcore.model.args import ModelArgs
from llmcore.model.transformer import Transformer
from llmcore.recipe.context import LossContext
from llmcore.tokenizer import Tokenizer
from llmcore.train import checkpoint
from llmcore.train.loop import Trainer
from recipes.distill import TEACHER, Distill
from recipes.distill.routing import route_mask


def make_cfg(prepared, out_dir, *extra):
    return tiny_config(prepared, out_dir, *RECIPE_RUN, "train.max_steps=3", *extra)


@pytest.fixture(scope="module")
def teacher_run(prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "run"
    Trainer(make_cfg(prepared, out, "train.max_steps=4", "train.seed=7")).fit()
    return out


def metrics(out_dir):
    return [json.loads(line) for line in open(os.path.join(out_dir, "metrics.jsonl")) if '"loss"' in line]


def weights(out_dir):
    return load_file(str(checkpoint.resolve(out_dir) / "model.safetensors"))


def test_alpha_zero_is_bit_identical_to_plain_training(prepared, teacher_run, tmp_path):
    Trainer(make_cfg(prepared, tmp_path / "base")).fit()
    Trainer(make_cfg(prepared, tmp_path / "kd0", "recipes=[distill]", f"distill.teacher={teacher_run}",
                     "distill.alpha=0")).fit()
    a, b = metrics(tmp_path / "base"), metrics(tmp_path / "kd0")
    assert [m["loss"] for m in a] == [m["loss"] for m in b]
    wa, wb = weights(tmp_path / "base"), weights(tmp_path / "kd0")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_online_kd_trains_logs_and_differs(prepared, teacher_run, tmp_path):
    Trainer(make_cfg(prepared, tmp_path / "base")).fit()
    Trainer(make_cfg(prepared, tmp_path / "kd", "recipes=[distill]", f"distill.teacher={teacher_run}",
                     "distill.alpha=0.5", "distill.temperature=2.0")).fit()
    rows = metrics(tmp_path / "kd")
    last = rows[-1]
    for key in ("distill/hard", "distill/soft", "distill/routed", "distill/topk_mass", "distill/teacher_entropy"):
        assert key in last, key
    # windows of 32 with (almost) every target scored: floor(0.15 * 32) = 4 of 32 routed
    assert 0.10 <= last["distill/routed"] <= 0.15
    assert 0 < last["distill/topk_mass"] <= 1.0 + 1e-6
    assert last["distill/alpha"] == 0.5 and last["distill/temperature"] == 2.0
    assert "distill/soft" in last and last["distill/soft"] > 0
    base = weights(tmp_path / "base")
    kd = weights(tmp_path / "kd")
    assert not all(torch.equal(base[k], kd[k]) for k in base)


ARGS = ModelArgs(vocab_size=37, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=32, max_seq_len=32)


def _hook_case(targets, *, reverse=False, route=0.25, T=2.0, alpha=0.5, student_vocab=37, teacher_vocab=37,
               real_vocab=37, routed_ce="full"):
    torch.manual_seed(0)
    student = Transformer(ARGS.__class__(**{**ARGS.__dict__, "vocab_size": student_vocab})).double()
    teacher = Transformer(ARGS.__class__(**{**ARGS.__dict__, "vocab_size": teacher_vocab})).double()
    teacher.requires_grad_(False)
    recipe = Distill(Distill.Config(teacher="x", targets=targets, top_k=5, top_p=0.7, reverse=reverse,
                                    route_fraction=route, alpha=alpha, temperature=T,
                                    routed_ce=routed_ce))
    recipe.real_vocab = real_vocab
    recipe.kd_vocab = student_vocab if student_vocab == teacher_vocab else real_vocab
    recipe._run = {"max_steps": 10, "schedule": None, "z_loss": 0.0, "seed": 0, "rank": 0}
    B, S = 2, 11
    ids = torch.randint(0, real_vocab, (B, S))
    labels = torch.randint(0, real_vocab, (B, S))
    labels[0, 3] = -100
    doc = torch.zeros(B, S, dtype=torch.long)
    h = student(ids, doc).detach().requires_grad_(True)
    batch = {"input_ids": ids, "labels": labels, "doc_ids": doc, "n_loss_tokens": int((labels >= 0).sum())}
    ctx = LossContext(h, batch, student.output_weight, student, None, 0, None, {TEACHER: teacher})
    got = recipe.loss(ctx)["ntp"][0]
    got.backward()
    # dense float64 reference
    with torch.no_grad():
        zt = teacher(ids, doc).reshape(B * S, -1) @ teacher.output_weight[:real_vocab].T
    V = recipe.kd_vocab if targets == "dense" else student_vocab
    hh = h.detach().reshape(B * S, -1).clone().requires_grad_(True)
    zs = hh @ student.output_weight[:V].detach().T
    y = labels.reshape(-1)
    keep = y >= 0
    ce = torch.nn.functional.cross_entropy(zs, y.clamp(min=0), reduction="none")
    lp_t = torch.log_softmax(zt, -1)
    ent = -(lp_t.exp() * lp_t).sum(-1)
    ls = torch.log_softmax(zs / T, -1)
    if targets == "dense":
        lq = torch.log_softmax(zt[:, :V] / T, -1)
        kl = ((ls.exp() * (ls - lq)) if reverse else (lq.exp() * (lq - ls))).sum(-1)
    else:
        top = lp_t.topk(5, -1)
        vals = top.values
        if targets == "top_p_topk":
            before = vals.exp().cumsum(-1) - vals.exp()
            vals = vals.masked_fill(before >= 0.7, float("-inf"))
        lq = torch.log_softmax(vals / T, -1)
        q = lq.exp()
        kl = torch.where(q > 0, q * (lq - ls.gather(1, top.indices)), torch.zeros_like(q)).sum(-1)
    routed = route_mask(ent.view(B, S), keep.view(B, S), route).reshape(-1)
    kdw = (keep & ~routed).double()
    ce_w = torch.where(routed, 1.0, 1 - alpha) if routed_ce == "full" else torch.full_like(ce, 1 - alpha)
    ref = (torch.where(keep, ce_w * ce, torch.zeros_like(ce)) + alpha * T * T * kdw * kl).sum()
    ref.backward()
    # the teacher targets are built in fp32 (as in training): fp32-level agreement
    torch.testing.assert_close(got.detach().double(), ref.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h.grad.reshape(B * S, -1), hh.grad, rtol=1e-5, atol=1e-7)
    return recipe


@pytest.mark.parametrize("targets,reverse", [("topk", False), ("top_p_topk", False), ("dense", False),
                                             ("dense", True)])
def test_loss_hook_matches_dense_reference(targets, reverse):
    _hook_case(targets, reverse=reverse)


def test_loss_hook_routed_ce_mixed_and_alpha_one():
    _hook_case("topk", routed_ce="mixed")
    _hook_case("topk", alpha=1.0, T=1.0)


def test_padded_vocabularies_are_sliced_to_the_real_vocabulary():
    # the student pads 37 real ids to 40, the teacher to 44: dense KD compares the 37 real ids
    r = _hook_case("dense", student_vocab=40, teacher_vocab=44, real_vocab=37, route=0.0)
    assert r.kd_vocab == 37
    _hook_case("topk", student_vocab=40, teacher_vocab=44, real_vocab=37)


def test_padded_student_trains_with_an_online_teacher(prepared, teacher_run, tmp_path):
    Trainer(make_cfg(prepared, tmp_path / "kd", "train.max_steps=1", "model.vocab_size=520", "recipes=[distill]",
                     f"distill.teacher={teacher_run}", "distill.targets=dense")).fit()
    assert "distill/soft" in metrics(tmp_path / "kd")[-1]


def test_named_errors(prepared, teacher_run, tmp_path, corpus_file):
    with pytest.raises(ConfigError, match="distill.teacher.*checkpoint not found"):
        Trainer(make_cfg(prepared, tmp_path / "a", "recipes=[distill]", f"distill.teacher={tmp_path / 'nope'}"))
    with pytest.raises(ConfigError, match="distill.teacher.*or distill.cache"):
        make_cfg(prepared, tmp_path / "b", "recipes=[distill]")
        Distill(Distill.Config())
    with pytest.raises(ConfigError, match="reverse=true needs distill.targets=dense"):
        Distill(Distill.Config(teacher="x", reverse=True))
    with pytest.raises(ConfigError, match="alpha=1.5"):
        Distill(Distill.Config(teacher="x", alpha=1.5))
    # a teacher with another tokenizer: refused before step 1, naming both hashes
    model, _ = llmcore.load(str(teacher_run), device="cpu")
    other_tok = Tokenizer.train([str(corpus_file)], str(tmp_path / "tok2"), 400)
    bad = Transformer(ModelArgs(**{**model.args.__dict__, "vocab_size": 400}))
    llmcore.save(bad, other_tok, str(tmp_path / "other"))
    with pytest.raises(ConfigError, match="tokenizer mismatch.*400 tokens.*512"):
        Trainer(make_cfg(prepared, tmp_path / "c", "recipes=[distill]", f"distill.teacher={tmp_path / 'other'}"))
    with pytest.raises(ConfigError, match="ntp_weight"):
        Trainer(make_cfg(prepared, tmp_path / "d", "recipes=[distill]", f"distill.teacher={teacher_run}",
                         "train.ntp_weight=0.5")).fit()
    shutil.rmtree(tmp_path / "other")


def test_hf_llama_folder_teacher_equals_its_checkpoint(prepared, teacher_run, tmp_path):
    from llmcore.hf.folder import export_hf

    export_hf(str(teacher_run), str(tmp_path / "hf"))
    for name, teacher in (("ckpt", teacher_run), ("hf", tmp_path / "hf")):
        Trainer(make_cfg(prepared, tmp_path / name, "train.max_steps=2", "recipes=[distill]",
                         f"distill.teacher={teacher}")).fit()
    a, b = metrics(tmp_path / "ckpt"), metrics(tmp_path / "hf")
    assert [m["distill/soft"] for m in a] == pytest.approx([m["distill/soft"] for m in b], rel=1e-6)
    assert [m["loss"] for m in a] == pytest.approx([m["loss"] for m in b], rel=1e-6)


def test_scheduled_alpha_and_temperature_reach_the_loss(prepared, teacher_run, tmp_path):
    Trainer(make_cfg(prepared, tmp_path / "s", "train.max_steps=4", "recipes=[distill]", f"distill.teacher={teacher_run}",
                     "distill.alpha=0.8", "distill.alpha_end=0.2", "distill.alpha_schedule=linear",
                     "distill.temperature=2.0", "distill.temperature_end=1.0", "distill.temperature_schedule=lr")).fit()
    rows = metrics(tmp_path / "s")
    # step s (1-based in the log) trained with the values at 0-based step s - 1; constant LR: T stays 2
    assert [r["distill/alpha"] for r in rows] == pytest.approx([0.8 - 0.6 * s / 4 for s in range(4)])
    assert [r["distill/temperature"] for r in rows] == pytest.approx([2.0] * 4)
