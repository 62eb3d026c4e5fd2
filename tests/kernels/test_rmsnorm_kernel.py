"""RMSNorm: the Triton kernels (interpreted on CPU) and the PyTorch path vs float64,
output and both gradients (dx, dweight)."""

import pytest
import torch

import kernels
from kernel_testing import DEVICE, compare_op
from kernels.rmsnorm import rms_norm_torch
from kernels.rmsnorm_reference import rms_norm_reference

DTYPES = [pytest.param(d, id=n) for d, n in
          [(torch.float32, "fp32"), (torch.float16, "fp16"), (torch.bfloat16, "bf16")]]


def _inputs(shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 0.5
    w = 1 + 0.3 * torch.randn(shape[-1], generator=gen, dtype=torch.float64)
    return x.to(DEVICE), w.to(DEVICE)


@pytest.mark.triton
@pytest.mark.parametrize("shape", [pytest.param((2, 45, 41), id="B2-T45-D41"),
                                   pytest.param((3, 130), id="N3-D130")])
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_matches_float64(use_triton, shape, dtype):
    compare_op(["y", "dx", "dweight"], kernels.rms_norm, rms_norm_reference, list(_inputs(shape)), dtype,
               torch_fn=rms_norm_torch)


@pytest.mark.triton
def test_triton_weight_grad_sums_over_many_rows(use_triton, monkeypatch):
    # more rows than backward programs: each program must sum several rows' partials
    import kernels.rmsnorm_triton as rt

    monkeypatch.setattr(rt, "BWD_PROGRAMS", 4)
    compare_op(["y", "dx", "dweight"], kernels.rms_norm, rms_norm_reference, list(_inputs((37, 9))),
               torch.float32)


@pytest.mark.triton
def test_triton_eps_is_used(use_triton):
    x = torch.full((2, 8), 1e-3, device=DEVICE)
    w = torch.ones(8, device=DEVICE)
    torch.testing.assert_close(kernels.rms_norm(x, w, eps=1e-2), rms_norm_reference(x, w, 1e-2))


def test_torch_path_matches_float64(use_torch):
    compare_op(["y", "dx", "dweight"], kernels.rms_norm, rms_norm_reference, list(_inputs((4, 45, 41))),
               torch.float64)


def test_torch_path_returns_input_dtype_for_fp32_weight(use_torch):
    x = torch.randn(3, 16, dtype=torch.bfloat16)
    assert kernels.rms_norm(x, torch.ones(16)).dtype == torch.bfloat16


def test_weight_shape_is_checked():
    with pytest.raises(ValueError, match=r"rms_norm: weight \(5,\) must be \[d\]"):
        kernels.rms_norm(torch.zeros(2, 4), torch.ones(5))
