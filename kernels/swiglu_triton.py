"""Triton SwiGLU: forward and backward elementwise kernels, launchers, autograd.Function.

Imported by ``kernels/swiglu.py`` on the first Triton call. Values are computed in fp32
whatever the storage dtype.
"""

import torch
from torch import Tensor
import triton
import triton.language as tl

from kernels._opaque import compile_opaque
from kernels._triton_utils import check_dtype

BLOCK = 1024


@triton.jit
def _swiglu_fwd_kernel(gate_ptr, up_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(gate_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(up_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    out = g * tl.sigmoid(g) * u
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd_kernel(gate_ptr, up_ptr, dout_ptr, dgate_ptr, dup_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(gate_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(up_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dout = tl.load(dout_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    sig = tl.sigmoid(g)
    silu = g * sig
    # d silu(g) / dg = sig * (1 + g * (1 - sig))
    dgate = dout * u * sig * (1.0 + g * (1.0 - sig))
    tl.store(dgate_ptr + offs, dgate.to(dgate_ptr.dtype.element_ty), mask=mask)
    tl.store(dup_ptr + offs, (dout * silu).to(dup_ptr.dtype.element_ty), mask=mask)


@compile_opaque("swiglu_fwd", lambda gate, up: torch.empty_like(gate))
def swiglu_fwd(gate: Tensor, up: Tensor) -> Tensor:
    """gate, up contiguous of one shape -> silu(gate) * up."""
    out = torch.empty_like(gate)
    n = gate.numel()
    _swiglu_fwd_kernel[(triton.cdiv(n, BLOCK),)](gate, up, out, n, BLOCK=BLOCK)
    return out


@compile_opaque("swiglu_bwd", lambda gate, up, dout: (
    torch.empty_like(gate), torch.empty_like(up)))
def swiglu_bwd(gate: Tensor, up: Tensor, dout: Tensor) -> tuple[Tensor, Tensor]:
    """-> (dgate, dup), each of gate's shape and dtype."""
    dgate, dup = torch.empty_like(gate), torch.empty_like(up)
    n = gate.numel()
    _swiglu_bwd_kernel[(triton.cdiv(n, BLOCK),)](gate, up, dout, dgate, dup, n, BLOCK=BLOCK)
    return dgate, dup


class SwigluFunction(torch.autograd.Function):
    """silu(gate) * up with a fused backward; saves only the two inputs."""

    @staticmethod
    def forward(ctx, gate, up):
        gate, up = gate.contiguous(), up.contiguous()
        ctx.save_for_backward(gate, up)
        return swiglu_fwd(gate, up)

    @staticmethod
    def backward(ctx, dout):
        gate, up = ctx.saved_tensors
        return swiglu_bwd(gate, up, dout.contiguous())


def swiglu_triton(gate, up):
    """Triton path of ``kernels.swiglu``: gate, up [..., f] of one dtype -> [..., f]."""
    check_dtype("swiglu", gate, up)
    return SwigluFunction.apply(gate, up)
