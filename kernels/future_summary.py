"""Future-summary losses over the shared output weight: MTP heads and FSP multi-hot BCE, no [N, V].

One call scores every auxiliary head of a step against the one unembedding ``w`` [V, d]:

- MTP / DeepSeek-style heads, stacked as ``mtp_h`` [K, N, d] with targets ``mtp_labels``
  [K, N]: one linear cross-entropy over all K*N rows, head k weighted by ``mtp_weight[k]``;
- the FSP-BCE head ``fsp_h`` [N, d] with its bag of future tokens ``bag`` [N, M] (ids, -1 =
  padding): per row ``(sum_i w_i softplus(z_i) - sum_{i in bag} w_i z_i) / norm`` with
  z = h @ w.T, token weights w_i (1, or tf-idf) and ``norm`` = V by default. The bag enters
  only through the gathered logits (and, on the Triton path, an in-register membership test):
  there is no [N, V] multi-hot target.

Rows are walked in chunks of ``CHUNK_ELEMENTS // V`` (ignored rows are skipped entirely: no
unembedding FLOPs); per chunk the logits come from one matmul, a row pass turns them into the
loss and, in place, into d loss / d logits -- ``softmax - onehot`` for CE rows,
``w * (sigmoid(z) - a) / norm`` for BCE rows -- and two more matmuls add the chunk's share of
dh and of the one shared dW accumulator. Like ``linear_cross_entropy``, the forward already
computes the gradients, so the backward is a multiply by the incoming scalar. The row pass is
``_ce_rows_torch`` / ``_bce_rows_torch`` here or the Triton row kernels of
``future_summary_triton.py`` (imported on the first Triton call).

Used by ``recipes/future_summary`` (MTP, DeepSeek-V3 MTP, FSP-BCE) and by
``benchmarks/future_summary_memory.py``; ``future_summary_reference`` is the dense float64
definition the tests and the benchmark's naive path use.
"""

import torch
import torch.nn.functional as F

from kernels import _dispatch
from kernels.linear_cross_entropy import as_id_tensor, check_in_vocab, valid_rows

__all__ = ["future_summary_loss", "multi_token_cross_entropy", "future_bag_bce",
           "future_summary_reference", "NORMS"]

# Logits alive at once: 2**22 elements (16 MiB fp32). Smaller than linear_cross_entropy's
# chunk because this op runs beside it in the same step: its peak adds to the NTP peak.
CHUNK_ELEMENTS = 1 << 22
NORMS = ("vocab", "weight_sum", "none")


def _acc_dtype(dtype):
    # fp32 for half inputs, the input's own dtype for fp32/fp64 (the float64 test references)
    return torch.promote_types(dtype, torch.float32)


# --- PyTorch row passes ----------------------------------------------------------------------

def _ce_rows_torch(logits, y, row_scale, compute_grad):
    """CE loss [n] of logits [n, V] (accumulation dtype) against y [n]; when ``compute_grad``
    the logits become ``row_scale * (softmax - onehot)`` in place."""
    lse = torch.logsumexp(logits, dim=-1)
    loss = lse - logits.gather(1, y[:, None]).squeeze(1)
    if compute_grad:
        grad = logits.sub_(lse[:, None]).exp_()
        grad.scatter_add_(1, y[:, None], torch.full_like(lse, -1.0)[:, None])
        grad.mul_(row_scale[:, None].to(grad.dtype))
    return loss


def _bce_rows_torch(logits, bag, token_weight, inv_norm, scale, compute_grad):
    """Normalised multi-hot BCE [n] of logits [n, V] against bags [n, M] (-1 = padding);
    when ``compute_grad`` the logits become ``scale * w * (sigmoid(z) - a) * inv_norm``."""
    present = bag >= 0
    safe = bag.clamp(min=0)
    wb = present.to(logits.dtype)
    if token_weight is not None:
        wb = wb * token_weight[safe]
    dense = F.softplus(logits)  # (n, V): the only chunk-sized temporary besides the logits
    dense = (dense.mul_(token_weight) if token_weight is not None else dense).sum(dim=1)
    loss = (dense - (wb * logits.gather(1, safe)).sum(dim=1)) * inv_norm
    if compute_grad:
        grad = logits.sigmoid_()
        if token_weight is not None:
            grad.mul_(token_weight)
        grad.scatter_add_(1, safe, -wb)  # padding adds 0 at column 0
        grad.mul_(inv_norm * scale)
    return loss


