"""The forgetting harness: 4-bit RTN quantization against a hand reference, exact restore of
its weight edits (and of llmcore's noise, which it uses), the frontier maths, and a fine-tune
sweep end to end on the `tiny` preset. The noise laws themselves: tests/llmcore/test_sensitivity.py."""

from __future__ import annotations

import math

import pytest
import torch

from llmcore.config.load import load_run_config
from llmcore.errors import ConfigError
from llmcore.eval.loss import validation_loss
from llmcore.eval.perturb import noised, target_weights
from llmcore.model.args import ModelArgs
from llmcore.model.transformer import Transformer
from llmcore.train.loop import Trainer
from recipes.forgetting import (
    ForgettingTracker,
    finetune_sweep,
    frontier,
    pretrain_loss_at,
    quantize_rtn,
    quantized,
)


def small_model(seed=0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelArgs(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=40,
                                 max_seq_len=32))


def test_rtn_matches_hand_reference_per_group():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(5, 13, generator=gen, dtype=torch.float64).float()
    w[2] = 0.0  # an all-zero group must stay zero
    got = quantize_rtn(w, bits=4, group_size=4)  # groups of 4, 4, 4, 1 per row
    for r in range(5):
        for start in range(0, 13, 4):
            g = w[r, start:start + 4].double()
            scale = g.abs().max() / 7
            ref = torch.zeros_like(g) if scale == 0 else torch.clamp(torch.round(g / scale), -8, 7) * scale
            torch.testing.assert_close(got[r, start:start + 4].double(), ref, rtol=0, atol=1e-6)
            if scale > 0:
                assert (got[r, start:start + 4].double() - g).abs().max() <= scale / 2 + 1e-6
                levels = torch.round(got[r, start:start + 4].double() / scale)
                assert levels.abs().max() == 7  # the group's largest weight sits on the grid's end
    per_row = quantize_rtn(w, bits=4, group_size=0)
    assert all(len(set(torch.round(per_row[r] / (w[r].abs().max() / 7)).tolist())) <= 15 for r in (0, 1, 3))
    with pytest.raises(ValueError, match=r"quantize_rtn: expected a 2-D weight, got shape \(3,\)"):
        quantize_rtn(torch.zeros(3))


def test_quantized_and_noised_touch_block_matrices_and_restore_bits():
    model = small_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    targets = {n for n, _ in target_weights(model)}
    assert targets and all(n.startswith("layers.") and before[n].ndim == 2 for n in targets)
    for edit in (quantized(model, group_size=8), noised(model, 0.1, seed=3)):
        with edit as names:
            assert set(names) == targets
            for n, p in model.named_parameters():
                assert torch.equal(p, before[n]) == (n not in targets), n
        for n, p in model.named_parameters():
            assert torch.equal(p, before[n]), f"{n} not restored bit for bit"
    with quantized(model, include_embeddings=True) as names:
        assert "embed_tokens.weight" in names and "norm.weight" not in names


def test_frontier_and_matched_pretraining_loss():
    pts = [(3.0, 2.0), (2.5, 2.4), (2.6, 2.2), (2.0, 3.0), (2.2, 3.5), (2.5, 2.1)]
    assert frontier(pts) == [(2.0, 3.0), (2.5, 2.1), (3.0, 2.0)]
    front = frontier(pts)
    assert pretrain_loss_at(front, 2.25) == pytest.approx(2.55)
    assert pretrain_loss_at(front, 9.0) == 2.0
    assert math.isnan(pretrain_loss_at(front, 1.5))


def test_finetune_sweep_tracks_both_domains(prepared, tmp_path):
    base = ["model.preset=tiny", "model.n_layers=2", "data.seq_len=32", "train.micro_batch_size=2",
            "train.global_batch_size=4", "train.progress=false", "schedule.warmup_steps=0"]
    Trainer(load_run_config(None, [*base, f"data.path={prepared}", f"train.out_dir={tmp_path / 'pre'}",
                                   "train.max_steps=3", "train.eval_batches=1"])).fit()
    runs = finetune_sweep(str(tmp_path / "pre"), str(prepared), str(prepared), [1e-3, 3e-2], steps=2,
                          out_dir=str(tmp_path / "ft"), eval_every=1, eval_batches=2,
                          overrides=["train.micro_batch_size=2", "train.global_batch_size=4",
                                     "schedule.warmup_steps=0"])
    assert [r["lr"] for r in runs] == [1e-3, 3e-2]
    model, _ = __import__("llmcore").load(str(tmp_path / "pre"), device="cpu")
    start_a = validation_loss(model, str(prepared), 32, 2, 2)["loss"]
    for r in runs:
        assert [p[0] for p in r["points"]] == [0, 1, 2]
        assert r["points"][0][2] == pytest.approx(start_a, rel=1e-5)
        assert r["points"][-1][1] < r["points"][0][1]  # fine-tuning lowered the fine-tune loss
    with pytest.raises(ConfigError, match="forgetting.val_path is empty"):
        ForgettingTracker(ForgettingTracker.Config())
