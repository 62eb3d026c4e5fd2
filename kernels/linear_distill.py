"""Linear distillation loss: next-token CE and a KD term in one pass over vocabulary chunks.

Distilled pretraining (arXiv 2509.01649) trains on, per token i that takes a loss,

    loss_i = (1 - alpha) * CE(y_i, softmax(z_i)) + alpha * T^2 * kd_weight_i * KL_i,

with z_i = h_i @ W.T the student's logits over the FULL vocabulary (never renormalised over a
teacher's top-k) and KL_i the KD term against a teacher, either

- sparse (an offline cache): k ids and log target probabilities per row, ``teacher_ids``
  [N, k] and ``teacher_logprobs`` [N, k] (log q_j, -inf = padding). The caller builds q (top-k
  renormalised, top-p then top-k, or sampled ids with importance weights (arXiv 2503.16870),
  already at the temperature: log q_T); the kernel takes it as given and neither renormalises
  nor tempers it (T enters the student's softmax and the T^2 factor only).
  KL_i = sum_j q_j (log q_j - log softmax(z_i / T)[id_j]); when the q_j do not sum to 1 (importance weights) this is the
  cross-entropy against the weighted ids minus their q log q, and the gradient uses their
  actual sum. A repeated id counts once per slot. Or
- dense (an online teacher): its hidden states ``teacher_h`` [N, d_t] and output weight
  ``teacher_w`` [V, d_t]; q_T = softmax(teacher_h @ teacher_w.T / T), chunked exactly like the
  student's logits (the driver's ``teacher`` pair), KL_i = KL(q_T || softmax(z_i / T)).

``reverse=True`` takes KL(softmax(z/T) || q_T) instead, for the dense teacher only: a sparse
teacher's q is unknown outside its k ids, where the student still has mass, so the reverse KL
is undefined (infinite under any reading that sets q = 0 there); it is refused
(``ValueError``) rather than silently redefined over the k ids, which would renormalise the
student.

Rows whose label is ``ignore_index`` or in ``ignore_ids`` (``loss_target_mask``) take neither
term and cost no FLOPs; ``kd_weight`` [N] (routing: 0 drops the KD term of a row) scales only the
KD term and is independent of that mask; ``ce_weight`` [N] replaces a row's CE coefficient
``1 - alpha`` (routing that trains a routed row as plain pretraining: 1 there), in the same pass. ``reduction="mean"`` divides both terms by the number
of CE loss tokens, so routed rows simply contribute 0 KD and the loss stays on the NTP scale
whatever fraction is routed; ``"sum"`` returns the sums, for the trainer's division by the
global count of loss tokens of the step (``llmcore/train/losses.py``), exact under gradient
accumulation. At ``alpha = 0`` the call IS ``kernels.linear_cross_entropy`` (same chunks, same
row loss: bit-identical loss and gradients) and the teacher is not read.

Like linear CE, the forward computes the loss and the gradients w.r.t. h and W; the backward
multiplies them by the incoming scalar. The teacher is frozen: its tensors never get a
gradient. The per-chunk row loss is ``distill_row_loss_torch`` here, or the fused row kernels
of ``linear_distill_triton.py``; ``linear_distill_reference.py`` is the dense float64
definition. Unlike linear CE's pass it is not registered as a ``torch.compile`` custom op: the
trainer compiles the blocks, not the loss, so it runs eager (a compiled caller breaks the graph
at its host syncs).

Used by the distillation recipe (its ``ntp`` replacement) and by
``benchmarks/linear_distill_memory.py``.
"""

from collections import namedtuple
from functools import partial

import torch

from kernels import _dispatch
from kernels.loss_targets import as_id_tensor, check_in_vocab, loss_target_mask
from kernels.vocab_chunks import acc_dtype, kept_rows, rows_per_chunk, vocab_chunk_pass

__all__ = ["DistillLoss", "chunk_pass_torch", "distill_row_loss_torch", "entropy_row_loss_torch",
           "linear_distill_loss", "teacher_entropy"]

# Logits alive at once on the PyTorch path, as linear_cross_entropy's (2**24 elements per
# chunk, the teacher's logits included). Inside a chunk the row loss works on sub-blocks of
# SUB_ELEMENTS so its [rows, V] temporaries (several: lse, probabilities at two temperatures,
# the teacher's) stay small next to the chunk: the peak stays that of plain linear CE.
CHUNK_ELEMENTS = 1 << 24
SUB_ELEMENTS = 1 << 21
REDUCTIONS = ("mean", "sum")
# a cache stores ids as uint16 where V <= 65536: taken as they are, widened once per call
ID_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint16, torch.uint8)

