"""DDP on 2 CPU processes (gloo): the same loss curve as one process on the same global batch,
and a SIGTERM'd, resumed run that continues exactly like an uninterrupted one."""

from __future__ import annotations

import json

import pytest
import torch
from mp_helpers import assert_curves_close, losses, overrides, torchrun
from safetensors.torch import load_file

from llmcore.train import checkpoint

# Measured: 1.5e-7 relative over 4 steps (float sums in another order), for the loss and the
# pre-clip gradient norm. 1e-5 still catches a wrong gradient scale (DDP's rank average: norm
# 0.5x) or a mis-sliced batch by orders of magnitude.
LOSS_REL = 1e-5
WEIGHT_ATOL = 1e-4  # Adam divides by sqrt(v): last-bit gradient differences move weights ~1e-5


@pytest.mark.multiprocess
def test_ddp_two_processes_match_single_process(prepared, tmp_path, single_ref):
    ref = single_ref("train.max_steps=4")
    out = tmp_path / "ddp"
    torchrun(2, overrides(prepared, out, "train.max_steps=4", "engine.backend=ddp"))
    assert_curves_close(ref, out, LOSS_REL)
    wa, wb = (load_file(str(checkpoint.resolve(d) / "model.safetensors")) for d in (ref, out))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=WEIGHT_ATOL, msg=k)
    state = checkpoint.read_state(checkpoint.resolve(out))
    assert state["world_size"] == 2 and state["backend"] == "ddp"
    assert sorted(p.name for p in checkpoint.resolve(out).glob("rng-rank*.pt")) == ["rng-rank0.pt", "rng-rank1.pt"]


@pytest.mark.multiprocess
@pytest.mark.slow
def test_auto_micro_batch_runs_unchanged_on_two_processes(prepared, tmp_path, single_ref):
    """The default `train.micro_batch_size: auto` on 2 processes: 8 sequences split as 4 per rank
    in one pass (an explicit 8 would be refused there), the same curve as one process."""
    ref = single_ref("train.max_steps=4")
    out = tmp_path / "auto"
    torchrun(2, overrides(prepared, out, "train.max_steps=4", "engine.backend=ddp", "train.micro_batch_size=auto"))
    assert_curves_close(ref, out, LOSS_REL)
    refused = torchrun(2, overrides(prepared, tmp_path / "explicit", "train.max_steps=1", "engine.backend=ddp",
                                    "train.micro_batch_size=8"), check=False)
    assert refused.returncode != 0
    assert "not a multiple of micro_batch_size x world size = 8 x 2" in refused.stderr


@pytest.mark.multiprocess
@pytest.mark.slow
def test_ddp_sigterm_then_resume_continues_identically(prepared, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    torchrun(2, overrides(prepared, straight, "train.max_steps=6", "engine.backend=ddp"))
    split = tmp_path / "split"
    monkeypatch.setenv("MP_RESULT", str(tmp_path / "first.json"))
    torchrun(2, overrides(prepared, split, "train.max_steps=6", "engine.backend=ddp",
                          "recipes=[mp_stop_at]", "mp_stop_at.step=3"))
    first = json.loads((tmp_path / "first.json").read_text())
    assert first["stopped_by_signal"] and first["step"] == 3
    assert checkpoint.resolve(split).name == "ckpt-000003"
    monkeypatch.delenv("MP_RESULT")
    torchrun(2, overrides(prepared, split, "train.max_steps=6", "engine.backend=ddp"))
    a, b = losses(straight), losses(split)
    assert [a[s] for s in range(1, 7)] == [b[s] for s in range(1, 7)]  # exact: same ranks, same order
    wa, wb = (load_file(str(checkpoint.resolve(d) / "model.safetensors")) for d in (straight, split))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
