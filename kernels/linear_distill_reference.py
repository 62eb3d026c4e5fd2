"""The dense float64 definition of ``linear_distill_loss``, with [N, V] logits.

Materialises the student's (and the dense teacher's) logits, so it is for checking, not
training: the tests compare the chunked op's loss, hard and soft terms and both gradients with
it, and the benchmark's naive path is it at fp32.
"""

import torch

from kernels.loss_targets import loss_target_mask

__all__ = ["linear_distill_reference", "teacher_entropy_reference"]


def linear_distill_reference(h, w, labels, *, teacher_ids=None, teacher_logprobs=None,
                             teacher_h=None, teacher_w=None, alpha=0.5, temperature=1.0,
                             kd_weight=None, ce_weight=None, reverse=False, ignore_index=-100,
                             ignore_ids=None, reduction="mean", z_loss=0.0):
    """(loss, hard, soft, n_tokens) of ``linear_distill_loss`` for h [N, d], w [V, d],
    labels [N] and teacher rows [N, ...], written out densely: per kept row
    ``c (CE + z lse^2) + a T^2 kd_weight KL`` (c = ce_weight, else 1 - a), KL sparse (the given q at its ids against
    the student's full-vocabulary log-softmax at T), dense forward or dense reverse."""
    keep = loss_target_mask(labels, ignore_index, ignore_ids)
    logits = h @ w.t()
    logp = torch.log_softmax(logits, -1)
    safe_y = torch.where(keep, labels, torch.zeros_like(labels))
    ce = -logp.gather(1, safe_y[:, None]).squeeze(1)
    ce = ce + z_loss * torch.logsumexp(logits, -1) ** 2
    logp_t = torch.log_softmax(logits / temperature, -1)
    if teacher_ids is not None:
        q = teacher_logprobs.exp()
        safe = torch.where(q > 0, teacher_ids, torch.zeros_like(teacher_ids))
        qlogq = torch.where(q > 0, q * teacher_logprobs, torch.zeros_like(q))
        kl = (qlogq - q * logp_t.gather(1, safe)).sum(-1)
    elif teacher_h is not None:
        logq = torch.log_softmax(teacher_h.detach() @ teacher_w.detach().t() / temperature, -1)
        if reverse:
            kl = (logp_t.exp() * (logp_t - logq)).sum(-1)
        else:
            kl = (logq.exp() * (logq - logp_t)).sum(-1)
    else:
        kl = torch.zeros_like(ce)
    kdw = kd_weight if kd_weight is not None else torch.ones_like(ce)
    zero = torch.zeros_like(ce)
    hard = torch.where(keep, ce, zero).sum()
    soft = torch.where(keep, kdw * kl, zero).sum()
    cew = ce_weight if ce_weight is not None else torch.full_like(ce, 1 - alpha)
    ce_term = torch.where(keep, cew * ce, zero).sum()
    count = keep.sum()
    if reduction == "mean":
        hard, soft, ce_term = hard / count, soft / count, ce_term / count
    loss = ce_term + alpha * temperature ** 2 * soft
    return loss, hard, soft, count


def teacher_entropy_reference(teacher_h, teacher_w, temperature=1.0):
    """(entropy [N], lse [N]) of softmax(teacher_h @ teacher_w.T / T), densely."""
    u = teacher_h @ teacher_w.t() / temperature
    logp = torch.log_softmax(u, -1)
    return -(logp.exp() * logp).sum(-1), torch.logsumexp(u, -1)