DistillLoss = namedtuple("DistillLoss", ["loss", "hard", "soft", "n_tokens"])
DistillLoss.__doc__ = """Result of ``linear_distill_loss``.

loss: the differentiable objective ``(1 - alpha) * hard + alpha * T^2 * soft`` (scalar).
hard: the reduced CE term; soft: the reduced KD term (``kd_weight``-weighted KL, before alpha
and T^2; 0 when alpha = 0, where the teacher is not read). Both detached, for logging.
n_tokens: long scalar tensor, the number of CE loss tokens (the mean's denominator)."""


# --- the PyTorch row loss -----------------------------------------------------------------------

def _kl(xt, lse_t, t_logits, ids, logq, inv_t, reverse):
    """KL per row of one sub-block and the teacher-side tensor its gradient needs: q [r, k]
    (sparse), q [r, V] (dense forward) or log(s_T / q_T) [r, V] (dense reverse). ``xt`` is
    z / T, ``lse_t`` its log-sum-exp."""
    if t_logits is None:
        q = logq.exp()
        logp_ids = xt.gather(1, ids) - lse_t[:, None]
        # q log q is 0 at padding (q = 0, log q = -inf)
        kl = (torch.where(q > 0, q * logq, torch.zeros_like(q)) - q * logp_ids).sum(1)
        return kl, q
    lq = t_logits.mul_(inv_t) if inv_t != 1.0 else t_logits  # in the teacher's buffer
    lq = lq.sub_(torch.logsumexp(lq, 1, keepdim=True))  # log q_T
    logs = xt - lse_t[:, None]  # log s_T
    if not reverse:
        q = lq.exp()
        return (q * logs.neg_().add_(lq)).sum(1), q
    ratio = logs.sub_(lq)
    return (torch.exp(xt - lse_t[:, None]).mul_(ratio)).sum(1), ratio


