"""RMSNorm: y = x / sqrt(mean(x**2) + eps) * weight, over the last dimension.

This file holds the PyTorch path and the public op; the Triton kernels, launchers and
autograd.Function are in ``rmsnorm_triton.py``, imported on the first Triton call.

Used by the model's blocks and final norm through ``kernels.rms_norm``.
"""

import torch

from kernels import _dispatch

__all__ = ["rms_norm", "rms_norm_torch"]


def rms_norm_torch(x, weight, eps=1e-6):
    """PyTorch path: normalise in fp32 (fp64 for fp64 inputs), scale by ``weight``, return x's dtype."""
    acc = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(acc)
    rstd = torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (xf * rstd * weight.to(acc)).to(x.dtype)


def rms_norm(x, weight, eps=1e-6):
    """RMS-normalise ``x`` [..., d] and scale by ``weight`` [d]; returns [..., d] in x's dtype.

    The statistic is computed in fp32 whatever the input dtype.
    """
    if weight.dim() != 1 or x.shape[-1] != weight.shape[0]:
        raise ValueError(
            f"rms_norm: weight {tuple(weight.shape)} must be [d] with d = x.shape[-1] "
            f"({tuple(x.shape)})"
        )
    if _dispatch.backend("rms_norm", x, weight) == "torch":
        return rms_norm_torch(x, weight, eps)
    from kernels.rmsnorm_triton import rms_norm_triton

    return rms_norm_triton(x, weight, eps)
