"""The offline teacher cache (`llmcore distill cache`): rows equal the teacher recomputed on
the same window, a copying teacher's rows sit where the batch expects them, a resumed write
equals an uninterrupted one file for file, another teacher or other shards are refused
naming both, and a cached-KD run resumed mid-way follows the uninterrupted run exactly."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from run_configs import RECIPE_RUN, tiny_config

import llmcore
from llmcore.cli.main import main
from llmcore.data.prepare import prepare
from llmcore.data.shards import TokenShards
from llmcore.data.sidecar import Sidecar
from llmcore.data.sidecar_writer import SidecarWriter
from llmcore.errors import ConfigError, DataError
from llmcore.tokenizer import Tokenizer
from llmcore.train import inputs
from llmcore.train.loop import Trainer
from recipes.distill.cache import layout_of, read_cache_info, sidecar_names, write_cache
from recipes.distill.targets import teacher_topk

CACHE_SIDECARS = "data.sidecars=[kd_ids,kd_logp,kd_lse,kd_entropy]"


def make_cfg(data, out_dir, *extra):
    return tiny_config(data, out_dir, *RECIPE_RUN, "train.max_steps=3", *extra)


@pytest.fixture(scope="module")
def sharded(prepared, tmp_path_factory, corpus_maker):
    """A quarter of the test corpus with the prepared folder's tokenizer, in shards of at most
    1500 tokens (several per split): small, so each cache write takes a fraction of a second."""
    root = tmp_path_factory.mktemp("sharded")
    tok = Tokenizer.load(str(prepared / "tokenizer"))
    corpus = corpus_maker(root / "corpus.txt", n_docs=150, seed=1)
    prepare([str(corpus)], tok, str(root / "data"), val_fraction=0.1, progress=False, shard_tokens=1500)
    shutil.copytree(prepared / "tokenizer", root / "data" / "tokenizer")
    return root / "data"


@pytest.fixture(scope="module")
def teacher(sharded, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache_teacher") / "run"
    Trainer(make_cfg(sharded, out, "train.seed=3")).fit()
    return out


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _digests(data, cache):
    root = os.path.join(data, "sidecars")
    out = {}
    for name in sorted(os.listdir(root)):
        if name.startswith(cache + "_"):
            for dirpath, _, files in os.walk(os.path.join(root, name)):
                for f in files:
                    if f.endswith(".npy"):
                        with open(os.path.join(dirpath, f), "rb") as fh:
                            out[os.path.relpath(os.path.join(dirpath, f), root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def test_cache_rows_equal_the_teacher_on_the_same_window(sharded, teacher, tmp_path):
    data = _copy(sharded, tmp_path / "d")
    info = write_cache(str(teacher), str(data), "kd", top_k=8, seq_len=32, progress=False)
    assert info["bytes_per_token"] == 8 * 2 + 8 * 2 + 4 + 4
    shards = TokenShards(str(data), "train")
    assert len(shards.entries) >= 3
    ids, logp, ent = (Sidecar(shards, f"kd_{p}") for p in ("ids", "logp", "entropy"))
    assert ids.dtype == np.uint16 and logp.dtype == np.float16
    model, _ = llmcore.load(str(teacher), device="cpu")
    first = shards.shard_span(1)[0]
    for a in (first - 1, first - 1 + 64):  # windows i = 0 and 2 of shard 1, anchored at its start
        x = torch.from_numpy(shards.read(a, 32))[None]
        doc = torch.from_numpy(shards.doc_ids(a, 32))[None]
        with torch.no_grad():
            ref = teacher_topk(model(x, doc)[0], model.output_weight, 8)
        assert np.array_equal(ids.read(a + 1, 32).astype(np.int64), ref["ids"].numpy())
        np.testing.assert_allclose(logp.read(a + 1, 32).astype(np.float32), ref["logp"].numpy(), rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(ent.read(a + 1, 32), ref["entropy"].numpy(), rtol=1e-5, atol=1e-5)
    assert np.isnan(ent.read(0, 1)[0]) and np.isinf(logp.read(0, 1)).all()  # the stream's first token


def test_resumed_write_equals_uninterrupted_and_settings_are_checked(sharded, teacher, tmp_path, monkeypatch):
    whole = _copy(sharded, tmp_path / "whole")
    write_cache(str(teacher), str(whole), "kd", sample=6, seq_len=32, seed=5, progress=False)
    part = _copy(sharded, tmp_path / "part")
    real_write, calls = SidecarWriter.write, {"n": 0}

    def crash_after_nine(self, split, k, array):
        calls["n"] += 1
        if calls["n"] > 9:  # shard 1's n, nrep and ids written, its counts / lse / entropy not: a mixed shard
            raise KeyboardInterrupt
        return real_write(self, split, k, array)

    monkeypatch.setattr(SidecarWriter, "write", crash_after_nine)
    with pytest.raises(KeyboardInterrupt):
        write_cache(str(teacher), str(part), "kd", sample=6, seq_len=32, seed=5, progress=False)
    monkeypatch.setattr(SidecarWriter, "write", real_write)
    with pytest.raises(DataError, match="incomplete"):
        Sidecar(TokenShards(str(part), "train"), "kd_lse")
    write_cache(str(teacher), str(part), "kd", sample=6, seq_len=32, seed=5, progress=False)
    assert _digests(part, "kd") == _digests(whole, "kd") and len(_digests(whole, "kd")) >= 18
    shards = TokenShards(str(part), "train")
    n, nrep, count = (Sidecar(shards, f"kd_{p}").read(0, len(shards)).astype(np.int64) for p in ("n", "nrep", "count"))
    Sidecar(shards, "kd_ids")  # opens: aligned with its lengths
    assert np.array_equal((count > 0).sum(-1), nrep) and (count[count > 0] >= 2).all()
    assert (count.sum(-1) + n - nrep == 6)[1:].all() and n[0] == 0  # every row's counts add up to its 6 draws
    with pytest.raises(DataError, match="seed.*5.*there.*6.*asked"):
        write_cache(str(teacher), str(part), "kd", sample=6, seq_len=32, seed=6, progress=False)


def test_cache_of_another_teacher_or_other_shards_is_refused(sharded, teacher, tmp_path, prepared):
    data = _copy(sharded, tmp_path / "d")
    write_cache(str(teacher), str(data), "kd", top_k=4, seq_len=32, progress=False)
    other = tmp_path / "other"
    model, tok = llmcore.load(str(teacher), device="cpu")
    with torch.no_grad():
        model.norm.weight.mul_(1.5)
    llmcore.save(model, tok, str(other))
    with pytest.raises(DataError, match="other settings made_from"):
        write_cache(str(other), str(data), "kd", top_k=4, seq_len=32, progress=False)
    cfg = make_cfg(data, tmp_path / "run", "recipes=[distill]", "distill.cache=kd", f"distill.teacher={other}",
                   "distill.top_k=4", CACHE_SIDECARS)
    with pytest.raises(ConfigError, match=f"made by teacher {teacher.resolve()}.*distill.teacher is {other.resolve()}"):
        Trainer(cfg).fit()
    # the same cache beside other shards (the plain prepared folder) is refused by the loader
    moved = _copy(prepared, tmp_path / "moved")
    shutil.copytree(data / "sidecars", moved / "sidecars")
    with pytest.raises(DataError, match="made from (different shards|\\d+ shards)"):
        Trainer(make_cfg(moved, tmp_path / "run2", "recipes=[distill]", "distill.cache=kd", "distill.top_k=4",
                         CACHE_SIDECARS))


def test_copying_teacher_rows_align_with_the_batch(sharded, teacher, tmp_path):
    """A teacher whose most likely next token is the current one: the cached top-1 of the row
    a batch position reads must be that position's input token."""
    data = _copy(sharded, tmp_path / "d")
    model, tok = llmcore.load(str(teacher), device="cpu")
    with torch.no_grad():
        for layer in model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        e = model.embed_tokens.weight
        e.copy_(torch.nn.functional.normalize(e, dim=-1) * 4)
        model.norm.weight.fill_(1.0)
    copier = tmp_path / "copier"
    llmcore.save(model, tok, str(copier))
    write_cache(str(copier), str(data), "kd", top_k=2, seq_len=32, progress=False)
    cfg = make_cfg(data, tmp_path / "run", "recipes=[distill]", "distill.cache=kd", "distill.top_k=2", CACHE_SIDECARS)
    loader = inputs.train_loader(cfg, tok, 0, 1, None)
    for _ in range(3):
        b = loader.next_batch()
        ok = torch.isfinite(b["kd_entropy"])
        assert ok.float().mean() > 0.95
        assert torch.equal(b["kd_ids"][..., 0][ok], b["input_ids"][ok])


