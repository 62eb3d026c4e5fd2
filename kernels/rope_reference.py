"""The plain float64-capable definition of ``apply_rope``, rotate_half written out per half.

The tests compare both paths (and, through transformers' Llama rotary, the convention) with it.
"""

import torch

__all__ = ["apply_rope_reference"]


def apply_rope_reference(q, k, cos, sin):
    """(q_rot, k_rot) for q [B, T, H, D], k [B, T, H_kv, D] and tables cos, sin [T, D/2]
    (shared) or [B, T, D/2] (per sample):
    ``x * cat(cos, cos) + rotate_half(x) * cat(sin, sin)``."""
    def rot(x):
        half = x.shape[-1] // 2
        c = torch.cat((cos, cos), -1)
        s = torch.cat((sin, sin), -1)
        c, s = (c[None], s[None]) if c.dim() == 2 else (c, s)  # (B, T, D)
        rotated = torch.cat((-x[..., half:], x[..., :half]), -1)
        return x * c[:, :, None] + rotated * s[:, :, None]

    return rot(q), rot(k)
