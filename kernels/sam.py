"""SAM's multi-tensor ops: squared gradient norm, perturb-with-saved-copy, and exact restore.

Sharpness-aware minimisation (arXiv 2010.01412) takes a gradient at w + e with
e = rho * g / ||g||, then steps from w. These ops do the weight-sized work of that step over a
whole list of tensors at once: one Triton launch per group of tensors that share a device and
dtypes (``kernels/sam_triton.py``, imported on the first Triton call), or ``torch._foreach_*``
on the PyTorch path. Both copy raw values, so ``restore_`` puts back exactly the bits
``perturb_`` saved (never w + e - e, whose rounding residue would make data-parallel ranks
drift apart).

ASAM (arXiv 2102.11600) is the ``adaptive_eta`` variant: with T_w = |w| + eta,
e = rho * T_w^2 g / ||T_w g||.

Used by ``recipes/sam.py`` (and its benchmark). This file imports only torch.
"""

from __future__ import annotations

from typing import Sequence

import torch

from kernels import _dispatch

__all__ = ["grad_sq_norm", "perturb_", "restore_", "grad_sq_norm_torch", "perturb_torch_", "restore_torch_"]

Tensors = Sequence[torch.Tensor]


# --- PyTorch path ---------------------------------------------------------------------------

def grad_sq_norm_torch(grads: Tensors, params: Tensors | None = None,
                       adaptive_eta: float | None = None) -> torch.Tensor:
    """PyTorch path of ``grad_sq_norm``: per-tensor norms by ``torch._foreach_norm``, in fp32
    (fp64 when a tensor is fp64)."""
    acc = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
    if adaptive_eta is not None:
        scaled = torch._foreach_abs([p.to(acc) for p in params])
        torch._foreach_add_(scaled, adaptive_eta)
        torch._foreach_mul_(scaled, [g.to(acc) for g in grads])
        grads = scaled
    device = grads[0].device
    norms = torch._foreach_norm(list(grads), 2, dtype=acc)
    return torch.stack([n.to(device) for n in norms]).square().sum()


def perturb_torch_(params: Tensors, grads: Tensors, scale: float, saved: Tensors,
                   adaptive_eta: float | None = None) -> None:
    """PyTorch path of ``perturb_``."""
    torch._foreach_copy_(list(saved), list(params))
    if adaptive_eta is None:
        torch._foreach_add_(list(params), list(grads), alpha=scale)
        return
    acc = [torch.promote_types(s.dtype, torch.float32) for s in saved]
    step = torch._foreach_abs([s.to(a) for s, a in zip(saved, acc)])
    torch._foreach_add_(step, adaptive_eta)
    torch._foreach_mul_(step, step)
    torch._foreach_mul_(step, [g.to(a) for g, a in zip(grads, acc)])
    torch._foreach_add_(list(params), step, alpha=scale)


def restore_torch_(params: Tensors, saved: Tensors) -> None:
    """PyTorch path of ``restore_``."""
    torch._foreach_copy_(list(params), list(saved))


# --- public ops -----------------------------------------------------------------------------

def _check(op: str, a: Tensors, b: Tensors, a_name: str, b_name: str, same_dtype: bool) -> None:
    if len(a) != len(b):
        raise ValueError(f"{op}: {len(a)} {a_name} but {len(b)} {b_name}")
    for i, (x, y) in enumerate(zip(a, b)):
        if x.shape != y.shape or (same_dtype and x.dtype != y.dtype):
            raise ValueError(f"{op}: {a_name}[{i}] {tuple(x.shape)} {x.dtype} does not match "
                             f"{b_name}[{i}] {tuple(y.shape)} {y.dtype}")


def _groups(*lists: Tensors) -> tuple[list[list[int]], list[int]]:
    """Indices grouped for one Triton launch each (contiguous, same device and dtypes), and the
    indices of the rest (non-contiguous views), which take the PyTorch path."""
    groups: dict[tuple, list[int]] = {}
    rest: list[int] = []
    for i in range(len(lists[0])):
        ts = [lst[i] for lst in lists]
        if all(t.is_contiguous() for t in ts):
            groups.setdefault((ts[0].device, *(t.dtype for t in ts)), []).append(i)
        else:
            rest.append(i)
    return list(groups.values()), rest