def test_cached_kd_trains_and_a_resumed_run_follows_the_uninterrupted_one(sharded, teacher, tmp_path, capsys,
                                                                           monkeypatch):
    data = _copy(sharded, tmp_path / "d")
    monkeypatch.setenv("LLMCORE_COMMANDS", "distill=recipes.distill:add_command")
    assert main(["distill", "cache", "--teacher", str(teacher), "--data", str(data), "--out", "kd", "--top-k", "8",
                 "--seq-len", "32", "--no-progress"]) == 0
    assert "40 bytes per token" in capsys.readouterr().out  # 8 x (2 + 2) + 4 + 4
    run = ("recipes=[distill]", "distill.cache=kd", "distill.top_k=8", f"distill.teacher={teacher}",
           CACHE_SIDECARS, "train.max_steps=4", "train.save_every=2")
    Trainer(make_cfg(data, tmp_path / "whole", *run)).fit()
    Trainer(make_cfg(data, tmp_path / "resumed", *run[:-2], "train.max_steps=2", "train.save_every=2")).fit()
    Trainer(make_cfg(data, tmp_path / "resumed", *run)).fit()

    def losses(out):
        return {m["step"]: (m["loss"], m["distill/soft"]) for m in
                (json.loads(line) for line in open(out / "metrics.jsonl")) if "distill/soft" in m}
    whole, resumed = losses(tmp_path / "whole"), losses(tmp_path / "resumed")
    assert len(whole) == 4 and whole == resumed
    assert 0 < min(s for _, s in whole.values())
    # the command refuses a second kind into the same name, naming the difference
    assert main(["distill", "cache", "--teacher", str(teacher), "--data", str(data), "--out", "kd", "--sample", "4",
                 "--seq-len", "32", "--no-progress"]) == 2
    assert "exists with other settings" in capsys.readouterr().err
    assert sidecar_names("kd", "counts") == ["kd_n", "kd_ids", "kd_count", "kd_lse", "kd_entropy"]


