"""Plain float64 definitions of SAM's multi-tensor ops, one tensor at a time.

The tests compare ``grad_sq_norm`` and ``perturb_`` (plain SAM and the ASAM ``adaptive_eta``
variant) with them; ``restore_`` needs no reference, it must give back the saved bits.
"""

import torch

__all__ = ["perturb_reference", "sq_norm_reference"]


def sq_norm_reference(grads, params=None, eta=None):
    """sum_i ||g_i||^2 as a float64 CPU scalar, or with ``eta`` (ASAM) sum_i ||(|w_i| + eta) g_i||^2."""
    total = torch.zeros((), dtype=torch.float64)
    for i, g in enumerate(grads):
        g = g.double().cpu()
        if eta is not None:
            g = g * (params[i].double().cpu().abs() + eta)
        total += g.pow(2).sum()
    return total


def perturb_reference(params, grads, scale, eta=None):
    """The perturbed weights in float64: w + scale * g, or with ``eta`` (ASAM)
    w + scale * (|w| + eta)^2 g. New tensors; the inputs are untouched."""
    out = []
    for p, g in zip(params, grads):
        w, g = p.double(), g.double()
        step = g if eta is None else g * (w.abs() + eta) ** 2
        out.append(w + scale * step)
    return out
