"""Entropy routing (arXiv 2509.01649): which positions lose their KD term.

Used by the `distill` recipe. The paper drops the KD term on the 15% of a batch's positions
where the teacher is most certain (lowest entropy): there the student copies or recalls a
token from the context, and distillation's soft targets there are what hurts in-context
learning.

The quantile is taken per training window (one row of the batch, seq_len positions), over the
positions that take a next-token loss -- neither per micro-batch nor over the global batch:
a micro-batch (or per-rank) quantile would route different positions when the same global
batch is split over another number of micro-batches or processes, and an exact global-batch
quantile needs every micro-batch's teacher entropy before the first micro-batch's backward
(a teacher pre-pass over the whole step, or one collective per micro-batch). A window is the
unit every split keeps whole, so the routed positions -- and the loss -- are the same on 1 or
N processes and for any accumulation, with no communication; with windows of hundreds of
positions it is close to the batch quantile. floor(route_fraction x scored positions) are
dropped per window; ties go to the earlier position.
"""

from __future__ import annotations

import torch


def route_mask(entropy: torch.Tensor, scored: torch.Tensor, fraction: float) -> torch.Tensor:
    """[B, T] bool: True where KD is dropped. entropy [B, T] (teacher, nats), scored [B, T]
    bool (the positions with a next-token loss); per row, the floor(fraction x scored) scored
    positions of lowest entropy."""
    if fraction <= 0:
        return torch.zeros_like(scored)
    n_drop = torch.floor(scored.sum(1).double() * fraction).long()  # (B,)
    e = entropy.float().masked_fill(~scored, float("inf"))
    order = torch.sort(e, dim=1, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(e.shape[1], device=e.device).expand_as(order))
    return (rank < n_drop[:, None]) & scored