# --- the chunked driver, shared by both backends -----------------------------------------------

class _Part:
    """One group of rows scored the same way: rows ``h`` [R, d], the surviving row indices
    ``idx`` [n], their targets (labels [n] or bags [n, M]) and per-row scale [n]."""

    def __init__(self, kind, h, idx, target, scale):
        self.kind, self.h, self.idx, self.target, self.scale = kind, h, idx, target, scale


def _row_passes(backend):
    if backend == "torch":
        return _ce_rows_torch, _bce_rows_torch
    from kernels.future_summary_triton import bce_rows_triton, ce_rows_triton

    return ce_rows_triton, bce_rows_triton


def _run_parts(w, parts, opts, backend, want_dh, want_dw):
    """Losses per surviving row of every part, and (if asked) dh per part and the shared dW
    (accumulation dtype), of ``sum_rows scale_row * loss_row``."""
    ce_rows, bce_rows = _row_passes(backend)
    grad = want_dw or any(want_dh)
    vocab = w.shape[0]
    acc = _acc_dtype(w.dtype)
    # The Triton row kernels read the logits in the inputs' dtype and work in fp32; the
    # PyTorch path upcasts each chunk first (as linear_cross_entropy's PyTorch path does).
    logit_dtype = acc if backend == "torch" else w.dtype
    dw = torch.zeros(w.shape, dtype=acc, device=w.device) if want_dw else None
    step = max(1, CHUNK_ELEMENTS // max(vocab, 1))
    losses, dhs = [], []
    for part, part_dh in zip(parts, want_dh):
        n = part.idx.numel()
        loss = torch.empty(n, dtype=acc, device=w.device)
        dh = torch.zeros_like(part.h) if part_dh else None
        for start in range(0, n, step):
            stop = min(start + step, n)
            rows = part.idx[start:stop]
            hc = part.h.index_select(0, rows)
            logits = (hc @ w.t()).to(logit_dtype)  # (n_c, V)
            if part.kind == "ce":
                loss[start:stop] = ce_rows(logits, part.target[start:stop], part.scale[start:stop], grad)
            else:
                loss[start:stop] = bce_rows(logits, part.target[start:stop], opts["token_weight"],
                                            opts["inv_norm"], opts["fsp_weight"], grad)
            if not grad:
                continue
            g = logits.to(w.dtype)
            if dh is not None:
                dh.index_copy_(0, rows, g @ w)
            if dw is not None:
                if g.dtype == acc:
                    dw.addmm_(g.t(), hc)  # no [V, d] temporary
                else:
                    dw += (g.t() @ hc).to(acc)
        losses.append(loss)
        dhs.append(dh)
    return losses, dhs, dw


def _term_sums(parts, losses, n_heads, n_rows, opts, acc, device):
    """Weighted per-term sums [K (+1)] and row counts: MTP head k, then FSP-BCE."""
    sums, counts = [], []
    for part, loss in zip(parts, losses):
        if part.kind == "ce":
            head = torch.div(part.idx, n_rows, rounding_mode="floor")
            sums.append(torch.zeros(n_heads, dtype=acc, device=device).index_add_(0, head, loss * part.scale))
            counts.append(torch.bincount(head, minlength=n_heads))
        else:
            sums.append((loss.sum() * opts["fsp_weight"]).reshape(1))
            counts.append(torch.tensor([loss.numel()], device=device))
    return torch.cat(sums), torch.cat(counts)


class FutureSummaryFunction(torch.autograd.Function):
    """Fused MTP-CE + FSP-BCE over one weight; forward computes loss and gradients."""

    @staticmethod
    def forward(ctx, w, mtp_h, fsp_h, spec):
        parts, opts, backend = spec["parts"], spec["opts"], spec["backend"]
        position = {"ce": 1, "bce": 2}  # of mtp_h and fsp_h among forward's inputs
        want_dh = [ctx.needs_input_grad[position[p.kind]] for p in parts]
        want_dw = ctx.needs_input_grad[0]
        losses, dhs, dw = _run_parts(w, parts, opts, backend, want_dh, want_dw)
        sums, counts = _term_sums(parts, losses, spec["n_heads"], spec["n_rows"], opts,
                                  _acc_dtype(w.dtype), w.device)
        grads = {p.kind: dh for p, dh in zip(parts, dhs)}
        # Kept as attributes, not saved tensors: the backward scales them in place and drops
        # them, so the step holds one copy (a second backward through this graph is an error).
        ctx.grads = (dw, grads.get("ce"), grads.get("bce"))
        ctx.shapes = (mtp_h.shape if mtp_h is not None else None, w.dtype)
        ctx.mark_non_differentiable(sums, counts)
        return sums.sum().to(w.dtype), sums, counts

    @staticmethod
    def backward(ctx, grad_loss, _grad_sums, _grad_counts):
        if ctx.grads is None:
            raise RuntimeError("future_summary_loss: backward ran twice through one graph "
                               "(retain_graph is not supported)")
        dw, dmtp, dfsp = ctx.grads
        ctx.grads = None
        mtp_shape, w_dtype = ctx.shapes
        out = []
        for g in (dw, dmtp, dfsp):
            out.append(g.mul_(grad_loss.to(g.dtype)) if g is not None else None)
        dw, dmtp, dfsp = out
        if dw is not None:
            dw = dw.to(w_dtype)
        if dmtp is not None:
            dmtp = dmtp.view(mtp_shape)
        return dw, dmtp, dfsp, None


# --- input checking and assembly ----------------------------------------------------------------

def _check(w, mtp_h, mtp_labels, mtp_weight, fsp_h, bag, fsp_rows, token_weight, norm):
    if w.dim() != 2:
        raise ValueError(f"future_summary_loss: w {tuple(w.shape)} must be [V, d]")
    vocab, d = w.shape
    if mtp_h is None and fsp_h is None:
        raise ValueError("future_summary_loss: give mtp_h (with mtp_labels) and/or fsp_h (with bag)")
    if mtp_h is not None:
        if mtp_h.dim() != 3 or mtp_h.shape[-1] != d:
            raise ValueError(f"future_summary_loss: mtp_h {tuple(mtp_h.shape)} must be [K, N, d] "
                             f"with d = {d} (w {tuple(w.shape)})")
        if mtp_labels is None or tuple(mtp_labels.shape) != tuple(mtp_h.shape[:2]):
            got = None if mtp_labels is None else tuple(mtp_labels.shape)
            raise ValueError(f"future_summary_loss: mtp_labels {got} must be [K, N] = "
                             f"{tuple(mtp_h.shape[:2])}")
        weights = torch.as_tensor(mtp_weight if mtp_weight is not None else 1.0)
        if weights.dim() != 0 and tuple(weights.shape) != (mtp_h.shape[0],):
            raise ValueError(f"future_summary_loss: mtp_weight has {weights.numel()} entries "
                             f"for K = {mtp_h.shape[0]} heads")
    if fsp_h is not None:
        if fsp_h.dim() != 2 or fsp_h.shape[-1] != d:
            raise ValueError(f"future_summary_loss: fsp_h {tuple(fsp_h.shape)} must be [N, d] "
                             f"with d = {d} (w {tuple(w.shape)})")
        if bag is None or bag.dim() != 2 or bag.shape[0] != fsp_h.shape[0]:
            got = None if bag is None else tuple(bag.shape)
            raise ValueError(f"future_summary_loss: bag {got} must be [N, M] with N = "
                             f"{fsp_h.shape[0]} (fsp_h {tuple(fsp_h.shape)})")
        if fsp_rows is not None and tuple(fsp_rows.shape) != (fsp_h.shape[0],):
            raise ValueError(f"future_summary_loss: fsp_rows {tuple(fsp_rows.shape)} must be "
                             f"[N] = ({fsp_h.shape[0]},)")
        if token_weight is not None and tuple(token_weight.shape) != (vocab,):
            raise ValueError(f"future_summary_loss: token_weight {tuple(token_weight.shape)} "
                             f"must be [V] = ({vocab},)")
    if not (norm in NORMS or (isinstance(norm, (int, float)) and not isinstance(norm, bool) and norm > 0)):
        raise ValueError(f"future_summary_loss: norm={norm!r} must be one of {NORMS} or a "
                         "positive number")


def _inv_norm(norm, vocab, token_weight):
    if norm == "vocab":
        return 1.0 / vocab
    if norm == "weight_sum":
        return 1.0 / (float(token_weight.double().sum()) if token_weight is not None else vocab)
    if norm == "none":
        return 1.0
    return 1.0 / float(norm)


def _assemble(w, mtp_h, mtp_labels, mtp_weight, fsp_h, bag, fsp_rows, token_weight, fsp_weight,
              norm, ignore_index, ignore_ids):
    """The compacted row groups and options of one call (shared by both backends)."""
    device, dtype = w.device, w.dtype
    parts, n_heads, n_rows = [], 0, 0
    if mtp_h is not None:
        n_heads, n_rows = mtp_h.shape[0], mtp_h.shape[1]
        labels = mtp_labels.reshape(-1)
        keep = valid_rows(labels, ignore_index, as_id_tensor(ignore_ids, labels.device))
        check_in_vocab("future_summary_loss", "mtp label", mtp_labels, keep.view_as(mtp_labels),
                       w.shape[0], f"neither ignore_index={ignore_index} nor in ignore_ids")
        idx = keep.nonzero().squeeze(1)
        weights = torch.as_tensor(mtp_weight if mtp_weight is not None else 1.0, dtype=torch.float64)
        weights = weights.expand(n_heads) if weights.dim() == 0 else weights  # checked
        row_scale = weights.to(device=device, dtype=_acc_dtype(dtype))[torch.div(idx, n_rows, rounding_mode="floor")]
        parts.append(_Part("ce", mtp_h.reshape(-1, mtp_h.shape[-1]).to(dtype), idx,
                           labels.index_select(0, idx), row_scale))
    tw = token_weight.to(device=device, dtype=_acc_dtype(dtype)) if token_weight is not None else None
    opts = {"token_weight": tw, "inv_norm": _inv_norm(norm, w.shape[0], token_weight),
            "fsp_weight": float(fsp_weight)}
    if fsp_h is not None:
        rows = fsp_rows if fsp_rows is not None else torch.ones(fsp_h.shape[0], dtype=torch.bool, device=device)
        check_in_vocab("future_summary_loss", "bag id", bag, (bag >= 0) & rows[:, None],
                       w.shape[0], "not padding (-1)")
        idx = rows.nonzero().squeeze(1)
        parts.append(_Part("bce", fsp_h.to(dtype), idx, bag.index_select(0, idx).long(), None))
    return {"parts": parts, "opts": opts, "n_heads": n_heads, "n_rows": n_rows}


def future_summary_loss(w, mtp_h=None, mtp_labels=None, mtp_weight=None, fsp_h=None, bag=None,
                        fsp_rows=None, token_weight=None, fsp_weight=1.0, norm="vocab",
                        ignore_index=-100, ignore_ids=None):
    """All auxiliary future losses of a step through the shared output weight, fused.

    Args:
        w: [V, d] output (unembedding) weight, shared by every head.
        mtp_h: [K, N, d] hidden states of K MTP heads (or None).
        mtp_labels: [K, N] long targets of those heads; ``ignore_index`` or an id in
            ``ignore_ids`` takes no loss and costs no FLOPs.
        mtp_weight: a float or K floats: head k's cross-entropy sum is multiplied by it.
        fsp_h: [N, d] hidden states of the FSP head (or None).
        bag: [N, M] long future-token ids per row, -1 = padding. Ids should be unique per
            row (a repeated id counts as often as it appears).
        fsp_rows: [N] bool, rows that take the FSP loss (default all).
        token_weight: [V] per-token weights w_i (tf-idf) or None for 1.
        fsp_weight: factor on the FSP-BCE sum.
        norm: divide each row's BCE by V ("vocab", default), by sum_i w_i ("weight_sum"),
            not at all ("none"), or by a given positive number.

    Returns:
        (loss, sums, counts): ``loss`` the differentiable scalar ``sum(sums)`` in w's dtype;
        ``sums`` [K (+1)] the weighted per-term sums (MTP heads in order, then FSP-BCE) and
        ``counts`` [K (+1)] the rows each term scored, both without gradient.
    """
    _check(w, mtp_h, mtp_labels, mtp_weight, fsp_h, bag, fsp_rows, token_weight, norm)
    hs = [t for t in (mtp_h, fsp_h) if t is not None]
    backend = _dispatch.backend("future_summary", w, *hs)
    if backend == "triton":
        from kernels.future_summary_triton import check_inputs

        check_inputs(w, *hs)
    # One compute dtype for the matmuls (autocast hands bf16 hidden states next to fp32 w).
    dtype = hs[0].dtype
    wc = w if w.dtype == dtype else w.to(dtype)
    spec = _assemble(wc, mtp_h, mtp_labels, mtp_weight, fsp_h, bag, fsp_rows, token_weight,
                     fsp_weight, norm, ignore_index, ignore_ids)
    spec["backend"] = backend
    with torch.autocast(w.device.type, enabled=False):
        if torch.is_grad_enabled() and any(t.requires_grad for t in (w, *hs)):
            loss, sums, counts = FutureSummaryFunction.apply(wc, mtp_h, fsp_h, spec)
        else:
            losses, _, _ = _run_parts(wc, spec["parts"], spec["opts"], backend,
                                      [False] * len(spec["parts"]), False)
            sums, counts = _term_sums(spec["parts"], losses, spec["n_heads"], spec["n_rows"],
                                      spec["opts"], _acc_dtype(dtype), w.device)
            loss = sums.sum().to(dtype)
    return loss, sums, counts


def multi_token_cross_entropy(h, w, labels, weights=None, ignore_index=-100, ignore_ids=None):
    """Summed cross-entropy of K heads h [K, N, d] against labels [K, N] through w [V, d];
    head k's sum is multiplied by ``weights[k]`` (default 1). Returns a scalar."""
    return future_summary_loss(w, mtp_h=h, mtp_labels=labels, mtp_weight=weights,
                               ignore_index=ignore_index, ignore_ids=ignore_ids)[0]


def future_bag_bce(h, w, bag, rows=None, token_weight=None, norm="vocab"):
    """Summed FSP-BCE of h [N, d] against bags [N, M] (-1 padding) through w [V, d], over the
    rows where ``rows`` [N] is True (default all). Returns a scalar."""
    return future_summary_loss(w, fsp_h=h, bag=bag, fsp_rows=rows, token_weight=token_weight,
                               norm=norm)[0]


def future_summary_reference(w, mtp_h=None, mtp_labels=None, mtp_weight=None, fsp_h=None, bag=None,
                             fsp_rows=None, token_weight=None, fsp_weight=1.0, norm="vocab",
                             ignore_index=-100, ignore_ids=None):
    """The dense definition (materialises [N, V] logits and the multi-hot target): returns
    (loss, sums) like ``future_summary_loss``. The float64 reference of the tests and the naive
    per-head path of the memory benchmark."""
    sums = []
    if mtp_h is not None:
        keep = mtp_labels != ignore_index
        for i in (ignore_ids or ()):
            keep &= mtp_labels != i
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
        per_row = per_row * _inv_norm(norm, w.shape[0], token_weight)
        if fsp_rows is not None:
            per_row = per_row * fsp_rows.to(z.dtype)
        sums.append(per_row.sum() * fsp_weight)
    sums = torch.stack(sums)
    return sums.sum(), sums
