"""The `future_summary` recipe: targets (bags never cross a document end, MTP shifts, the
reverse-LM index mapping), the loss hook against a dense reference, every kind training its
heads through the trainer, weight 0 / not listed bit-identical, aux heads dropped at export
with the exported model equal to the trunk, tf-idf weights, and config errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from run_configs import RECIPE_RUN, tiny_config
from safetensors.torch import load_file

import llmcore
from llmcore.config.load import load_run_config
from llmcore.data import stats, to_batch, write_token_folder
from llmcore.data.shards import TokenShards
from llmcore.errors import ConfigError
from llmcore.hf import convert as hf
from llmcore.hf.folder import export_hf
from llmcore.model.args import ModelArgs
from llmcore.model.transformer import Transformer
from llmcore.recipe.context import LossContext
from llmcore.train import checkpoint
from llmcore.data.sample import Sample
from llmcore.train.inputs import sample_transform
from llmcore.train.loop import Trainer
from recipes.future_summary import FutureSummary, targets, tfidf
from recipes.future_summary.heads import FutureHeads

ARGS = ModelArgs(vocab_size=53, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64,
                 max_seq_len=64)


def make_cfg(prepared, out_dir, *extra):
    return tiny_config(prepared, out_dir, *RECIPE_RUN, "train.max_steps=3", *extra)


def _batch(B=3, T=23, seed=0, vocab=ARGS.vocab_size):
    """Random ids with 1-3 contiguous documents per row."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, T), generator=gen)
    doc = torch.zeros(B, T, dtype=torch.long)
    for b in range(B):
        for cut in sorted(torch.randint(1, T, (b,), generator=gen).tolist()):
            doc[b, cut:] += 1
    return ids, doc


# --- targets -------------------------------------------------------------------------------

@pytest.mark.parametrize("tau", [2, 5, 30])
def test_future_bag_equals_bruteforce_and_stays_in_document(tau):
    ids, doc = _batch()
    ids[0, 5] = ids[0, 6] = 7  # a repeat and an ignored id
    ignore = torch.tensor([11])
    ids[1, 9] = 11
    bag, complete = targets.future_bag(ids, doc, tau, ignore)
    B, T = ids.shape
    assert bag.shape == (B, T, tau - 1)
    for b in range(B):
        for t in range(T):
            want = {int(ids[b, j]) for j in range(t + 2, min(t + tau, T - 1) + 1)
                    if doc[b, j] == doc[b, t] and ids[b, j] != 11}
            got = [int(i) for i in bag[b, t] if i >= 0]
            assert len(got) == len(set(got)) and set(got) == want, (b, t)
            ends = any(doc[b, j] != doc[b, t] for j in range(t + 1, T))
            assert bool(complete[b, t]) == (t + tau <= T - 1 or ends), (b, t)


def test_bags_of_one_document_ignore_the_next():
    ids, doc = _batch(B=1, T=20)
    doc[:] = (torch.arange(20) >= 8).long()[None]
    bag, _ = targets.future_bag(ids, doc, 12)
    other = ids.clone()
    other[0, 8:] = (other[0, 8:] + 1) % ARGS.vocab_size  # rewrite document B entirely
    bag2, _ = targets.future_bag(other, doc, 12)
    assert torch.equal(bag[0, :8], bag2[0, :8])
    assert (bag[0, 6:8] == -1).all()  # x_{t+2} already in document B: an empty bag
    assert not torch.equal(bag[0, 8:], bag2[0, 8:])


def test_shifted_labels_equal_bruteforce():
    ids, doc = _batch()
    labels = torch.roll(ids, -1, 1)
    labels[0, 3] = -100
    for offset in (1, 2, 4):
        got = targets.shifted_labels(labels, doc, offset)
        B, T = labels.shape
        for b in range(B):
            for t in range(T):
                s = t + offset - 1
                want = int(labels[b, s]) if s < T and doc[b, s] == doc[b, t] else -100
                assert int(got[b, t]) == want, (offset, b, t)


