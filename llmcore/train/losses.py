"""Training loss terms as (sum, count) pairs, and their single division per optimizer step.

Used by the trainer. The next-token loss goes through `kernels.linear_cross_entropy` from
hidden states and the output weight, so [tokens, vocab] logits are never materialised.
Every term is divided by the global count of next-token loss tokens of the whole optimizer
step (all micro-batches, all ranks), which keeps gradient accumulation exact however tokens
are masked.
"""

from __future__ import annotations

import torch

import kernels


def count_loss_tokens(labels: torch.Tensor, ignore_ids: torch.Tensor | None, ignore_index: int = -100) -> int:
    """Number of targets that carry a next-token loss, by the kernels' own rule
    (`kernels.loss_target_mask`), so the step's denominator counts exactly the rows scored."""
    return int(kernels.loss_target_mask(labels, ignore_index, ignore_ids).sum())


def ntp_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
             ignore_ids: torch.Tensor | None = None, z_loss: float = 0.0) -> torch.Tensor:
    """Summed next-token cross-entropy. hidden (B, T, d), weight (V, d), labels (B, T)."""
    return kernels.linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), weight, labels.reshape(-1),
                                        ignore_index=-100, ignore_ids=ignore_ids, z_loss=z_loss,
                                        reduction="sum")


def combine(terms: dict[str, tuple[torch.Tensor, int]], denominator: int) -> torch.Tensor:
    """The differentiable objective of one micro-batch: sum of term sums / step token count."""
    total = None
    for value, _ in terms.values():
        total = value if total is None else total + value
    return total / max(1, denominator)