def test_sampled_cache_of_either_layout_gives_the_same_targets(sharded, teacher, tmp_path, monkeypatch):
    """The counts layout against the first one (the draws themselves), made from the same
    draws of the same seed: the recipe's targets are the very same tensors; the old layout
    still reads; the new one is 10 + 2u + r bytes a token and trains."""
    import recipes.distill.cache as cache_module
    from recipes.distill import Distill

    new = _copy(sharded, tmp_path / "new")
    draws, real_count = [], cache_module.count_draws
    monkeypatch.setattr(cache_module, "count_draws", lambda d, has: draws.append(d.clone()) or real_count(d, has))
    info = write_cache(str(teacher), str(new), "kd", sample=6, seq_len=32, seed=5, splits=["train"], progress=False)
    shards = TokenShards(str(new), "train")
    assert len(draws) == len(shards.entries) >= 3
    u, r = (Sidecar(shards, f"kd_{p}").read(0, len(shards)).astype(np.float64) for p in ("n", "nrep"))
    assert info["bytes_per_token"] == round(10 + 2 * u.mean() + r.mean(), 2) and u.max() <= 6 and u[0] == 0
    # the first layout by hand, from the same draws: ids [6] per token, lse, entropy, made_from without layout
    old = _copy(sharded, tmp_path / "old")
    made = {k: v for k, v in read_cache_info(str(new), "kd").items() if k != "layout"}
    parts = {"ids": (np.uint16, (6,), 0), "lse": (np.float32, (), 0.0), "entropy": (np.float32, (), float("nan"))}
    for part, (dtype, shape, fill) in parts.items():
        w = SidecarWriter(str(old), f"kd_{part}", kind="token", dtype=dtype, shape=shape, fill=fill, made_from=made,
                          splits=["train"])
        for k in range(len(shards.entries)):
            first, n, _, _ = shards.shard_span(k)
            w.write("train", k, draws[k].numpy() if part == "ids" else Sidecar(shards, f"kd_{part}").read(first, n))

    def recipe_and_loader(data, sidecars):
        cfg = make_cfg(data, tmp_path / "run", "recipes=[distill]", "distill.cache=kd", "distill.targets=sampled",
                       f"data.sidecars=[{','.join(sidecars)}]")
        tok = Tokenizer.load(str(data / "tokenizer"))
        r = Distill(Distill.Config(cache="kd", targets="sampled"))
        r.bind(tok)
        r._check_cache(cfg)
        return r, inputs.train_loader(cfg, tok, 0, 1, None)

    r_new, l_new = recipe_and_loader(new, sidecar_names("kd", "counts"))
    r_old, l_old = recipe_and_loader(old, sidecar_names("kd", "draws"))
    assert (r_new.cache_layout, r_old.cache_layout) == ("counts", "draws")
    for _ in range(4):
        b_new, b_old = l_new.next_batch(), l_old.next_batch()
        assert torch.equal(b_new["input_ids"], b_old["input_ids"])
        (t_new, e_new, _, ok_new), (t_old, e_old, _, ok_old) = (
            r._cached(SimpleNamespace(batch=b), 1.0) for r, b in ((r_new, b_new), (r_old, b_old)))
        assert torch.equal(ok_new, ok_old) and ok_new.float().mean() > 0.9
        assert torch.equal(e_new[ok_new], e_old[ok_old])
        for key in ("teacher_ids", "teacher_logprobs"):
            assert torch.equal(t_new[key], t_old[key]), key
    with pytest.raises(ConfigError, match=r"needs data.sidecars to list \['kd_n', 'kd_ids', 'kd_count', 'kd_lse', "
                                          r"'kd_entropy'\] \(missing \['kd_n', 'kd_count'\]\)"):
        recipe_and_loader(new, sidecar_names("kd", "draws"))
    with pytest.raises(DataError, match="a sampled distillation cache of layout 'bits': this version reads"):
        layout_of({"mode": "sampled", "layout": "bits"})
    write_cache(str(teacher), str(new), "kd", sample=6, seq_len=32, seed=5, progress=False)  # + val: resumes
    out = tmp_path / "trained"
    Trainer(make_cfg(new, out, "recipes=[distill]", "distill.cache=kd", "distill.targets=sampled",
                     f"data.sidecars=[{','.join(sidecar_names('kd', 'counts'))}]")).fit()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    soft = [m["distill/soft"] for m in map(json.loads, lines) if "distill/soft" in m]
    assert len(soft) == 3 and min(soft) > 0


def test_a_shard_s_draws_counted_in_row_chunks_equal_one_count():
    import numpy as np

    from recipes.distill.cache import _counted

    rng = np.random.default_rng(0)
    draws = rng.integers(0, 9, size=(11, 6)).astype(np.uint16)  # small vocab: repeats in most rows
    has_row = np.ones(11, dtype=bool)
    has_row[[0, 7]] = False  # rows without a teacher stay empty
    whole, chunked = _counted(draws, has_row, rows=100), _counted(draws, has_row, rows=3)
    assert whole.keys() == chunked.keys() == {"n", "nrep", "ids", "count"}
    for k in whole:
        assert np.array_equal(whole[k], chunked[k]), k
    assert whole["n"][0] == whole["n"][7] == 0 and whole["n"].sum() == len(whole["ids"])
