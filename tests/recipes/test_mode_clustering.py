"""ModC's gradient clustering: batched per-example gradients equal one backward per example,
two planted groups are recovered (ARI > 0.9), the same seed gives the same labels, an
interrupted run resumes to the same result, the projection never holds its full matrix (peak
memory of a child process), and `llmcore modes cluster | split` write what training reads."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import llmcore
from llmcore.cli.main import main
from llmcore.data import to_batch
from llmcore.data.example_sidecar import read_example_sidecar
from llmcore.data.sft import encode_examples
from llmcore.errors import ConfigError, DataError
from llmcore.model.presets import get_preset
from llmcore.model.transformer import Transformer
from llmcore.tokenizer import Tokenizer
from recipes.mode_conditioning.cluster import ClusterSettings, cluster_file, split_file
from recipes.mode_conditioning.gradients import (
    batched_gradients,
    loop_gradients,
    select_parameters,
)
from recipes.mode_conditioning.kmeans import adjusted_rand_index, kmeans, purity
from recipes.mode_conditioning.projection import BLOCK, RademacherProjection


def tiny_model(vocab, layers=2, seed=0):
    torch.manual_seed(seed)
    return Transformer(dataclasses.replace(get_preset("tiny"), vocab_size=vocab, n_layers=layers, max_seq_len=64)).eval()


@pytest.fixture(scope="module")
def tok(prepared):
    return Tokenizer.load(str(prepared / "tokenizer"))


def test_batched_gradients_equal_one_backward_per_example(tok):
    model = tiny_model(tok.vocab_size)
    rows = encode_examples([{"prompt": f"Count: {i}", "answer": f" {i + 1} {i + 2}."} for i in range(5)], tok, 24, "t")
    batch = to_batch(rows)
    names = select_parameters(model, ["layers.0.self_attn.", "layers.-1.", "norm.weight"])
    assert "layers.1.mlp.down_proj.weight" in names and "layers.0.mlp.up_proj.weight" not in names
    pre = {n: torch.rand(p.numel()) + 0.5 for n, p in model.named_parameters() if n in names}
    fast, slow = batched_gradients(model, names, batch, pre), loop_gradients(model, names, batch, pre)
    for n in names:
        torch.testing.assert_close(fast[n], slow[n], rtol=1e-5, atol=1e-7, msg=n)
    assert all(p.grad is None for p in model.parameters()) and all(p.requires_grad for p in model.parameters())
    with pytest.raises(ConfigError, match="matches no parameter"):
        select_parameters(model, ["layers.7."])
    with pytest.raises(ConfigError, match="not a Linear or RMSNorm"):
        select_parameters(model, ["embed_tokens."])


def test_projection_is_seeded_blockwise_and_preserves_norms_in_expectation():
    x = {"a": torch.randn(3, 2 * BLOCK + 5), "b": torch.randn(3, 7)}
    p = RademacherProjection(512, seed=3)
    y = p(x)
    assert torch.equal(y, RademacherProjection(512, seed=3)(x))
    assert not torch.equal(y, RademacherProjection(512, seed=4)(x))
    # a parameter's projection does not depend on what is projected with it
    torch.testing.assert_close(p({"a": x["a"]}) + p({"b": x["b"]}), y, rtol=1e-5, atol=1e-4)
    full = torch.cat([x["a"], x["b"]], 1)
    ratio = (y.norm(dim=1) / full.norm(dim=1)).tolist()
    assert all(0.85 < r < 1.15 for r in ratio)


def planted(tok, path, n=40):
    """Two groups of examples with different answers (so different output gradients)."""
    rows = []
    for i in range(n):
        if i % 3 == 0:
            rows.append({"prompt": f"Count: {i % 7}", "answer": " the file twice.", "group": 0})
        else:
            rows.append({"prompt": f"Count: {i % 7}", "answer": f" {i % 5} {i % 5 + 1} {i % 5 + 2}.", "group": 1})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [r["group"] for r in rows]


@pytest.fixture()
def ckpt(tok, tmp_path):
    return str(llmcore.save(tiny_model(tok.vocab_size), tok, str(tmp_path / "ckpt")))


def test_planted_groups_are_recovered_identically_for_a_seed_and_resume(tok, ckpt, tmp_path):
    data = tmp_path / "train.jsonl"
    truth = planted(tok, data)
    s = ClusterSettings(modes=2, dim=256, batch_size=8, project_batch=16, seq_len=24, restarts=4)
    first = cluster_file(ckpt, str(data), s, progress=False)
    labels = read_example_sidecar(str(data), "modes", len(truth))
    assert adjusted_rand_index(labels, truth) > 0.9 and purity(labels, truth) > 0.95
    assert sorted(first["sidecars"][str(data)]) == sorted(np.bincount(truth).tolist())
    work = data.parent / "train.sidecars" / ".modes-features"
    feats = [np.load(f) for f in sorted(work.glob("part_*.npy"))]
    (work / "part_00001.npy").unlink()  # an interrupted run: one part missing
    again = cluster_file(ckpt, str(data), s, progress=False)
    assert np.array_equal(read_example_sidecar(str(data), "modes", len(truth)), labels) and again == first
    assert all(np.array_equal(a, np.load(b)) for a, b in zip(feats, sorted(work.glob("part_*.npy"))))
    with pytest.raises(DataError, match="other settings.*dim"):
        cluster_file(ckpt, str(data), dataclasses.replace(s, dim=128), progress=False)
    sph = cluster_file(ckpt, str(data), dataclasses.replace(s, dim=128, method="spherical"), overwrite=True,
                       progress=False)
    assert adjusted_rand_index(read_example_sidecar(str(data), "modes", len(truth)), truth) > 0.9 and sph["inertia"] > 0


def test_kmeans_same_seed_same_labels_and_ari_scores():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (30, 5)) + 6, rng.normal(0, 1, (30, 5)) - 6, rng.normal(0, 1, (30, 5))])
    truth = np.repeat([0, 1, 2], 30)
    a, ca, ia = kmeans(x, 3, seed=1)
    b, cb, ib = kmeans(x, 3, seed=1)
    assert np.array_equal(a, b) and np.array_equal(ca, cb) and ia == ib and adjusted_rand_index(a, truth) == 1.0
    assert a[0] == 0 and adjusted_rand_index(truth, (truth + 1) % 3) == 1.0
    assert abs(adjusted_rand_index(rng.integers(0, 3, 3000), rng.integers(0, 3, 3000))) < 0.01


def test_the_projection_never_allocates_its_full_matrix():
    """P = 20k parameters x D = 4096: the full matrix would be 328 MB of fp32. A child process
    samples its resident memory every ms while projecting: it may grow by at most 128 MiB (one
    block is 16 MiB; the allocator may keep a few freed blocks resident), while projecting with
    the whole matrix at once, measured the same way, grows by more than 250 MiB (the
    measurement can see it)."""
    code = textwrap.dedent("""
        import os, threading, torch
        torch.set_num_threads(1)
        from recipes.mode_conditioning.projection import RademacherProjection
        page = os.sysconf("SC_PAGE_SIZE")
        def rss():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * page
        def grown(fn, x):
            box = {"peak": rss()}
            base, stop = box["peak"], threading.Event()
            def watch():
                while not stop.wait(0.001):
                    box["peak"] = max(box["peak"], rss())
            t = threading.Thread(target=watch); t.start()
            y = fn(x)
            stop.set(); t.join()
            return max(box["peak"], rss()) - base, y.shape[1]
        x = {"w": torch.randn(16, 20_000)}
        p = RademacherProjection(4096, seed=0)
        p({"w": x["w"][:, :10]})  # warm-up: allocator and RNG set-up
        blocks, dim = grown(p, x)
        full, _ = grown(lambda d: d["w"] @ torch.randint(0, 2, (20_000, 4096), dtype=torch.float32), x)
        print(blocks, dim, full)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": ".", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    blocks, dim, full = map(int, out.stdout.split())
    assert dim == 4096 and blocks < 128 * 2**20, f"peak RSS grew by {blocks / 2**20:.0f} MiB"
    assert full > 250 * 2**20, f"the full-matrix control grew by only {full / 2**20:.0f} MiB"


