"""Rotary position embedding in the Hugging Face Llama "rotate_half" convention.

Dimension i of the first half pairs with dimension i of the second half (not interleaved
pairs), so checkpoints exported to ``LlamaForCausalLM`` need no weight permutation:
``q_rot = q * cat(cos, cos) + rotate_half(q) * cat(sin, sin)``.

This file holds the PyTorch path and the public op; the Triton kernel, launcher and
autograd.Function are in ``rope_triton.py``, imported on the first Triton call. Used by the
model's attention through ``kernels.apply_rope``.
"""

import torch

from kernels import _dispatch

__all__ = ["apply_rope", "apply_rope_torch", "rotate_half"]


def rotate_half(x):
    """[x1, x2] -> [-x2, x1] over the last dimension (halves, not interleaved)."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _broadcast(table, x):
    # cos/sin [T, D/2] or [B, T, D/2] -> [B or 1, T, 1, D] matching x [B, T, H, D]
    full = torch.cat((table, table), dim=-1)
    if full.dim() == 2:
        full = full[None]
    return full[:, :, None, :]


def apply_rope_torch(q, k, cos, sin):
    """PyTorch path; computes in fp32 (fp64 for fp64 inputs) and returns q's and k's dtypes."""
    acc = torch.promote_types(q.dtype, torch.float32)
    c, s = _broadcast(cos.to(acc), q), _broadcast(sin.to(acc), q)
    qf, kf = q.to(acc), k.to(acc)
    q_rot = qf * c + rotate_half(qf) * s
    k_rot = kf * c + rotate_half(kf) * s
    return q_rot.to(q.dtype), k_rot.to(k.dtype)


def _check(q, k, cos, sin):
    if q.dim() != 4 or k.dim() != 4 or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"apply_rope: q {tuple(q.shape)} and k {tuple(k.shape)} must be [B, T, H, D] and "
            "[B, T, Hkv, D]"
        )
    b, t, _, d = q.shape
    if d % 2:
        raise ValueError(f"apply_rope: head dim {d} must be even")
    if cos.shape != sin.shape or tuple(cos.shape[-2:]) != (t, d // 2) or cos.dim() not in (2, 3) \
            or (cos.dim() == 3 and cos.shape[0] != b):
        raise ValueError(
            f"apply_rope: cos {tuple(cos.shape)} and sin {tuple(sin.shape)} must be "
            f"[T={t}, {d // 2}] or [B={b}, T={t}, {d // 2}]"
        )


def apply_rope(q, k, cos, sin, inplace=False):
    """Rotate queries and keys by position.

    Args:
        q: [B, T, H, D]; k: [B, T, Hkv, D].
        cos, sin: [T, D/2] or [B, T, D/2] (per-sample positions) angle tables.
        inplace: overwrite q and k with their rotations (the Triton path then allocates
            nothing; the model rotates its fresh projections this way). q and k must have a
            contiguous last dim and, under autograd, not be leaves (autograd's own rule).

    Returns:
        (q_rot, k_rot) of q's and k's shapes and dtypes: new tensors, or q and k themselves.
    """
    _check(q, k, cos, sin)
    if inplace and (q.stride(-1) != 1 or k.stride(-1) != 1):
        raise ValueError("apply_rope: inplace needs q and k with a contiguous last dim, got "
                         f"strides {q.stride()} and {k.stride()}")
    if _dispatch.backend("apply_rope", q, k, cos, sin) == "torch":
        q_rot, k_rot = apply_rope_torch(q, k, cos, sin)
        return (q.copy_(q_rot), k.copy_(k_rot)) if inplace else (q_rot, k_rot)
    from kernels.rope_triton import apply_rope_triton

    return apply_rope_triton(q, k, cos, sin, inplace)
