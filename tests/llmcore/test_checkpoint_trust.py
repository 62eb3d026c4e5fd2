"""Checkpoints that can be trusted (issue 17): nothing we load executes code, every file is
checked against the manifest, a kill at any point of a save or a prune leaves `latest`
loadable, one run per out_dir, a changed config is refused, a NaN run stops before it saves,
and a crash's leftovers are tidied."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from run_configs import tiny_config

from llmcore.errors import CheckpointError, ConfigError
from llmcore.train import checkpoint, manifest
from llmcore.train.loop import Trainer
from llmcore.train.nonfinite import NonFiniteError
from llmcore.train.run_lock import LOCK, RunLockError

STEPS = ("data.seq_len=32", "train.micro_batch_size=2", "train.global_batch_size=4", "train.log_every=1",
         "train.eval_batches=1", "model.n_layers=2")


def cfg(prepared, out, *extra):
    return tiny_config(prepared, out, *STEPS, "train.max_steps=2", *extra)


@pytest.fixture(scope="module")
def finished(prepared, tmp_path_factory):
    """A finished 2-step run with the probe recipe (so it has aux.safetensors), checkpoints 1 and 2."""
    out = tmp_path_factory.mktemp("finished") / "run"
    Trainer(cfg(prepared, out, "recipes=[probe]", "train.save_every=1", "train.keep_last=0")).fit()
    return out


class Evil:
    """A pickle that creates `marker` when unpickled: what a planted file would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


PLANTED = ["model.safetensors", "aux.safetensors", "optimizer.pt", "rng-rank0.pt", "state.json", "config.yaml"]


def plant(path, marker):
    if path.suffix == ".yaml":  # what yaml.unsafe_load would execute
        path.write_text(f"!!python/object/apply:os.makedirs [{str(marker)!r}]\n")
    else:
        torch.save(Evil(marker), path)


