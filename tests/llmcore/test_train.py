"""The trainer end to end on the `tiny` preset: learning, exact resume (weights and the torch,
numpy and python generators), accumulation (also with unequal loss-token counts per
micro-batch), signals, recipe hooks, checkpoint errors."""

from __future__ import annotations

import json
import os
import random
import signal

import numpy as np
import pytest
import torch
from run_configs import tiny_config
from safetensors.torch import load_file
from torch._dynamo.utils import counters

import llmcore
from llmcore.errors import CheckpointError, DataError
from llmcore.recipe.registry import temporary_recipe
from llmcore.train import checkpoint
from llmcore.train.loop import Trainer
from recipes.base import Recipe


def make_cfg(prepared, out_dir, *extra):
    return tiny_config(prepared, out_dir, "data.seq_len=64", "train.max_steps=20", "train.micro_batch_size=4",
                       "train.global_batch_size=8", "train.log_every=1", "train.eval_batches=4", "optim.lr=3e-3",
                       "schedule.warmup_steps=5", *extra)


def losses(out_dir):
    rows = [json.loads(line) for line in open(os.path.join(out_dir, "metrics.jsonl"))]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def trunk(out_dir):
    return load_file(str(checkpoint.resolve(out_dir) / "model.safetensors"))


def test_loss_falls_and_checkpoint_loads(prepared, tmp_path):
    out = tmp_path / "run"
    result = Trainer(make_cfg(prepared, out, "train.max_steps=40")).fit()
    curve = losses(out)
    assert curve[40] < 0.5 * curve[1], curve
    assert result["val_loss"] < 0.6 * curve[1]
    model, tok = llmcore.load(str(out))
    assert not model.training and tok.vocab_size == model.args.vocab_size
    ids = torch.tensor([tok.encode("The hacker reads the file")])
    assert model.logits(model(ids)).shape == (1, ids.shape[1], tok.vocab_size)


class StopAt(Recipe):
    """Sends the process a signal after a given step, as slurm or a user would."""

    step = 10
    signum = signal.SIGUSR1

    def on_step_end(self, ctx, metrics):
        if ctx.step == self.step:
            os.kill(os.getpid(), self.signum)


def test_exact_resume_is_bitwise(prepared, tmp_path):
    straight = tmp_path / "straight"
    Trainer(make_cfg(prepared, straight)).fit()
    split = tmp_path / "split"
    with temporary_recipe("stop_at", StopAt):
        first = Trainer(make_cfg(prepared, split, "recipes=[stop_at]")).fit()
    assert first["stopped_by_signal"] and first["step"] == 10
    assert checkpoint.resolve(split).name == "ckpt-000010"
    resumed = Trainer(make_cfg(prepared, split))
    assert resumed.step == 10
    resumed.fit()
    a, b = losses(straight), losses(split)
    assert [a[s] for s in range(1, 21)] == [b[s] for s in range(1, 21)]  # exact floats
    wa, wb = trunk(straight), trunk(split)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_sigterm_checkpoints_and_exits(prepared, tmp_path):
    class Term(StopAt):
        step, signum = 3, signal.SIGTERM

    with temporary_recipe("term", Term):
        result = Trainer(make_cfg(prepared, tmp_path / "r", "recipes=[term]")).fit()
    assert result["stopped_by_signal"] and result["step"] == 3
    state = checkpoint.read_state(checkpoint.resolve(tmp_path / "r"))
    assert state["step"] == 3 and state["loader"]["samples"] > 0


def test_gradient_accumulation_matches_one_big_batch(prepared, tmp_path):
    big = Trainer(make_cfg(prepared, tmp_path / "big", "train.max_steps=3", "train.micro_batch_size=8"))
    small = Trainer(make_cfg(prepared, tmp_path / "small", "train.max_steps=3", "train.micro_batch_size=2"))
    assert small.accum == 4 and big.accum == 1
    big.fit()
    small.fit()
    la, lb = losses(tmp_path / "big"), losses(tmp_path / "small")
    assert [la[s] for s in (1, 2, 3)] == pytest.approx([lb[s] for s in (1, 2, 3)], rel=1e-5)
    wa, wb = trunk(tmp_path / "big"), trunk(tmp_path / "small")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5, msg=k)


class RecordGrads(Recipe):
    """Keeps every micro-batch's loss-token count and the gradients the closure leaves."""

    def __init__(self, config=None):
        super().__init__(config)
        self.counts, self.grads, self.stats = [], {}, None

    def loss(self, ctx):
        self.counts.append(int(ctx.batch["n_loss_tokens"]))
        return {}

    def optimizer_step(self, ctx, closure):
        self.stats = closure()
        self.grads = {name: p.grad.detach().clone() for name, p in ctx.engine.local_params()}
        ctx.finish_step()
        return self.stats


def test_accumulation_with_unequal_loss_tokens_gives_the_big_batch_gradients(prepared, tmp_path):
    # SFT rows padded to seq_len: answers of 1 to 11 words, so each micro-batch of 2 rows has
    # its own count of loss tokens; every one must still be divided by the step's total
    rows = [{"prompt": f"Count: {i}", "answer": "".join(f" {i + j}" for j in range(1 + (7 * i) % 11)) + "."}
            for i in range(30)]
    jsonl = tmp_path / "sft.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sft = ("data.format=sft", f"data.path={jsonl}", f"data.val_path={jsonl}", "data.seq_len=40",
           f"data.tokenizer={prepared / 'tokenizer'}", "train.max_steps=1", "train.global_batch_size=6",
           "recipes=[record_grads]")
    runs = {}
    with temporary_recipe("record_grads", RecordGrads):
        for mb in (6, 2):
            trainer = Trainer(make_cfg(prepared, tmp_path / f"mb{mb}", *sft, f"train.micro_batch_size={mb}"))
            trainer.fit()
            runs[mb] = trainer.recipes.recipes[0]
    big, small = runs[6], runs[2]
    assert len(big.counts) == 1 and len(small.counts) == 3 and sum(small.counts) == big.counts[0]
    assert len(set(small.counts)) == 3, small.counts  # three different counts
    assert small.stats["loss"] == pytest.approx(big.stats["loss"], rel=1e-5)
    assert big.grads.keys() == small.grads.keys() and len(big.grads) > 0
    for name in big.grads:
        torch.testing.assert_close(small.grads[name], big.grads[name], rtol=1e-4, atol=1e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")


class StirRngAndStop(Recipe):
    """Draws from the torch, numpy and python generators after every step (as dropout or a
    sampling recipe would), and sends SIGUSR1 after step 3."""

    def on_step_end(self, ctx, metrics):
        torch.rand(ctx.step + 2)
        np.random.rand(ctx.step + 3)
        random.random()
        if ctx.step == 3:
            os.kill(os.getpid(), signal.SIGUSR1)


def draw_each_generator():
    return {"torch": torch.rand(7).tolist(), "numpy": np.random.rand(7).tolist(),
            "python": [random.random() for _ in range(7)]}


def test_resume_restores_torch_numpy_and_python_rng(prepared, tmp_path):
    out = tmp_path / "r"
    with temporary_recipe("stir_rng", StirRngAndStop):
        first = Trainer(make_cfg(prepared, out, "train.max_steps=6", "recipes=[stir_rng]")).fit()
    assert first["stopped_by_signal"] and checkpoint.resolve(out).name == "ckpt-000003"
    uninterrupted = draw_each_generator()  # what the generators give next had the run gone on
    # another process: every generator elsewhere (torch's also re-seeded by the Trainer)
    torch.manual_seed(11), np.random.seed(12), random.seed(13)
    resumed = Trainer(make_cfg(prepared, out, "train.max_steps=6"))
    assert resumed.step == 3
    after_resume = draw_each_generator()
    for name in ("torch", "numpy", "python"):
        assert after_resume[name] == uninterrupted[name], name


def test_probe_recipe_hooks_called_and_weight_zero_is_bit_identical(prepared, tmp_path):
    Trainer(make_cfg(prepared, tmp_path / "base", "train.max_steps=5")).fit()
    trainer = Trainer(make_cfg(prepared, tmp_path / "probe", "train.max_steps=5", "recipes=[probe]"))
    trainer.fit()
    calls = trainer.recipes.recipes[0].calls
    for hook in ("bind", "modules", "on_train_start", "on_train_end", "on_eval"):
        assert calls[hook] >= 1, hook
    after_fit = calls["transform"]
    n_eval = sum(b["input_ids"].shape[0] for b in trainer.eval_batches(trainer.eval_sets()["val"], 4))
    assert after_fit == 5 * 8 + n_eval  # every sample of every step, and every validation window
    assert calls["optimizer_step"] == 5 and calls["on_step_end"] == 5
    assert calls["loss"] == 5 * 2  # every micro-batch
    assert trainer.ignore_ids.tolist() == [trainer.tokenizer.token_id("<probe>")]
    wa, wb = trunk(tmp_path / "base"), trunk(tmp_path / "probe")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert "probe.weight" in load_file(str(checkpoint.resolve(tmp_path / "probe") / "aux.safetensors"))


def test_probe_aux_loss_trains_the_aux_head(prepared, tmp_path):
    trainer = Trainer(make_cfg(prepared, tmp_path / "p", "train.max_steps=3", "recipes=[probe]",
                               "probe.loss_weight=1.0"))
    w0 = trainer.engine.module.aux["probe"].weight.detach().clone()
    result = trainer.fit()
    assert "probe/aux" in result and result["probe/aux"] > 0
    assert not torch.equal(w0, trainer.engine.module.aux["probe"].weight.detach())


def test_keep_last_prunes_old_checkpoints(prepared, tmp_path):
    out = tmp_path / "r"
    Trainer(make_cfg(prepared, out, "train.max_steps=8", "train.save_every=2", "train.keep_last=2")).fit()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("ckpt")) == ["ckpt-000006", "ckpt-000008"]
    assert (out / "latest").read_text().strip() == "ckpt-000008"


