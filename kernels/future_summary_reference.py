"""The dense float64 definition of ``future_summary_loss``: [N, V] logits and a multi-hot target.

Ordinary PyTorch, no chunking and no compaction, so it can be read against the paper and the
chunked op checked against it: the tests compare every loss and gradient with it, and
``benchmarks/future_summary_memory.py`` runs it as the naive path.
"""

import torch
import torch.nn.functional as F

from kernels.future_summary import inv_norm
from kernels.loss_targets import loss_target_mask

__all__ = ["future_summary_reference"]


def future_summary_reference(w, mtp_h=None, mtp_labels=None, mtp_weight=None, fsp_h=None, bag=None,
                             fsp_rows=None, token_weight=None, fsp_weight=1.0, norm="vocab",
                             ignore_index=-100, ignore_ids=None):
    """The dense definition (materialises [N, V] logits and the multi-hot target): returns
    (loss, sums) like ``future_summary_loss`` (same arguments)."""
    sums = []
    if mtp_h is not None:
        keep = loss_target_mask(mtp_labels, ignore_index, ignore_ids)
        weights = torch.as_tensor(mtp_weight if mtp_weight is not None else 1.0, dtype=mtp_h.dtype)
        weights = weights.expand(mtp_h.shape[0]) if weights.dim() == 0 else weights
        for k in range(mtp_h.shape[0]):
            logits = mtp_h[k] @ w.t()
            ce = F.cross_entropy(logits, torch.where(keep[k], mtp_labels[k], -100), reduction="sum")
            sums.append(ce * weights[k])
    if fsp_h is not None:
        z = fsp_h @ w.t()  # (N, V)
        present = (bag >= 0).to(z.dtype)
        target = torch.zeros_like(z).scatter_add_(1, bag.clamp(min=0), present)  # multi-hot
        per_row = F.softplus(z) - target * z
        if token_weight is not None:
            per_row = per_row * token_weight.to(z.dtype)
        per_row = per_row.sum(dim=1)
        per_row = per_row * inv_norm(norm, w.shape[0], token_weight)
        if fsp_rows is not None:
            per_row = per_row * fsp_rows.to(z.dtype)
        sums.append(per_row.sum() * fsp_weight)
    sums = torch.stack(sums)
    return sums.sum(), sums