def test_revlm_target_is_the_state_that_predicts_x_t_plus_1():
    torch.manual_seed(0)
    rev = Transformer(ARGS).eval()
    ids, doc = _batch(B=2, T=12, seed=3)
    doc[0] = 0
    doc[1] = (torch.arange(12) >= 6).long()
    with torch.no_grad():
        g, rows = targets.revlm_targets(rev(*targets.revlm_inputs(ids, doc)), doc)
        B, T = ids.shape
        for b in range(B):
            for t in range(T):
                expect_row = t <= T - 3 and bool(doc[b, t + 2] == doc[b, t])
                assert bool(rows[b, t]) == expect_row, (b, t)
                if t > T - 3:
                    continue
                # the reverse LM reading x_{T-1} .. x_{t+2} alone: its last state
                alone = rev(ids[b:b + 1, t + 2:].flip(1), doc[b:b + 1, t + 2:].flip(1))[0, -1]
                torch.testing.assert_close(g[b, t], alone, atol=1e-5, rtol=1e-5)
    # ... and in a data.reverse=true batch, the position holding x_{t+2} has label x_{t+1}
    x = np.arange(100, 113)  # x_0 .. x_T, T = 12
    fwd = Sample(tokens=x, doc_ids=np.zeros(13, dtype=np.int64), loss_mask=np.ones(13, dtype=bool))
    rb = to_batch([sample_transform(True, None)(fwd, None)])
    for t in range(T - 2):
        p = int((rb["input_ids"][0] == x[t + 2]).nonzero())
        assert int(rb["labels"][0, p]) == x[t + 1]


def test_ds_mtp_depth_k_reads_tokens_up_to_t_plus_k():
    torch.manual_seed(0)
    model = Transformer(ARGS)
    heads = FutureHeads(ARGS, "ds_mtp", 2)
    ids, _ = _batch(B=1, T=16)
    cos, sin = model.rope(torch.arange(16))

    def run(x):
        with torch.no_grad():
            return heads.sequential(model(x), x, model.embed_tokens, cos, sin)

    j = 10
    changed = ids.clone()
    changed[0, j] = (changed[0, j] + 1) % ARGS.vocab_size
    a, b = run(ids), run(changed)
    for k in (1, 2):
        diff = (a[k - 1, 0] - b[k - 1, 0]).abs().amax(-1)
        assert (diff[:j - k] == 0).all() and diff[j - k] > 0, k


# --- the loss hook ---------------------------------------------------------------------------

def _ctx(recipe, ids, doc, labels):
    torch.manual_seed(0)
    model = Transformer(ARGS)
    aux = nn.ModuleDict({"future_summary": recipe.modules(ARGS)})
    batch = {"input_ids": ids, "labels": labels, "doc_ids": doc}
    return LossContext(model(ids, doc), batch, model.output_weight, model, aux, 0, None), model, aux


def test_fsp_bce_loss_equals_dense_reference():
    ids, doc = _batch()
    labels = torch.roll(ids, -1, 1)
    labels[:, :4] = -100  # e.g. a prompt
    recipe = FutureSummary(FutureSummary.Config(kind="fsp_bce", tau=4, weight=0.5))
    ctx, model, aux = _ctx(recipe, ids, doc, labels)
    (name, (value, count)), = recipe.loss(ctx).items()
    cos, sin = model.rope(torch.arange(ids.shape[1]))
    z = aux["future_summary"].heads[0](ctx.hidden, cos, sin, doc) @ model.output_weight.t()  # (B, T, V)
    bag, complete = targets.future_bag(ids, doc, 4)
    multi_hot = torch.zeros_like(z).scatter_(2, bag.clamp(min=0), (bag >= 0).float())
    rows = (labels != -100) & complete
    per_row = (F.softplus(z) - multi_hot * z).sum(-1) / ARGS.vocab_size
    assert name == "bce" and count == int(rows.sum())
    torch.testing.assert_close(value, 0.5 * per_row[rows].sum())


