"""The plain float64-capable definition of ``rms_norm``, written as the formula.

The tests compare the Triton and PyTorch paths' output and both gradients with it (autograd
through these ops gives the reference gradients).
"""

import torch

__all__ = ["rms_norm_reference"]


def rms_norm_reference(x, weight, eps=1e-6):
    """x [..., D] / sqrt(mean(x**2) + eps) * weight [D], in the inputs' dtype."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight
