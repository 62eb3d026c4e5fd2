"""SwiGLU: the Triton kernels (interpreted on CPU) and the PyTorch path vs float64."""

import pytest
import torch
import torch.nn.functional as F

import kernels
from kernel_testing import DEVICE, compare_op
from kernels.swiglu import swiglu_torch
from kernels.swiglu_reference import swiglu_reference

DTYPES = [pytest.param(d, id=n) for d, n in
          [(torch.float32, "fp32"), (torch.float16, "fp16"), (torch.bfloat16, "bf16")]]


@pytest.mark.triton
@pytest.mark.parametrize("shape", [pytest.param((3, 45, 41), id="B3-T45-F41"),
                                   pytest.param((1, 1, 1031), id="B1-T1-F1031")])
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_matches_float64(use_triton, shape, dtype):
    gen = torch.Generator().manual_seed(1)
    gate = torch.randn(shape, generator=gen, dtype=torch.float64).to(DEVICE) * 3
    up = torch.randn(shape, generator=gen, dtype=torch.float64).to(DEVICE)
    compare_op(["out", "dgate", "dup"], kernels.swiglu, swiglu_reference, [gate, up], dtype,
               torch_fn=swiglu_torch)


@pytest.mark.triton
def test_triton_takes_strided_inputs(use_triton):
    # the model may pass halves of one fused gate/up projection
    fused = torch.randn(2, 9, 2 * 41, dtype=torch.float64, device=DEVICE)
    gate, up = fused[..., :41], fused[..., 41:]
    compare_op(["out", "dgate", "dup"], kernels.swiglu, swiglu_reference, [gate, up], torch.float32)


def test_torch_path_is_silu_times_up(use_torch):
    gen = torch.Generator().manual_seed(2)
    gate, up = (torch.randn(5, 7, generator=gen, dtype=torch.float64) for _ in range(2))
    torch.testing.assert_close(kernels.swiglu(gate, up), F.silu(gate) * up, rtol=0, atol=0)
    compare_op(["out", "dgate", "dup"], kernels.swiglu, swiglu_reference, [gate, up], torch.float64)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match=r"swiglu: gate \(2, 3\) and up \(2, 4\) differ"):
        kernels.swiglu(torch.zeros(2, 3), torch.zeros(2, 4))


@pytest.mark.parametrize("backend", [pytest.param("torch", id="torch"),
                                     pytest.param("triton", id="triton", marks=pytest.mark.triton)])
def test_dtype_mismatch_is_an_error_on_every_backend(monkeypatch, backend):
    monkeypatch.setenv("LLMCORE_KERNELS", backend)
    with pytest.raises(TypeError, match="swiglu: gate torch.float16 and up torch.float32 dtypes differ"):
        kernels.swiglu(torch.zeros(2, 3, dtype=torch.float16), torch.zeros(2, 3))
