"""Triton RMSNorm: forward and backward kernels (incl. the weight gradient), launchers, Function.

Imported by ``kernels/rmsnorm.py`` on the first Triton call. One program normalises one row of
``d`` values held in registers; the backward keeps one fp32 partial weight gradient per program
and sums the partials on the host, so there are no atomics and the result is deterministic.
"""

import torch
from torch import Tensor
import triton
import triton.language as tl

from kernels._opaque import compile_opaque
from kernels._triton_utils import check_dtype, next_pow2

# programs of the backward: enough to fill a large GPU, few enough that the [P, d] partials
# of the weight gradient stay small
BWD_PROGRAMS = 512


@triton.jit
def _rmsnorm_fwd_kernel(x_ptr, w_ptr, y_ptr, rstd_ptr, d, eps, BLOCK_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < d
    x = tl.load(x_ptr + row * d + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / d + eps)
    tl.store(rstd_ptr + row, rstd)
    tl.store(y_ptr + row * d + cols, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rmsnorm_bwd_kernel(x_ptr, w_ptr, dy_ptr, rstd_ptr, dx_ptr, dw_part_ptr, n_rows, d,
                        rows_per_prog, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < d
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_D,), dtype=tl.float32)
    first = pid * rows_per_prog
    for i in range(0, rows_per_prog):
        row = first + i
        if row < n_rows:
            base = row.to(tl.int64) * d
            x = tl.load(x_ptr + base + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + base + cols, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(rstd_ptr + row)
            xhat = x * rstd
            g = dy * w
            # dx = rstd * (g - xhat * mean(g * xhat)): the projection out of the xhat direction
            dx = rstd * (g - xhat * (tl.sum(g * xhat, axis=0) / d))
            tl.store(dx_ptr + base + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
            dw += dy * xhat
    tl.store(dw_part_ptr + pid * d + cols, dw, mask=mask)


def _warps(block_d):
    # a whole row lives in registers: spread wide rows over more warps
    return 4 if block_d <= 2048 else 8 if block_d <= 8192 else 16


@compile_opaque("rmsnorm_fwd", lambda x2, weight, eps: (
    torch.empty_like(x2), x2.new_empty(x2.shape[0], dtype=torch.float32)))
def rmsnorm_fwd(x2: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """x2 [n, d] contiguous -> (y [n, d], rstd [n] fp32)."""
    n, d = x2.shape
    y = torch.empty_like(x2)
    rstd = torch.empty(n, dtype=torch.float32, device=x2.device)
    if n:
        block_d = next_pow2(d)
        _rmsnorm_fwd_kernel[(n,)](x2, weight, y, rstd, d, eps, BLOCK_D=block_d,
                                  num_warps=_warps(block_d))
    return y, rstd


@compile_opaque("rmsnorm_bwd", lambda x2, weight, rstd, dy2: (
    torch.empty_like(x2), torch.empty_like(weight)))
def rmsnorm_bwd(x2: Tensor, weight: Tensor, rstd: Tensor, dy2: Tensor) -> tuple[Tensor, Tensor]:
    """-> (dx [n, d], dweight [d] in weight's dtype)."""
    n, d = x2.shape
    dx = torch.empty_like(x2)
    programs = max(1, min(n, BWD_PROGRAMS))
    rows_per_prog = triton.cdiv(n, programs) if n else 0
    part = torch.zeros(programs, d, dtype=torch.float32, device=x2.device)
    if n:
        block_d = next_pow2(d)
        _rmsnorm_bwd_kernel[(programs,)](x2, weight, dy2, rstd, dx, part, n, d, rows_per_prog,
                                         BLOCK_D=block_d, num_warps=_warps(block_d))
    return dx, part.sum(0).to(weight.dtype)


class RmsNormFunction(torch.autograd.Function):
    """RMSNorm over the last dim; saves x and the fp32 1/rms of each row."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        x2 = x.reshape(-1, x.shape[-1]).contiguous()
        weight = weight.contiguous()
        y, rstd = rmsnorm_fwd(x2, weight, eps)
        ctx.save_for_backward(x2, weight, rstd)
        ctx.x_shape = x.shape
        return y.reshape(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, rstd = ctx.saved_tensors
        dx, dw = rmsnorm_bwd(x2, weight, rstd, dy.reshape(x2.shape).contiguous())
        return dx.reshape(ctx.x_shape), dw, None


def rms_norm_triton(x, weight, eps=1e-6):
    """Triton path of ``kernels.rms_norm``: x [..., d], weight [d] -> [..., d] in x's dtype."""
    check_dtype("rms_norm", x, weight)
    return RmsNormFunction.apply(x, weight, float(eps))
