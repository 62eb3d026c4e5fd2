"""Backend choice for every op: Triton on CUDA tensors, PyTorch elsewhere.

``LLMCORE_KERNELS`` overrides the automatic choice (read at each call, so tests and benchmarks
can switch it):

- unset / ``auto``: Triton when all tensors are on CUDA, their floats are fp32/fp16/bf16,
  the op names no ``triton_limit`` for their shapes and Triton imports, else PyTorch;
- ``torch``: always the PyTorch paths;
- ``triton``: always Triton; a CPU tensor is only allowed under ``TRITON_INTERPRET=1`` (the
  interpreter), because a compiled launch on CPU memory would crash;
- ``flash_attn``: attention through the ``flash-attn`` package (CUDA only), other ops as auto.

Used by the public functions of each ``kernels/<op>.py``.
"""

import os

import torch

ENV = "LLMCORE_KERNELS"
TRITON_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
CHOICES = ("auto", "torch", "triton", "flash_attn")


def requested() -> str:
    """The backend named by ``LLMCORE_KERNELS`` (``auto`` when unset)."""
    value = os.environ.get(ENV, "").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"{ENV}={value!r} is not one of {', '.join(CHOICES)}")
    return value


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


_TRITON_STATE = {}


def _triton_ready() -> bool:
    # imported on first need only: a CPU run in auto mode never pays for importing Triton
    if "ok" not in _TRITON_STATE:
        try:
            import triton  # noqa: F401

            _TRITON_STATE["ok"], _TRITON_STATE["error"] = True, None
        except Exception as exc:  # noqa: BLE001 - a broken install must not break torch paths
            _TRITON_STATE["ok"], _TRITON_STATE["error"] = False, exc
    return _TRITON_STATE["ok"]


def _all_cuda(tensors) -> bool:
    return bool(tensors) and all(t.is_cuda for t in tensors)


def backend(op: str, *tensors: torch.Tensor, allow_flash_attn: bool = False,
            triton_limit: str | None = None) -> str:
    """Pick ``"triton"``, ``"torch"`` or (attention only) ``"flash_attn"`` for ``op``.

    ``tensors`` are the op's tensor inputs; ``None`` entries are skipped. ``triton_limit`` says
    why the Triton kernels cannot take these inputs (a shape they were not built for), or is
    None: ``auto`` then picks PyTorch and a forced ``triton`` is a ValueError naming it.
    """
    tensors = [t for t in tensors if t is not None]
    on_cuda = _all_cuda(tensors)
    # the kernels take fp32/fp16/bf16 floats; auto sends anything else (fp64) to PyTorch
    triton_dtypes = all(t.dtype in TRITON_FLOATS or not t.is_floating_point() for t in tensors)
    choice = requested()
    if choice == "flash_attn" and not allow_flash_attn:
        choice = "auto"
    if choice == "torch":
        return "torch"
    if choice == "auto":
        usable = on_cuda and triton_dtypes and triton_limit is None
        return "triton" if usable and _triton_ready() else "torch"
    if choice == "flash_attn":
        if not on_cuda:
            raise RuntimeError(f"{op}: {ENV}=flash_attn needs CUDA tensors, got a CPU tensor")
        return "flash_attn"
    # forced triton
    if triton_limit is not None:
        raise ValueError(f"{op}: {triton_limit} (unset {ENV} to fall back to PyTorch)")
    if not _triton_ready():
        raise RuntimeError(
            f"{op}: {ENV}=triton but Triton does not import ({_TRITON_STATE['error']!r})"
        )
    if not on_cuda and not _interpreting():
        raise RuntimeError(
            f"{op}: {ENV}=triton with a CPU tensor needs TRITON_INTERPRET=1 set before Triton "
            "is imported (a compiled Triton launch cannot read CPU memory)"
        )
    return "triton"
