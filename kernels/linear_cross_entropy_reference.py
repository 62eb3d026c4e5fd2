"""The dense float64 definition of ``linear_cross_entropy``: ``F.cross_entropy(h @ w.T)``.

Materialises the [N, V] logits, so it is for checking, not training: the tests compare the
chunked op's loss and both gradients with it.
"""

import torch
import torch.nn.functional as F

from kernels.loss_targets import loss_target_mask

__all__ = ["linear_cross_entropy_reference"]


def linear_cross_entropy_reference(h, w, labels, ignore_index=-100, ignore_ids=None, z_loss=0.0,
                                   label_smoothing=0.0, reduction="mean"):
    """Same arguments and result as ``linear_cross_entropy`` for h [N, d], w [V, d] and
    labels [N]: per-token CE with label smoothing plus ``z_loss * logsumexp**2``, 0 at tokens
    that take no loss, reduced by "mean" (over kept tokens), "sum" or "none"."""
    keep = loss_target_mask(labels, ignore_index, ignore_ids)
    logits = h @ w.t()  # (N, V)
    losses = F.cross_entropy(logits, torch.where(keep, labels, -100), reduction="none",
                             label_smoothing=label_smoothing)
    losses = losses + z_loss * torch.logsumexp(logits, -1) ** 2 * keep
    if reduction == "mean":
        return losses.sum() / keep.sum()
    return losses.sum() if reduction == "sum" else losses
