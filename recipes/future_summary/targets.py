"""Targets of the future-summary recipe, built per micro-batch from (input_ids, labels, doc_ids).

Used by `recipes.future_summary` (and its tests). Indexing: a window holds tokens x_0..x_T;
the batch has input_ids[t] = x_t and labels[t] = x_{t+1} (-100 = no loss) for t < T, and
doc_ids[t] = document of x_t. Documents are contiguous runs within a window.

- `shifted_labels(labels, doc_ids, j)`: the target x_{t+j} of an MTP head (labels[t+j-1]),
  kept only while x_{t+j-1} is still in t's document -- the last hop may enter the next
  document exactly as the trunk's own next-token target does at a document's last token.
- `future_bag(...)`: the bag {x_{t+2}, ..., x_{t+tau}} of ids in t's document (never across a
  document end), deduplicated, -1 padded; x_{t+1} is excluded (NTP predicts it). Only
  input_ids are read, so x_T (the window's last label, whose document the batch does not
  carry) is never in a bag. `complete[t]` says the horizon is fully visible: t + tau <= T-1,
  or t's document ends inside the window.
- `revlm_inputs` / `revlm_targets`: the reverse LM reads x_{T-1}, ..., x_1 (right to left);
  its hidden state at x_{t+2} -- the state from which it predicts x_{t+1} having read
  x_{>=t+2} -- is the FSP-RevLM target of position t (t <= T-3, same document as x_{t+2}).
"""

from __future__ import annotations

import torch


def shifted_labels(labels: torch.Tensor, doc_ids: torch.Tensor | None, offset: int) -> torch.Tensor:
    """Targets x_{t+offset} (B, T) for a head predicting `offset` >= 1 tokens ahead."""
    if offset < 1:
        raise ValueError(f"offset must be >= 1, got {offset}")
    B, T = labels.shape
    s = offset - 1
    out = torch.full_like(labels, -100)
    if s >= T:
        return out
    target = labels[:, s:]
    if doc_ids is not None:
        target = torch.where(doc_ids[:, s:] == doc_ids[:, :T - s], target, -100)
    out[:, :T - s] = target
    return out


def future_bag(input_ids: torch.Tensor, doc_ids: torch.Tensor | None, tau: int,
               ignore_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Bags (B, T, tau-1) long (-1 padded, sorted, unique) and complete (B, T) bool.

    Ids in `ignore_ids` (control tokens such as <pause>) never enter a bag.
    """
    if tau < 2:
        raise ValueError(f"tau must be >= 2 (the bag is x_(t+2..t+tau)), got {tau}")
    B, T = input_ids.shape
    device = input_ids.device
    if doc_ids is None:
        doc_ids = torch.zeros_like(input_ids)
    pad = torch.full((B, tau), -1, dtype=input_ids.dtype, device=device)
    ext_ids = torch.cat([input_ids, pad], dim=1)  # (B, T + tau)
    # a document id no real position has: padding never joins t's document
    ext_doc = torch.cat([doc_ids, torch.full_like(pad, 0) + doc_ids.min() - 1], dim=1)
    pos = torch.arange(T, device=device)[:, None] + torch.arange(2, tau + 1, device=device)[None, :]  # (T, M)
    cand = ext_ids[:, pos]  # (B, T, M)
    cand = torch.where(ext_doc[:, pos] == doc_ids[:, :, None], cand, -1)
    if ignore_ids is not None and ignore_ids.numel():
        cand = torch.where(torch.isin(cand, ignore_ids.to(device)), -1, cand)
    bag, _ = cand.sort(dim=-1)
    dup = torch.zeros_like(bag, dtype=torch.bool)
    dup[..., 1:] = bag[..., 1:] == bag[..., :-1]
    bag = bag.masked_fill(dup, -1)
    t = torch.arange(T, device=device)
    # documents are contiguous, so t's ends inside the window iff the last position is another's
    complete = (t + tau <= T - 1)[None, :] | (doc_ids != doc_ids[:, -1:])
    return bag, complete


def revlm_inputs(input_ids: torch.Tensor, doc_ids: torch.Tensor | None):
    """What the reverse LM reads: x_{T-1}, ..., x_1 (B, T-1) and their document ids."""
    rev_doc = doc_ids[:, 1:].flip(1) if doc_ids is not None else None
    return input_ids[:, 1:].flip(1), rev_doc


def revlm_targets(rev_hidden: torch.Tensor, doc_ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """FSP-RevLM targets g (B, T, d_rev) and rows (B, T) bool from the reverse LM's hidden
    states (B, T-1, d_rev) over `revlm_inputs`.

    rev_hidden[:, p] is the state at x_{T-1-p}; flipped, G[:, q] is the state at x_{q+1}, so
    position t's target (the state at x_{t+2}) is G[:, t+1], for t = 0..T-3.
    """
    B, T1, width = rev_hidden.shape
    T = T1 + 1
    g = rev_hidden.new_zeros(B, T, width)
    rows = torch.zeros(B, T, dtype=torch.bool, device=rev_hidden.device)
    if T >= 3:
        g[:, :T - 2] = rev_hidden.flip(1)[:, 1:]
        rows[:, :T - 2] = True if doc_ids is None else doc_ids[:, 2:] == doc_ids[:, :T - 2]
    return g, rows