def test_mtp_loss_equals_per_head_cross_entropy():
    ids, doc = _batch()
    labels = torch.roll(ids, -1, 1)
    recipe = FutureSummary(FutureSummary.Config(kind="mtp", n_heads=2, weight=0.3))
    ctx, model, aux = _ctx(recipe, ids, doc, labels)
    terms = recipe.loss(ctx)
    assert list(terms) == ["x2", "x3"]
    cos, sin = model.rope(torch.arange(ids.shape[1]))
    for k, name in enumerate(terms):
        logits = aux["future_summary"].heads[k](ctx.hidden, cos, sin, doc) @ model.output_weight.t()
        tgt = targets.shifted_labels(labels, doc, k + 2)
        ce = F.cross_entropy(logits.reshape(-1, ARGS.vocab_size), tgt.reshape(-1), reduction="sum")
        torch.testing.assert_close(terms[name][0], 0.3 * ce, rtol=1e-5, atol=1e-4)
        assert terms[name][1] == int((tgt != -100).sum())


# --- through the trainer ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def fsp_run(prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("fsp") / "run"
    trainer = Trainer(make_cfg(prepared, out, "recipes=[future_summary]", "future_summary.kind=fsp_bce"))
    result = trainer.fit()
    return trainer, out, result


def test_weight_zero_and_unlisted_are_bit_identical(prepared, tmp_path, fsp_run):
    Trainer(make_cfg(prepared, tmp_path / "base")).fit()
    Trainer(make_cfg(prepared, tmp_path / "zero", "recipes=[future_summary]", "future_summary.weight=0")).fit()
    base, zero = (load_file(str(checkpoint.resolve(tmp_path / n) / "model.safetensors")) for n in ("base", "zero"))
    assert all(torch.equal(base[k], zero[k]) for k in base)
    assert not (checkpoint.resolve(tmp_path / "zero") / "aux.safetensors").exists()
    on = load_file(str(checkpoint.resolve(fsp_run[1]) / "model.safetensors"))
    assert not all(torch.equal(base[k], on[k]) for k in base)  # the recipe on does change training


@pytest.mark.parametrize("kind", ["mtp", "ds_mtp"])
def test_mtp_kinds_train_their_heads(prepared, tmp_path, kind):
    trainer = Trainer(make_cfg(prepared, tmp_path / kind, "recipes=[future_summary]",
                               f"future_summary.kind={kind}", "future_summary.n_heads=2"))
    before = {k: v.clone() for k, v in trainer.engine.module.aux.state_dict().items()}
    result = trainer.fit()
    assert np.isfinite(result["future_summary/x2"]) and np.isfinite(result["future_summary/x3"])
    after = trainer.engine.module.aux.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before if k.endswith("q_proj.weight"))


def test_aux_heads_dropped_at_export_and_exported_model_is_the_trunk(fsp_run, tmp_path):
    trainer, out, result = fsp_run
    assert result["future_summary/bce"] > 0
    ckpt = checkpoint.resolve(out)
    trunk = load_file(str(ckpt / "model.safetensors"))
    aux = load_file(str(ckpt / "aux.safetensors"))
    assert set(trunk) == set(Transformer(trainer.model_args).state_dict())
    assert aux and all(k.startswith("future_summary.heads.0.") for k in aux)
    live = trainer.engine.module.model.state_dict()
    model, _ = llmcore.load(str(out), device="cpu")
    assert all(torch.equal(model.state_dict()[k], live[k]) and torch.equal(trunk[k], live[k]) for k in trunk)
    folder = export_hf(str(out), str(tmp_path / "hf"))
    exported = load_file(str(folder / "model.safetensors"))
    expected = hf.to_hf(trunk, trainer.model_args)
    assert set(exported) == set(expected)
    assert all(torch.equal(exported[k], expected[k]) for k in expected)


