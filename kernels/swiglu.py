"""SwiGLU gate: silu(gate) * up, the MLP activation of Llama-style blocks.

This file holds the PyTorch path and the public op; the Triton kernels, launchers and
autograd.Function are in ``swiglu_triton.py``, imported on the first Triton call.

Used by the model's MLP through ``kernels.swiglu``.
"""

import torch
import torch.nn.functional as F

from kernels import _dispatch

__all__ = ["swiglu", "swiglu_torch"]


def swiglu_torch(gate, up):
    """PyTorch path: ``F.silu(gate) * up``."""
    return F.silu(gate) * up


def swiglu(gate, up):
    """silu(gate) * up for two tensors of the same shape [..., f]; returns that shape."""
    if gate.shape != up.shape:
        raise ValueError(f"swiglu: gate {tuple(gate.shape)} and up {tuple(up.shape)} differ")
    if gate.dtype != up.dtype:
        # checked for both backends, so a CPU run does not accept what a GPU run refuses
        raise TypeError(f"swiglu: gate {gate.dtype} and up {up.dtype} dtypes differ")
    if _dispatch.backend("swiglu", gate, up) == "torch":
        return swiglu_torch(gate, up)
    from kernels.swiglu_triton import swiglu_triton

    return swiglu_triton(gate, up)