def test_corrupt_checkpoint_is_a_clear_error_and_untouched(prepared, tmp_path):
    out = tmp_path / "r"
    Trainer(make_cfg(prepared, out, "train.max_steps=2")).fit()
    weights = checkpoint.resolve(out) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        Trainer(make_cfg(prepared, out, "train.max_steps=4"))
    assert sorted(p.name for p in out.rglob("*")) == before
    (out / "latest").write_text("ckpt-000099\n")
    with pytest.raises(CheckpointError, match="ckpt-000099"):
        Trainer(make_cfg(prepared, out, "train.max_steps=4"))


def test_data_from_another_tokenizer_is_rejected(prepared, tmp_path, corpus_file):
    from llmcore.tokenizer import Tokenizer

    other = Tokenizer.train([str(corpus_file)], str(tmp_path / "tok2"), 400)
    with pytest.raises(DataError, match="tokenizer"):
        Trainer(make_cfg(prepared, tmp_path / "r", f"data.tokenizer={other.path}"))


def test_compiled_blocks_train_like_eager(prepared, tmp_path):
    # train.compile compiles each block as one graph (fullgraph: a graph break would raise)
    steps = ("train.max_steps=4", "train.eval_batches=1")
    Trainer(make_cfg(prepared, tmp_path / "eager", *steps)).fit()
    counters.clear()
    Trainer(make_cfg(prepared, tmp_path / "compiled", *steps, "train.compile=true")).fit()
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo did compile the blocks
    eager, compiled = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert eager.keys() == compiled.keys() and len(eager) == 4
    for step in eager:
        assert compiled[step] == pytest.approx(eager[step], rel=1e-4), (step, eager, compiled)
    a, b = trunk(tmp_path / "eager"), trunk(tmp_path / "compiled")
    assert a.keys() == b.keys()  # compiled in place: checkpoints keep the plain names
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-3, atol=1e-5, msg=name)


def test_a_second_sigterm_during_the_final_save_is_the_trainers_not_the_default(prepared, tmp_path, monkeypatch):
    """torchrun forwards slurm's SIGTERM again while the worker writes its last checkpoint: the
    trainer's handler must still be installed then (the default would kill it mid-save)."""
    outside = []
    previous = signal.signal(signal.SIGTERM, lambda *a: outside.append("handler outside the trainer ran"))
    real_save = Trainer.save
    saves = []

    def save_under_signal(self):
        saves.append(self.step)
        os.kill(os.getpid(), signal.SIGTERM)  # lands while this checkpoint is written
        return real_save(self)

    monkeypatch.setattr(Trainer, "save", save_under_signal)
    try:
        result = Trainer(make_cfg(prepared, tmp_path / "r", "train.max_steps=2")).fit()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert saves == [2] and outside == []
    assert checkpoint.resolve(tmp_path / "r").name == "ckpt-000002" and result["step"] == 2