def test_fsp_revlm_uses_a_frozen_reverse_lm(prepared, tmp_path):
    Trainer(make_cfg(prepared, tmp_path / "rev", "data.reverse=true", "train.max_steps=2")).fit()
    trainer = Trainer(make_cfg(prepared, tmp_path / "fsp", "recipes=[future_summary]", "train.max_steps=2",
                               "future_summary.kind=fsp_revlm", f"future_summary.revlm_checkpoint={tmp_path / 'rev'}"))
    result = trainer.fit()
    assert np.isfinite(result["future_summary/mse"]) and result["future_summary/mse"] > 0
    revlm = trainer.recipes.recipes[0].revlm
    saved = load_file(str(checkpoint.resolve(tmp_path / "rev") / "model.safetensors"))
    assert all(torch.equal(revlm.state_dict()[k], saved[k]) for k in saved)  # untouched by training
    aux = load_file(str(checkpoint.resolve(tmp_path / "fsp") / "aux.safetensors"))
    assert aux["future_summary.proj.weight"].shape == (revlm.args.d_model, trainer.model_args.d_model)
    assert not any("embed_tokens" in k for k in aux)  # the reverse LM is not saved with the run
    with pytest.raises(ConfigError, match="trained left to right"):
        Trainer(make_cfg(prepared, tmp_path / "bad", "recipes=[future_summary]", "future_summary.kind=fsp_revlm",
                         f"future_summary.revlm_checkpoint={tmp_path / 'fsp'}"))


def test_tfidf_weights_and_their_cache(prepared, tmp_path):
    docs = [[1, 2, 2, 3], [3, 4], [5, 5, 5, 1, 6, 7, 2], [2], [8, 9, 1]]
    write_token_folder(str(tmp_path / "d"), {"train": docs}, tokenizer={"hash": "h", "vocab_size": 12})
    shards = TokenShards(str(tmp_path / "d"), "train")
    want = np.array([sum(i in d for d in docs) for i in range(12)])
    for chunk in (1, 3, 5, 100):  # documents spanning chunk boundaries count once
        assert stats.document_frequency(shards, chunk).tolist() == want.tolist()
    idf = tfidf.idf_weights([str(tmp_path / "d")], 14)
    assert np.allclose(idf[:12], np.log(6 / (1 + want)) + 1) and np.allclose(idf[12:], np.log(6) + 1)
    assert (tmp_path / "d" / stats.DF_FILE).is_file()
    data = shutil.copytree(prepared, tmp_path / "data")
    trainer = Trainer(make_cfg(data, tmp_path / "run", "recipes=[future_summary]", "future_summary.tfidf=true",
                               "train.max_steps=1"))
    assert np.isfinite(trainer.fit()["future_summary/bce"])
    idf = trainer.recipes.recipes[0].idf
    assert idf.shape == (trainer.model_args.vocab_size,) and idf.min() >= 1 and idf.max() > idf.min()
    assert (data / stats.DF_FILE).is_file()


@pytest.mark.parametrize("name", ["fsp_bce_tiny", "fsp_revlm_reverse_tiny", "fsp_revlm_tiny", "mtp_tiny",
                                  "mtp_deepseek_tiny"])
def test_shipped_configs_load(name):
    path = Path(__file__).resolve().parents[2] / "recipes" / "configs" / f"{name}.yaml"
    cfg = load_run_config(str(path), [])
    if name == "fsp_revlm_reverse_tiny":
        assert cfg.data.reverse and cfg.recipes == []
    else:
        kind = cfg.recipe["future_summary"].kind
        assert cfg.recipes == ["future_summary"] and kind == name.rsplit("_", 1)[0].replace("mtp_deepseek", "ds_mtp")
        FutureSummary(cfg.recipe["future_summary"])  # its options pass the recipe's checks


@pytest.mark.parametrize("override, message", [
    ("future_summary.kind=nope", "future_summary.kind='nope' is not one of"),
    ("future_summary.kind=fsp_revlm", "needs future_summary.revlm_checkpoint"),
    ("future_summary.tau=1", "future_summary.tau=1 must be >= 2"),
    ("future_summary.norm=mean", "future_summary.norm='mean' is not one of"),
])
def test_config_errors(prepared, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        Trainer(make_cfg(prepared, tmp_path / "r", "recipes=[future_summary]", override))
