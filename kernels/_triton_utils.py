"""Small helpers shared by the ``kernels/*_triton.py`` launchers (imports Triton).

Used only by the Triton halves of the ops, which are imported lazily.
"""

import torch
import triton
import triton.language as tl

from kernels._dispatch import TRITON_FLOATS, _interpreting

# Triton's name for each dtype of ``_dispatch.TRITON_FLOATS`` (the dtypes dispatch sends here)
_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def interpreting() -> bool:
    """True under ``TRITON_INTERPRET=1`` (kernels run on the CPU interpreter)."""
    return _interpreting()


def dot_dtype(dtype: torch.dtype):
    """Operand dtype for ``tl.dot``: the input's half type on a GPU (tensor cores), fp32 for
    fp32 inputs and always under the interpreter, whose bf16 arithmetic is not faithful."""
    if interpreting() or dtype not in _TL_DTYPES:
        return tl.float32
    return _TL_DTYPES[dtype]


def check_dtype(op: str, *tensors: torch.Tensor) -> None:
    """The Triton paths take fp32, fp16 and bf16; say so instead of failing inside a kernel."""
    for t in tensors:
        if t.dtype not in TRITON_FLOATS:
            raise TypeError(f"{op}: the Triton path takes fp32/fp16/bf16 tensors, got {t.dtype}")


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))