def distill_row_loss_torch(logits, *data, want_grad, alpha, temperature, z_loss, reverse,
                           scale, dense):
    """Row loss (``vocab_chunk_pass``, ``loss_columns=2``) of CE + KD for one chunk.

    ``data`` is (teacher_logits [n, V], y [n], kd_weight [n] or None, ce_weight [n] or None)
    for the dense teacher, (y, ids [n, k], logq [n, k], kd_weight, ce_weight) for the sparse
    one; logits [n, V] in the accumulation dtype. Returns the per-row terms [n, 2] = (CE incl.
    z-loss, KL) and, with ``want_grad``, the logits overwritten with ``scale * d loss_i / d
    logits`` of ``loss_i = c_i CE_i + a T^2 w_i KL_i`` (c_i = ce_weight_i, else 1 - a):

        c (p (1 + 2 z lse) - onehot(y)) + a T w (Q s_T - q)           forward KL
        c (p (1 + 2 z lse) - onehot(y)) + a T w s_T (log s_T/q - KL)  reverse KL

    with p = softmax(z), s_T = softmax(z / T), Q = sum_j q_j (1 for a normalised q; the
    sparse q enters by a scatter over its ids). Works on sub-blocks of SUB_ELEMENTS.
    """
    if dense:
        t_all, y_all, kdw_all, cew_all = data
        ids_all = logq_all = None
    else:
        y_all, ids_all, logq_all, kdw_all, cew_all = data
        t_all = None
    n, vocab = logits.shape
    sub = max(1, SUB_ELEMENTS // max(vocab, 1))
    out = logits.new_empty((n, 2))
    inv_t = 1.0 / temperature
    for s0 in range(0, n, sub):
        s1 = min(s0 + sub, n)
        x, y = logits[s0:s1], y_all[s0:s1, None]
        lse = torch.logsumexp(x, 1)
        ce = lse - x.gather(1, y).squeeze(1)
        if z_loss > 0.0:
            ce = ce + z_loss * lse * lse
        xt = x * inv_t if inv_t != 1.0 else x
        lse_t = torch.logsumexp(xt, 1) if inv_t != 1.0 else lse
        ids = None if dense else ids_all[s0:s1].clamp(0, vocab - 1)  # padding has q = 0
        kl, teach = _kl(xt, lse_t, None if t_all is None else t_all[s0:s1], ids,
                        None if dense else logq_all[s0:s1], inv_t, reverse)
        out[s0:s1, 0] = ce
        out[s0:s1, 1] = kl
        if not want_grad:
            continue
        c_kd = torch.full_like(lse, alpha * temperature)
        if kdw_all is not None:
            c_kd = c_kd * kdw_all[s0:s1].to(c_kd.dtype)
        c_y = (torch.full_like(lse, 1.0 - alpha) if cew_all is None
               else cew_all[s0:s1].to(lse.dtype))  # the CE coefficient: the label's -c
        c_ce = c_y * (1.0 + 2.0 * z_loss * lse) if z_loss > 0.0 else c_y
        same = inv_t == 1.0  # s_T is p: one probability tensor serves both terms
        s_t = None if same else xt.sub_(lse_t[:, None]).exp_()
        g = x.sub_(lse[:, None]).exp_()  # p, becoming the gradient in place
        if reverse:
            kd = teach.sub_(kl[:, None]).mul_(g if same else s_t).mul_(c_kd[:, None])
            g.mul_(c_ce[:, None]).add_(kd)
        elif dense:
            if same:
                g.mul_((c_ce + c_kd)[:, None])
            else:
                g.mul_(c_ce[:, None]).add_(s_t.mul_(c_kd[:, None]))
            g.sub_(teach.mul_(c_kd[:, None]))
        else:
            q_sum = teach.sum(1)
            if same:
                g.mul_((c_ce + c_kd * q_sum)[:, None])
            else:
                g.mul_(c_ce[:, None]).add_(s_t.mul_((c_kd * q_sum)[:, None]))
            g.scatter_add_(1, ids, -(teach * c_kd[:, None]))
        g.scatter_add_(1, y, -c_y[:, None])
        if scale != 1.0:
            g.mul_(scale)
    return out, (logits if want_grad else None)


def entropy_row_loss_torch(logits, want_grad, *, temperature):
    """Row "loss" (``vocab_chunk_pass``, ``loss_columns=2``, no gradient) of the teacher's
    statistics: [n, 2] = (entropy of softmax(z / T), log-sum-exp of z / T)."""
    n, vocab = logits.shape
    sub = max(1, SUB_ELEMENTS // max(vocab, 1))
    out = logits.new_empty((n, 2))
    for s0 in range(0, n, sub):
        u = logits[s0:s0 + sub]
        u = u.mul_(1.0 / temperature) if temperature != 1.0 else u
        lse = torch.logsumexp(u, 1)
        p = torch.exp(u - lse[:, None])
        out[s0:s0 + sub, 0] = lse - (p * u).sum(1)  # H = lse - E_p[u]
        out[s0:s0 + sub, 1] = lse
    return out, None


# --- the chunk passes ---------------------------------------------------------------------------

def _row_opts(opts, scale):
    names = ("alpha", "temperature", "z_loss", "reverse", "dense")
    return {"scale": scale, **{k: opts[k] for k in names}}


def chunk_pass_torch(h, w, rows, teacher, row_data, opts, scale, want_dh, want_dw):
    """Per-row terms [N, 2] (CE, KL; 0 at rows not in ``rows``) and, if asked, dh [N, d] and
    dW [V, d] of ``scale * sum_i loss_i`` over the rows ``rows`` of h (all when None).
    ``teacher`` is the dense teacher's (h_t, w_t) or None; ``row_data`` the row loss's per-row
    tensors (see ``distill_row_loss_torch``), without the teacher logits."""
    n = h.shape[0] if rows is None else rows.numel()
    per_row = w.shape[0] * (2 if teacher is not None else 1)
    row_loss = partial(_with_grad_flag, distill_row_loss_torch, **_row_opts(opts, scale))
    return vocab_chunk_pass(h, w, row_loss, row_data, rows,
                            step=rows_per_chunk(n, CHUNK_ELEMENTS, per_row),
                            want_dh=want_dh, want_dw=want_dw, logits_dtype=acc_dtype(h.dtype),
                            teacher=teacher, loss_columns=2)


def _with_grad_flag(fn, *args, **kw):
    # the driver passes want_grad last, positionally; the row losses take it by keyword
    *data, want_grad = args
    return fn(*data, want_grad=want_grad, **kw)


def entropy_pass_torch(th, tw, temperature):
    """[N, 2] = (entropy, lse) of softmax(th @ tw.T / T), chunked, no gradient."""
    row_loss = partial(_with_grad_flag, entropy_row_loss_torch, temperature=temperature)
    out, _, _ = vocab_chunk_pass(th, tw, row_loss, (), None,
                                 step=rows_per_chunk(th.shape[0], CHUNK_ELEMENTS, tw.shape[0]),
                                 want_dh=False, want_dw=False, logits_dtype=acc_dtype(th.dtype),
                                 loss_columns=2)
    return out


def _chunk_pass(backend):
    if backend == "torch":
        return chunk_pass_torch
    from kernels.linear_distill_triton import chunk_pass_triton

    return chunk_pass_triton


# --- autograd -----------------------------------------------------------------------------------

def _loss_and_grads(h, w, spec, want_dh, want_dw):
    """(loss, hard, soft, n_tokens, dh, dW) of one call; gradients None when not wanted."""
    keep, kdw, cew, opts = spec["keep"], spec["kd_weight"], spec["ce_weight"], spec["opts"]
    count = keep.sum()
    n_kept = int(count)
    rows = kept_rows(keep)
    scale = 1.0 / n_kept if (spec["reduction"] == "mean" and n_kept > 0) else 1.0
    terms, dh, dw = _chunk_pass(spec["backend"])(h, w, rows, spec["teacher"], spec["row_data"],
                                                 opts, scale, want_dh, want_dw)
    hard = terms[:, 0].sum()
    kl = terms[:, 1]
    soft = (kl * kdw.to(kl.dtype)).sum() if kdw is not None else kl.sum()
    ce_term = (1.0 - opts["alpha"]) * hard if cew is None else (terms[:, 0] * cew.to(kl.dtype)).sum()
    if spec["reduction"] == "mean":
        # mean over zero rows stays 0/0 = nan, like linear_cross_entropy
        hard, soft, ce_term = hard / n_kept, soft / n_kept, ce_term / n_kept
    t = opts["temperature"]
    loss = ce_term + opts["alpha"] * t * t * soft
    return loss, hard, soft, count, dh, dw


class LinearDistillFunction(torch.autograd.Function):
    """Fused CE + KD over the kept rows; the forward computes the loss and both gradients,
    the backward scales them in place (so one backward per forward)."""

    @staticmethod
    def forward(ctx, h, w, spec):
        want_dh, want_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        loss, hard, soft, count, dh, dw = _loss_and_grads(h, w, spec, want_dh, want_dw)
        ctx.grads, ctx.w_dtype = (dh, dw), w.dtype
        ctx.mark_non_differentiable(hard, soft, count)
        return loss, hard, soft, count

    @staticmethod
    def backward(ctx, grad_loss, _hard, _soft, _count):
        if ctx.grads is None:
            raise RuntimeError("linear_distill_loss: a second backward through one forward "
                               "(retain_graph) is not supported: the gradients computed in the "
                               "forward were scaled in place by the first")
        dh, dw = ctx.grads
        ctx.grads = None
        # in place: a copy would double the [V, d] weight gradient at the peak
        dh = dh.mul_(grad_loss.to(dh.dtype)) if dh is not None else None
        dw = dw.mul_(grad_loss.to(dw.dtype)).to(ctx.w_dtype) if dw is not None else None
        return dh, dw, None


# --- the public functions -----------------------------------------------------------------------

def _err(msg):
    return ValueError(f"linear_distill_loss: {msg}")


def _flat_rows(name, t, n, lead, width=None):
    """t [*lead] or [N] (width None), [*lead, width] or [N, width], flattened to [N(, width)];
    anything else is a ValueError naming it."""
    if t is None:
        return None
    rows = tuple(t.shape) if width is None else tuple(t.shape[:-1])
    if rows not in (tuple(lead), (n,)):
        want = f"[{n}]" if width is None else f"[{n}, {width}]"
        raise _err(f"{name} {tuple(t.shape)} does not match the {n} rows of labels "
                   f"{tuple(lead)} (expected {want} or labels' shape)")
    return t.reshape(n) if width is None else t.reshape(n, width)


def _check_teacher(n, lead, vocab, teacher_ids, teacher_logprobs, teacher_h, teacher_w, reverse):
    """Which teacher ('sparse', 'dense' or None) and its rows flattened to [N, ...]."""
    sparse = teacher_ids is not None or teacher_logprobs is not None
    dense = teacher_h is not None or teacher_w is not None
    if sparse and dense:
        raise _err("give either a sparse teacher (teacher_ids, teacher_logprobs) or a dense "
                   "one (teacher_h, teacher_w), not both")
    if sparse:
        if teacher_ids is None or teacher_logprobs is None:
            raise _err("a sparse teacher needs both teacher_ids and teacher_logprobs")
        if teacher_ids.dim() < 1 or tuple(teacher_ids.shape) != tuple(teacher_logprobs.shape):
            raise _err(f"teacher_ids {tuple(teacher_ids.shape)} and teacher_logprobs "
                       f"{tuple(teacher_logprobs.shape)} must both be [N, k]")
        if teacher_ids.dtype not in ID_DTYPES:
            raise TypeError(f"linear_distill_loss: teacher_ids must be an integer tensor, got "
                            f"{teacher_ids.dtype}")
        if not teacher_logprobs.is_floating_point():
            raise TypeError(f"linear_distill_loss: teacher_logprobs must be floating point, got "
                            f"{teacher_logprobs.dtype}")
        if reverse:
            raise _err("reverse=True needs the dense teacher (teacher_h, teacher_w): a sparse "
                       "teacher's q is unknown outside its k ids, where the student has mass, so "
                       "KL(student || teacher) is undefined there")
        k = teacher_ids.shape[-1]
        ids = _flat_rows("teacher_ids", teacher_ids, n, lead, k).long()
        return "sparse", ids, _flat_rows("teacher_logprobs", teacher_logprobs, n, lead, k)
    if dense:
        if teacher_h is None or teacher_w is None:
            raise _err("a dense teacher needs both teacher_h and teacher_w")
        if teacher_w.dim() != 2 or teacher_h.shape[-1] != teacher_w.shape[1]:
            raise _err(f"teacher_h {tuple(teacher_h.shape)} and teacher_w "
                       f"{tuple(teacher_w.shape)} must be [N, d_t] and [V, d_t]")
        if teacher_w.shape[0] != vocab:
            raise _err(f"teacher_w has {teacher_w.shape[0]} vocabulary rows, the student's w "
                       f"{vocab}: slice a padded vocabulary to the shared one before the call")
        th = teacher_h.reshape(-1, teacher_h.shape[-1])
        if th.shape[0] != n:
            raise _err(f"teacher_h {tuple(teacher_h.shape)} has {th.shape[0]} rows, h has {n}")
        return "dense", th, teacher_w
    return None, None, None


def linear_distill_loss(h, w, labels, *, teacher_ids=None, teacher_logprobs=None,
                        teacher_h=None, teacher_w=None, alpha=0.5, temperature=1.0,
                        kd_weight=None, ce_weight=None, reverse=False, ignore_index=-100,
                        ignore_ids=None, reduction="mean", z_loss=0.0):
    """Next-token CE plus knowledge distillation from ``h @ w.T``, without [N, V] logits.

    Distilled pretraining (arXiv 2509.01649): per token that takes a loss,
    ``(1 - alpha) * CE(y, softmax(z)) + alpha * T^2 * kd_weight * KL(q_T || softmax(z / T))``
    with the student's log-probs over the full vocabulary (see the module docstring for the
    sparse and dense KL and the reverse KL).

    Args:
        h: [N, d] student hidden states (any leading shape [..., d] is flattened).
        w: [V, d] student output weight.
        labels: [N] (or h's leading shape) long targets.
        teacher_ids, teacher_logprobs: the sparse teacher, [N, k] integer ids (int64, int32,
            or a cache's uint16) and [N, k] log target probabilities log q_T (already tempered,
            renormalised or importance-weighted by the caller; -inf = padding, whose id is not
            read).
        teacher_h, teacher_w: the dense online teacher, [N, d_t] hidden states and [V, d_t]
            output weight over the SAME V (slice a padded vocabulary first). Frozen: no
            gradient reaches either teacher's tensors.
        alpha: weight of the KD term in [0, 1]; 0 is exactly ``linear_cross_entropy`` (the
            teacher, which may then be None, is not read).
        temperature: T > 0, applied to student and teacher logits in the KD term only.
        kd_weight: [N] float per-row KD weight (routing: 0 drops a row's KD), independent of
            the CE mask; default 1.
        ce_weight: [N] float per-row CE coefficient in place of ``1 - alpha`` (a routed row
            trained as plain pretraining: 1), in the same pass; default ``1 - alpha``. Needs
            alpha > 0 (at 0 the call is ``linear_cross_entropy``, one weight for all rows).
        reverse: KL(softmax(z / T) || q_T) instead (dense teacher only; a ValueError for the
            sparse one).
        ignore_index, ignore_ids: rows whose label is ``ignore_index`` or in ``ignore_ids``
            take neither term (``kernels.loss_target_mask``).
        reduction: "mean" (both terms over the number of CE loss tokens; nan when there are
            none) or "sum" (for a caller that divides by a global token count).
        z_loss: the z-loss of ``linear_cross_entropy``, part of the CE (hard) term.

    Returns:
        ``DistillLoss(loss, hard, soft, n_tokens)``: the differentiable scalar loss
        ``(1 - alpha) * hard + alpha * T^2 * soft`` (with ``ce_weight``, its weighted sum of
        the rows' CE in place of the first term), the reduced CE and KD terms (detached;
        soft is 0 at alpha = 0) and the long count of CE loss tokens; fp32 (fp64 for fp64
        inputs).
    """
    if reduction not in REDUCTIONS:
        raise _err(f"reduction={reduction!r} not in {REDUCTIONS}")
    alpha, temperature, z_loss = float(alpha), float(temperature), float(z_loss)
    if not 0.0 <= alpha <= 1.0:
        raise _err(f"alpha={alpha} must be in [0, 1]")
    if not temperature > 0.0:
        raise _err(f"temperature={temperature} must be > 0")
    if z_loss < 0.0:
        raise _err(f"z_loss={z_loss} must be >= 0")
    for name, t in (("w", w), ("teacher_w", teacher_w)):
        if t is not None and t.numel() == 0:
            # what a ZeRO-3 partitioned parameter looks like outside its gather
            raise _err(f"{name} {tuple(t.shape)} is empty: under ZeRO-3 gather the output weight "
                       "for the whole loss (deepspeed.zero.GatheredParameters) before the call")
    if w.dim() != 2 or h.shape[-1] != w.shape[1]:
        raise _err(f"h {tuple(h.shape)} and w {tuple(w.shape)} must be [N, d] and [V, d]")
    lead = labels.shape
    h2 = h.reshape(-1, h.shape[-1])
    n, vocab = h2.shape[0], w.shape[0]
    flat = labels.reshape(-1)
    if flat.shape[0] != n:
        raise _err(f"labels {tuple(lead)} do not match h {tuple(h.shape)}")
    if flat.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"linear_distill_loss: labels must be int64 or int32, got {flat.dtype}")
    flat = flat.long()
    kind, t_a, t_b = _check_teacher(n, lead, vocab, teacher_ids, teacher_logprobs, teacher_h,
                                    teacher_w, reverse)
    kdw = _flat_rows("kd_weight", kd_weight, n, lead)
    if kdw is not None and not kdw.is_floating_point():
        raise TypeError(f"linear_distill_loss: kd_weight must be floating point, got {kdw.dtype}")
    kdw = kdw.detach() if kdw is not None else None  # a routing decision, not a parameter
    cew = _flat_rows("ce_weight", ce_weight, n, lead)
    if cew is not None and not cew.is_floating_point():
        raise TypeError(f"linear_distill_loss: ce_weight must be floating point, got {cew.dtype}")
    cew = cew.detach() if cew is not None else None
    ids_tensor = as_id_tensor(ignore_ids, flat.device)
    if alpha == 0.0 and cew is not None:
        raise _err("ce_weight needs alpha > 0: at alpha=0 the call is linear_cross_entropy, one "
                   "weight for every row")
    if alpha == 0.0:
        return _plain_ce(h, w, labels, ignore_index, ids_tensor, z_loss, reduction)
    if kind is None:
        raise _err(f"alpha={alpha} needs a teacher: teacher_ids + teacher_logprobs (sparse) or "
                   "teacher_h + teacher_w (dense)")
    keep = loss_target_mask(flat, ignore_index, ids_tensor)
    check_in_vocab("linear_distill_loss", "label", flat, keep, vocab,
                   f"neither ignore_index={ignore_index} nor in ignore_ids")
    backend = _dispatch.backend("linear_distill", h2, w, flat, t_a, t_b if kind == "dense" else None)
    device_type = h2.device.type
    if torch.is_autocast_enabled(device_type):
        # as linear_cross_entropy: the matmuls in the autocast dtype, chosen once, here
        h2 = h2.to(torch.get_autocast_dtype(device_type))
        if kind == "dense":
            t_a = t_a.to(torch.get_autocast_dtype(device_type))
    acc = acc_dtype(h2.dtype)
    if kind == "sparse":
        ids, logq = t_a, t_b.detach().to(acc)
        scored = keep[:, None] & (logq > float("-inf"))
        if torch.isnan(logq).any() or (logq == float("inf")).any():
            raise _err("teacher_logprobs hold nan or +inf (padding is -inf)")
        check_in_vocab("linear_distill_loss", "teacher id", ids, scored, vocab,
                       "not padding (its log-prob is finite)")
        teacher, row_data = None, (flat, ids, logq, kdw, cew)
    else:
        teacher, row_data = (t_a.detach(), t_b.detach()), (flat, kdw, cew)
    if backend == "triton":
        from kernels.linear_distill_triton import check_inputs

        check_inputs(h2, w, *(teacher or ()))
    opts = {"alpha": alpha, "temperature": temperature, "z_loss": z_loss, "reverse": reverse,
            "dense": kind == "dense"}
    spec = {"keep": keep, "kd_weight": kdw, "ce_weight": cew, "opts": opts, "teacher": teacher,
            "row_data": row_data, "reduction": reduction, "backend": backend}
    with torch.autocast(device_type, enabled=False):
        if torch.is_grad_enabled() and (h2.requires_grad or w.requires_grad):
            out = LinearDistillFunction.apply(h2, w, spec)
        else:
            out = _loss_and_grads(h2, w, spec, False, False)[:4]
    return DistillLoss(*out)


def _plain_ce(h, w, labels, ignore_index, ids, z_loss, reduction):
    """alpha = 0: the call is linear_cross_entropy itself (bit-identical by construction)."""
    from kernels.linear_cross_entropy import linear_cross_entropy

    loss = linear_cross_entropy(h, w, labels, ignore_index=ignore_index, ignore_ids=ids,
                                z_loss=z_loss, reduction=reduction)
    count = loss_target_mask(labels.reshape(-1), ignore_index, ids).sum()
    return DistillLoss(loss, loss.detach(), torch.zeros_like(loss.detach()), count)


def teacher_entropy(teacher_h, teacher_w, temperature=1.0):
    """Per-row entropy and log-sum-exp of softmax(teacher_h @ teacher_w.T / T), chunked.

    For entropy routing with an online teacher (drop KD at the lowest-entropy positions) and
    for a cache's per-token statistics; no [N, V] tensor, no gradient.

    Args:
        teacher_h: [N, d_t] (any leading shape [..., d_t]); teacher_w: [V, d_t].
        temperature: T > 0; both results are of the tempered logits z / T (at T = 1 the raw
            log-sum-exp, from which any T's log-probs of cached logits follow).

    Returns:
        (entropy, lse), each of teacher_h's leading shape, in fp32 (fp64 for fp64 inputs).
    """
    temperature = float(temperature)
    if not temperature > 0.0:
        raise ValueError(f"teacher_entropy: temperature={temperature} must be > 0")
    if teacher_w.dim() != 2 or teacher_h.shape[-1] != teacher_w.shape[1]:
        raise ValueError(f"teacher_entropy: teacher_h {tuple(teacher_h.shape)} and teacher_w "
                         f"{tuple(teacher_w.shape)} must be [N, d_t] and [V, d_t]")
    lead = teacher_h.shape[:-1]
    th = teacher_h.detach().reshape(-1, teacher_h.shape[-1])
    tw = teacher_w.detach()
    backend = _dispatch.backend("teacher_entropy", th, tw)
    with torch.no_grad():
        if backend == "torch":
            out = entropy_pass_torch(th, tw, temperature)
        else:
            from kernels.linear_distill_triton import check_inputs, entropy_pass_triton

            check_inputs(th, tw)
            out = entropy_pass_triton(th, tw, temperature)
    return out[:, 0].reshape(lead), out[:, 1].reshape(lead)