@pytest.mark.parametrize("rewrite_manifest", [False, True], ids=["manifest-catches", "loader-refuses"])
@pytest.mark.parametrize("name", PLANTED)
def test_planted_pickle_never_executes_and_is_named(name, rewrite_manifest, finished, prepared, tmp_path):
    """Planted alone, the manifest refuses the file by name before anything is read; planted by
    someone who also rewrote the manifest, each of our loaders still refuses it unexecuted."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    marker = tmp_path / "EXECUTED"
    ckpt = checkpoint.resolve(out)
    plant(ckpt / name, marker)
    if rewrite_manifest:
        manifest.write(ckpt)
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")) as err:
        Trainer(cfg(prepared, out, "recipes=[probe]", "train.max_steps=4"))
    assert not marker.exists(), f"unpickling {name} ran code"
    if not rewrite_manifest:
        assert "manifest.json" in str(err.value)
    assert not (out / LOCK).exists()  # a refused resume releases the folder


def test_every_file_is_in_the_manifest_and_a_bit_flip_is_named(finished, prepared, tmp_path):
    ckpt = checkpoint.resolve(finished)
    listed = set(json.loads((ckpt / "manifest.json").read_text())["files"])
    on_disk = {p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file()} - {"manifest.json"}
    assert listed == on_disk and {"model.safetensors", "optimizer.pt", "rng-rank0.pt"} <= listed
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    weights = checkpoint.resolve(out) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x40  # one bit of one weight: still a valid file, a different number
    weights.write_bytes(bytes(data))
    (checkpoint.resolve(out) / "extra.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"extra\.pt is not in the manifest.*model\.safetensors fails its xxh3_128 check"):
        Trainer(cfg(prepared, out, "recipes=[probe]", "train.max_steps=4"))


class Killed(BaseException):
    """Stands in for kill -9: not an Exception, so no handler on the way may tidy up."""


FS_CALLS = [(os, "replace"), (os, "rename"), (os, "fsync"), (shutil, "rmtree"), (checkpoint, "save_file"),
            (torch, "save"), (manifest, "write")]


def arm(monkeypatch, kill_at: int) -> list[int]:
    """Make the `kill_at`-th call of any file-system step of a save raise Killed (an rmtree is
    killed after removing one file, as a real kill mid-delete would be). Returns the call count."""
    count = [0]
    for mod, name in FS_CALLS:
        real = getattr(mod, name)

        def wrapped(*a, _real=real, _name=name, **k):
            count[0] += 1
            if count[0] == kill_at:
                if _name == "rmtree":
                    files = [p for p in __import__("pathlib").Path(a[0]).rglob("*") if p.is_file()]
                    if files:
                        files[0].unlink()
                raise Killed(f"{_name} #{kill_at}")
            return _real(*a, **k)
        monkeypatch.setattr(mod, name, wrapped)
    return count


def assert_latest_loadable(out, steps_allowed):
    ckpt = checkpoint.resolve(out)
    assert manifest.verify(ckpt)
    assert checkpoint.read_state(ckpt)["step"] in steps_allowed
    assert checkpoint.load_weights(ckpt)


@pytest.mark.parametrize("step", [2, 3], ids=["re-save", "new-step-and-prune"])
def test_a_kill_at_every_point_of_a_save_leaves_latest_loadable(step, finished, prepared, tmp_path, monkeypatch):
    """Re-saving step 2 (what a signal on a save step, or a re-run of a finished run, does), and
    saving step 3 with keep_last=1 (which prunes steps 1 and 2), killed at each file-system
    call in turn: `latest` always names a complete, verified checkpoint, and the next start
    tidies the rest."""
    pristine = tmp_path / "pristine"
    shutil.copytree(finished, pristine)
    out = tmp_path / "run"
    trainer = None
    kill_at = 1
    while True:
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(pristine, out)
        trainer = Trainer(cfg(prepared, out, "recipes=[probe]", "train.keep_last=1"))
        trainer.step = step
        with monkeypatch.context() as m:
            arm(m, kill_at)
            try:
                trainer.save()
                done = True
            except Killed:
                done = False
        trainer.lock.release()  # the killed process's flock would go with it
        assert_latest_loadable(out, {2, step})
        resumed = Trainer(cfg(prepared, out, "recipes=[probe]", "train.max_steps=4"))
        assert resumed.step in (2, step)
        left = sorted(p.name for p in out.iterdir() if p.name.startswith(("ckpt", "latest", "best")))
        assert all(checkpoint.CKPT_RE.match(n) or n == "latest" for n in left), (kill_at, left)
        resumed.lock.release()
        if done:
            break
        kill_at += 1
    assert kill_at > 8  # every step of the save, the swap, the pointer and the prune was a kill point


def test_prune_never_deletes_latest_and_orphans_go_at_resume(prepared, tmp_path):
    out = tmp_path / "run"
    Trainer(cfg(prepared, out, "train.max_steps=4", "train.save_every=1", "train.keep_last=0")).fit()
    (out / "latest").write_text("ckpt-000002\n")  # as if killed after ckpt-3/4 were renamed in, before `latest` moved
    checkpoint.prune(out, 1)
    names = sorted(p.name for p in out.iterdir() if p.name.startswith("ckpt"))
    assert names == ["ckpt-000002", "ckpt-000004"]  # the highest kept, and the one latest names
    resumed = Trainer(cfg(prepared, out, "train.max_steps=4"))
    assert resumed.step == 2
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("ckpt")) == ["ckpt-000002"]
    resumed.fit()
    steps = [json.loads(line)["step"] for line in open(out / "metrics.jsonl") if "loss" in json.loads(line)]
    assert steps == [1, 2, 3, 4]  # the replayed steps 3 and 4 once each


def test_leftovers_are_removed_at_start(finished, prepared, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    (out / "ckpt-000003.tmp").mkdir()
    (out / "ckpt-000001.trash").mkdir()
    (out / "latest.tmp-1234").write_text("x")
    shutil.copytree(out / "ckpt-000002", out / "ckpt-000002.old")
    shutil.move(out / "ckpt-000001", out / "ckpt-000001.old")  # an interrupted re-save of step 1, mid-swap
    t = Trainer(cfg(prepared, out, "recipes=[probe]", "train.max_steps=4"))
    assert t.step == 2
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith((".jsonl", LOCK))) == [
        "ckpt-000001", "ckpt-000002", "latest"]


def straight_weights(prepared, tmp_path):
    Trainer(cfg(prepared, tmp_path / "straight")).fit()
    return checkpoint.load_weights(checkpoint.resolve(tmp_path / "straight"))


def test_two_trainers_on_one_folder(prepared, tmp_path):
    out = tmp_path / "run"
    first = Trainer(cfg(prepared, out))
    with pytest.raises(RunLockError, match=rf"pid {os.getpid()} on host {socket.gethostname()}"):
        Trainer(cfg(prepared, out))
    first.fit()
    assert not (out / LOCK).exists()
    ref, got = straight_weights(prepared, tmp_path), checkpoint.load_weights(checkpoint.resolve(out))
    assert all(torch.equal(ref[k], got[k]) for k in ref)  # the first run finished untouched
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("ckpt")) == ["ckpt-000002"]


def test_stale_lock_is_taken_over_and_another_hosts_is_refused(prepared, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))
    Trainer(cfg(prepared, out)).fit()  # a dead pid on this host: taken over
    (out / LOCK).write_text(json.dumps({"host": "node-that-is-not-here", "pid": 1}))
    with pytest.raises(RunLockError, match="node-that-is-not-here"):
        Trainer(cfg(prepared, out, "train.max_steps=4"))


def test_changed_training_config_is_refused_unless_allowed(prepared, tmp_path):
    out = tmp_path / "run"
    Trainer(cfg(prepared, out)).fit()
    with pytest.raises(ConfigError, match=r"optim\.lr: 0\.0003 -> 0\.001.*train\.global_batch_size: 4 -> 8"):
        Trainer(cfg(prepared, out, "train.max_steps=4", "optim.lr=1e-3", "train.global_batch_size=8"))
    assert Trainer(cfg(prepared, out, "train.max_steps=4", "schedule.kind=constant")).step == 2  # not refused
    t = Trainer(cfg(prepared, out, "train.max_steps=4", "optim.lr=1e-3", "train.allow_config_change=true"))
    assert t.fit()["step"] == 4


def test_nonfinite_steps_abort_without_saving(prepared, tmp_path):
    out = tmp_path / "run"
    Trainer(cfg(prepared, out, "train.save_every=1", "train.keep_last=1")).fit()
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "metrics.jsonl"}
    t = Trainer(cfg(prepared, out, "train.max_steps=20", "train.save_every=1", "train.keep_last=1",
                    "train.max_nonfinite_steps=3"))
    with torch.no_grad():
        next(t.engine.module.parameters()).fill_(float("nan"))  # what a bit-flipped resume gives
    with pytest.raises(NonFiniteError, match=r"steps 3-5: 3 consecutive"):
        t.fit()
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "metrics.jsonl"} == before


def test_inference_loads_refuse_a_corrupt_weight_file(finished, tmp_path):
    """`llmcore.load` and export-hf check the weight files against the manifest (not the
    optimizer: an inference load does not read it)."""
    import shutil

    import llmcore
    from llmcore.hf.folder import export_hf

    out = tmp_path / "r"
    shutil.copytree(finished, out)
    ckpt = checkpoint.resolve(out)
    (ckpt / "optimizer.pt").write_bytes(b"not read by an inference load")
    llmcore.load(str(out), device="cpu")  # the optimizer is not checked here
    weights = ckpt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # one flipped bit in the last tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors fails its xxh3_128 check"):
        llmcore.load(str(out), device="cpu")
    with pytest.raises(CheckpointError, match=r"model\.safetensors fails its xxh3_128 check"):
        export_hf(str(out), str(tmp_path / "hf"))
    assert not (tmp_path / "hf").exists()
