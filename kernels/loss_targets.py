"""Which targets take a loss: the one rule, and the checks and id lists that go with it.

A target takes a loss unless it is ``ignore_index`` (padding, prompt positions) or one of the
``ignore_ids`` (control tokens such as ``<pause>``). Every vocabulary loss in ``kernels`` asks
``loss_target_mask``, and ``llmcore``'s count of loss tokens is meant to ask it too, so the
count that divides a step's loss sums cannot drift from the rows the kernels score. Imports
only torch.
"""

import torch
from torch import Tensor

__all__ = ["as_id_tensor", "check_in_vocab", "loss_target_mask"]


def loss_target_mask(labels: Tensor, ignore_index: int = -100, ignore_ids=None) -> Tensor:
    """Boolean tensor of ``labels``' shape: True where the target takes a loss.

    Args:
        labels: long (or int) targets of any shape.
        ignore_index: the label value that takes no loss.
        ignore_ids: token ids that take no loss either: None, a sequence of ints or a tensor
            (any shape, any device; it is moved to ``labels``' device).
    """
    keep = labels != ignore_index
    ids = as_id_tensor(ignore_ids, labels.device)
    if ids is not None and ids.numel() > 0:
        keep &= ~torch.isin(labels, ids)
    return keep


def as_id_tensor(ids, device) -> Tensor | None:
    """A sequence or tensor of token ids (or None) as a flat long tensor on ``device``."""
    if ids is None:
        return None
    if isinstance(ids, torch.Tensor):
        return ids.to(device=device, dtype=torch.long).reshape(-1)
    return torch.tensor(list(ids), dtype=torch.long, device=device)


def check_in_vocab(op, what, ids, keep, vocab, why_kept):
    """ValueError naming the first id of ``ids`` that ``keep`` marks as scored but lies
    outside [0, vocab): the Triton kernels would read past the logits row instead of failing
    as F.cross_entropy's device assert does. One host sync."""
    outside = keep & ((ids < 0) | (ids >= vocab))
    if outside.any():
        at = tuple(outside.nonzero()[0].tolist())
        raise ValueError(f"{op}: {what} {int(ids[at])} at position {at if len(at) > 1 else at[0]}"
                         f" is outside the vocabulary [0, {vocab}) and is {why_kept}")
