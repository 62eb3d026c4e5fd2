"""Backend dispatch and the package surface: LLMCORE_KERNELS, the CPU/interpreter guard, and
an ``import kernels`` that stays free of Triton (transformers imports any ``kernels``)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kernels
from kernels import _dispatch

REPO = Path(__file__).resolve().parents[2]


def test_auto_picks_torch_for_cpu_tensors(monkeypatch):
    monkeypatch.delenv("LLMCORE_KERNELS", raising=False)
    assert _dispatch.backend("op", torch.zeros(2)) == "torch"


def test_forced_torch(monkeypatch):
    monkeypatch.setenv("LLMCORE_KERNELS", "torch")
    assert _dispatch.backend("op", torch.zeros(2)) == "torch"


@pytest.mark.triton
def test_forced_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("LLMCORE_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _dispatch.backend("op", torch.zeros(2)) == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="rms_norm: LLMCORE_KERNELS=triton with a CPU tensor "
                                           "needs TRITON_INTERPRET=1"):
        kernels.rms_norm(torch.zeros(2, 4), torch.ones(4))


def test_a_triton_limit_sends_auto_to_torch_and_refuses_forced_triton(monkeypatch):
    monkeypatch.setattr(_dispatch, "_all_cuda", lambda tensors: True)  # as on a GPU
    monkeypatch.setattr(_dispatch, "_triton_ready", lambda: True)
    monkeypatch.setenv("LLMCORE_KERNELS", "auto")
    assert _dispatch.backend("op", torch.zeros(2)) == "triton"
    assert _dispatch.backend("op", torch.zeros(2), triton_limit="too wide") == "torch"
    monkeypatch.setenv("LLMCORE_KERNELS", "triton")
    with pytest.raises(ValueError, match=r"op: too wide \(unset LLMCORE_KERNELS to fall back"):
        _dispatch.backend("op", torch.zeros(2), triton_limit="too wide")


def test_unknown_backend_is_named(monkeypatch):
    monkeypatch.setenv("LLMCORE_KERNELS", "cuda")
    with pytest.raises(ValueError, match="LLMCORE_KERNELS='cuda' is not one of auto, torch"):
        kernels.swiglu(torch.zeros(2), torch.zeros(2))


def test_flash_attn_backend_needs_cuda_tensors(monkeypatch):
    monkeypatch.setenv("LLMCORE_KERNELS", "flash_attn")
    q = torch.zeros(1, 4, 2, 8)
    with pytest.raises(RuntimeError, match="flash_attn needs CUDA tensors"):
        kernels.flash_attention(q, q, q)
    # the other ops are unaffected by an attention-only backend
    assert _dispatch.backend("rms_norm", q) == "torch"


def test_public_names_stay_functions_after_their_modules_load(use_torch):
    # kernels/swiglu.py and kernels/linear_cross_entropy.py share their function's name;
    # importing the submodules must not replace the package's public functions
    import kernels.linear_cross_entropy  # noqa: F401
    import kernels.swiglu  # noqa: F401

    x = torch.ones(3)
    assert callable(kernels.swiglu) and kernels.swiglu(x, x).shape == (3,)
    assert callable(kernels.linear_cross_entropy)
    assert sorted(kernels.__all__) == ["DistillLoss", "apply_rope", "flash_attention",
                                       "future_summary_loss", "grad_sq_norm",
                                       "linear_cross_entropy", "linear_distill_loss",
                                       "loss_target_mask", "perturb_", "restore_", "rms_norm",
                                       "swiglu", "teacher_entropy"]


def test_import_kernels_does_not_import_triton():
    code = "import sys, kernels; sys.exit(1 if 'triton' in sys.modules else 0)"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"import kernels imported triton\n{done.stderr}"