def _pick(lst: Tensors, idx: list[int]) -> list[torch.Tensor]:
    return [lst[i] for i in idx]


def grad_sq_norm(grads: Tensors, params: Tensors | None = None,
                 adaptive_eta: float | None = None) -> torch.Tensor:
    """Squared global L2 norm of a list of tensors, accumulated in fp32: sum_i ||g_i||^2.

    grads: tensors of any shapes (fp32/fp16/bf16). With ``adaptive_eta`` (ASAM), the norm of
    T_w g with T_w = |w| + adaptive_eta, which needs ``params`` (one per grad, same shapes).
    Returns a 0-d fp32 tensor (fp64 for fp64 inputs on the PyTorch path) on grads[0]'s device
    (0 for an empty list). A non-finite entry gives a non-finite result; deciding what to do
    then is the caller's job (SAM skips the perturbation).
    """
    if not grads:
        return torch.zeros((), dtype=torch.float32)
    if adaptive_eta is not None:
        if params is None:
            raise ValueError("grad_sq_norm: adaptive_eta needs params (ASAM scales g by |w| + eta)")
        _check("grad_sq_norm", params, grads, "params", "grads", same_dtype=False)
    lists = (grads,) if adaptive_eta is None else (grads, params)
    if _dispatch.backend("grad_sq_norm", *grads) == "torch":
        return grad_sq_norm_torch(grads, params, adaptive_eta)
    from kernels.sam_triton import grad_sq_norm_triton

    device = grads[0].device
    groups, rest = _groups(*lists)
    total = torch.zeros((), dtype=torch.float32, device=device)
    for idx in groups:
        group_params = _pick(params, idx) if adaptive_eta is not None else None
        total += grad_sq_norm_triton(_pick(grads, idx), group_params, adaptive_eta or 0.0).to(device)
    if rest:
        total += grad_sq_norm_torch(_pick(grads, rest), _pick(params, rest) if params is not None else None,
                                    adaptive_eta).to(device)
    return total


def perturb_(params: Tensors, grads: Tensors, scale: float, saved: Tensors,
             adaptive_eta: float | None = None) -> None:
    """Save an exact copy of each parameter, then move it along its gradient, in place.

    params: tensors to edit (fp32/fp16/bf16); grads: one per param, same shape (any float
    dtype); saved: one per param, same shape and dtype (filled with the bits of params before
    the edit). Then p += scale * g, computed in fp32 and rounded once to p's dtype; with
    ``adaptive_eta`` (ASAM) p += scale * (|p| + eta)^2 * g. SAM passes scale = rho / (||g|| + eps).
    """
    _check("perturb_", params, grads, "params", "grads", same_dtype=False)
    _check("perturb_", params, saved, "params", "saved", same_dtype=True)
    if not params:
        return
    if _dispatch.backend("perturb_", *params, *grads) == "torch":
        perturb_torch_(params, grads, scale, saved, adaptive_eta)
        return
    from kernels.sam_triton import perturb_triton_

    groups, rest = _groups(params, grads, saved)
    for idx in groups:
        perturb_triton_(_pick(params, idx), _pick(grads, idx), scale, _pick(saved, idx), adaptive_eta)
    if rest:
        perturb_torch_(_pick(params, rest), _pick(grads, rest), scale, _pick(saved, rest), adaptive_eta)


def restore_(params: Tensors, saved: Tensors) -> None:
    """Copy each saved tensor back into its parameter, bit for bit (same shapes and dtypes)."""
    _check("restore_", params, saved, "params", "saved", same_dtype=True)
    if not params:
        return
    if _dispatch.backend("restore_", *params) == "torch":
        restore_torch_(params, saved)
        return
    from kernels.sam_triton import copy_triton_

    groups, rest = _groups(params, saved)
    for idx in groups:
        copy_triton_(_pick(params, idx), _pick(saved, idx))
    if rest:
        restore_torch_(_pick(params, rest), _pick(saved, rest))
