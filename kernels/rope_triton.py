"""Triton RoPE: one kernel that rotates (forward) or counter-rotates (backward) q or k.

Imported by ``kernels/rope.py`` on the first Triton call. One program takes one (batch, time)
position and all its heads; pairs are (i, i + D/2), the Hugging Face "rotate_half" layout.
The backward of a rotation is the rotation by the opposite angle, so it reuses the forward
kernel with sin negated. q and k may be strided views (e.g. slices of a fused qkv projection);
only their last dimension must be contiguous.
"""

import torch
from torch import Tensor
import triton
import triton.language as tl

from kernels._opaque import compile_opaque
from kernels._triton_utils import check_dtype, next_pow2


@triton.jit
def _rope_kernel(x_ptr, out_ptr, cos_ptr, sin_ptr, T, H, half,
                 sxb, sxt, sxh, sob, sot, soh, scb, sct,
                 BACKWARD: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    pid = tl.program_id(0)
    b = (pid // T).to(tl.int64)
    t = (pid % T).to(tl.int64)
    cols = tl.arange(0, BLOCK_HALF)
    heads = tl.arange(0, BLOCK_H)
    cmask = cols < half
    c = tl.load(cos_ptr + b * scb + t * sct + cols, mask=cmask, other=0.0).to(tl.float32)
    s = tl.load(sin_ptr + b * scb + t * sct + cols, mask=cmask, other=0.0).to(tl.float32)
    if BACKWARD:
        s = -s
    mask = (heads[:, None] < H) & cmask[None, :]
    x_lo = x_ptr + b * sxb + t * sxt + heads[:, None] * sxh + cols[None, :]  # (BLOCK_H, BLOCK_HALF)
    x1 = tl.load(x_lo, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_lo + half, mask=mask, other=0.0).to(tl.float32)
    o_lo = out_ptr + b * sob + t * sot + heads[:, None] * soh + cols[None, :]
    # x * cat(c, c) + rotate_half(x) * cat(s, s), rotate_half(x) = cat(-x2, x1)
    tl.store(o_lo, (x1 * c[None, :] - x2 * s[None, :]).to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(o_lo + half, (x2 * c[None, :] + x1 * s[None, :]).to(out_ptr.dtype.element_ty),
             mask=mask)


def _rotate(x, cos, sin, backward, out=None):
    """x [B, T, H, D], cos/sin [B or 1, T, D/2] -> ``out`` (default a new contiguous tensor;
    ``out=x`` rotates in place: each program reads its position before writing it)."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    b, t, h, d = x.shape
    if out is None:
        out = torch.empty((b, t, h, d), dtype=x.dtype, device=x.device)
    scb = cos.stride(0) if cos.shape[0] > 1 else 0
    if b * t:
        _rope_kernel[(b * t,)](
            x, out, cos, sin, t, h, d // 2,
            x.stride(0), x.stride(1), x.stride(2), out.stride(0), out.stride(1), out.stride(2),
            scb, cos.stride(1),
            BACKWARD=backward, BLOCK_H=next_pow2(h), BLOCK_HALF=next_pow2(d // 2),
        )
    return out


@compile_opaque("rope", lambda x, cos, sin, backward: x.new_empty(x.shape))
def _rotated(x: Tensor, cos: Tensor, sin: Tensor,
             backward: bool) -> Tensor:
    """x rotated (``backward``: counter-rotated) into a new contiguous tensor."""
    return _rotate(x, cos, sin, backward)


@compile_opaque("rope_", lambda x, cos, sin: None, mutates_args=("x",))
def _rotate_inplace(x: Tensor, cos: Tensor, sin: Tensor) -> None:
    """x rotated in place."""
    _rotate(x, cos, sin, False, out=x)


class RopeFunction(torch.autograd.Function):
    """(q, k) -> (q_rot, k_rot); cos/sin are position tables and get no gradient."""

    @staticmethod
    def forward(ctx, q, k, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _rotated(q, cos, sin, False), _rotated(k, cos, sin, False)

    @staticmethod
    def backward(ctx, dq, dk):
        cos, sin = ctx.saved_tensors
        dq = _rotated(dq, cos, sin, True) if dq is not None else None
        dk = _rotated(dk, cos, sin, True) if dk is not None else None
        return dq, dk, None, None


class RopeInplaceFunction(torch.autograd.Function):
    """x rotated in place and returned (marked dirty for autograd). One tensor per call:
    autograd allows a Function that overwrites a view (q and k are views of projections) only
    one output. The backward counter-rotates into a new tensor: the incoming gradient is not
    ours to overwrite."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        _rotate_inplace(x, cos, sin)
        ctx.mark_dirty(x)
        ctx.save_for_backward(cos, sin)
        return x

    @staticmethod
    def backward(ctx, dx):
        cos, sin = ctx.saved_tensors
        return _rotated(dx, cos, sin, True), None, None


def apply_rope_triton(q, k, cos, sin, inplace=False):
    """Triton path of ``kernels.apply_rope``; cos/sin [T, D/2] or [B, T, D/2]."""
    check_dtype("apply_rope", q, k, cos, sin)
    if cos.dim() == 2:
        cos, sin = cos[None], sin[None]
    # one stride pair serves both tables, so they must share a layout
    cos, sin = cos.contiguous(), sin.contiguous()
    if inplace:
        if not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad)):
            # no graph to record (generation, eval): rotate without the Function, whose
            # mark_dirty torch.compile can trace only while recording one
            _rotate_inplace(q, cos, sin)
            _rotate_inplace(k, cos, sin)
            return q, k
        return RopeInplaceFunction.apply(q, cos, sin), RopeInplaceFunction.apply(k, cos, sin)
    return RopeFunction.apply(q, k, cos, sin)