def test_cli_cluster_assign_and_split(tok, ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLMCORE_COMMANDS", "modes=recipes.mode_conditioning:add_command")
    data, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    truth, vtruth = planted(tok, data), planted(tok, val, n=12)
    assert main(["modes", "cluster", "--checkpoint", ckpt, "--data", str(data), "--assign", str(val), "--dim", "128",
                 "--seq-len", "24", "--batch-size", "8", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["sidecars"]) == {str(data), str(val)}
    got = read_example_sidecar(str(val), "modes", 12)
    assert adjusted_rand_index(got, vtruth) > 0.9
    files = split_file(str(data), "modes")
    labels = read_example_sidecar(str(data), "modes", len(truth))
    assert [len(Path(f).read_text().splitlines()) for f in files] == np.bincount(labels).tolist()
    assert main(["modes", "split", "--data", str(data), "--name", "group", "--out-dir", str(tmp_path / "by_group")]) == 0
    assert [len(Path(f).read_text().splitlines()) for f in capsys.readouterr().out.split()] == np.bincount(truth).tolist()
    assert main(["modes", "cluster", "--checkpoint", ckpt, "--data", str(data), "--params", "nope."]) == 2
    assert "matches no parameter" in capsys.readouterr().err


def test_first_targets_keeps_only_each_rows_first_answer_tokens():
    from recipes.mode_conditioning.cluster import first_targets

    labels = torch.tensor([[-100, 5, 6, 7, -100], [-100, -100, -100, 8, 9]])
    assert first_targets(labels, 2).tolist() == [[-100, 5, 6, -100, -100], [-100, -100, -100, 8, 9]]
    assert first_targets(labels, 1).tolist() == [[-100, 5, -100, -100, -100], [-100, -100, -100, 8, -100]]


def test_adam_preconditioning_after_one_step_divides_by_that_steps_gradient(tok, tmp_path):
    """After one AdamW step v = (1 - b2) g^2, so v_hat = g^2 and the preconditioner is
    1 / (|g| + eps) of the step's gradient g, for every selected parameter by name."""
    from llmcore.train.optim import param_groups
    from recipes.mode_conditioning.gradients import (
        adam_preconditioner,
        answer_log_likelihood,
    )

    model = tiny_model(tok.vocab_size)
    rows = encode_examples([{"prompt": f"Count: {i}", "answer": f" {i + 1}."} for i in range(4)], tok, 16, "t")
    batch = to_batch(rows)
    names = select_parameters(model)
    opt = torch.optim.AdamW(param_groups(model.named_parameters(), 0.1), lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    loss = -answer_log_likelihood(model, batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    pre = adam_preconditioner(model, opt.state_dict(), names)
    assert set(pre) == set(names)
    for n in names:
        torch.testing.assert_close(pre[n], 1.0 / (grads[n].abs().reshape(-1) + 1e-8), rtol=1e-4, atol=0, msg=n)
    with pytest.raises(ConfigError, match="does not match the model"):
        adam_preconditioner(tiny_model(tok.vocab_size, layers=3), opt.state_dict(), names)
