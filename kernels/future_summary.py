"""Future-summary losses over the shared output weight: MTP heads and FSP multi-hot BCE, no [N, V].

One call scores every auxiliary head of a step against the one unembedding ``w`` [V, d]:

- MTP / DeepSeek-style heads, stacked as ``mtp_h`` [K, N, d] with targets ``mtp_labels``
  [K, N]: one linear cross-entropy over all K*N rows, head k weighted by ``mtp_weight[k]``;
- the FSP-BCE head ``fsp_h`` [N, d] with its bag of future tokens ``bag`` [N, M] (ids, -1 =
  padding): per row ``(sum_i w_i softplus(z_i) - sum_{i in bag} w_i z_i) / norm`` with
  z = h @ w.T, token weights w_i (1, or tf-idf) and ``norm`` = V by default. The bag enters
  only through the gathered logits (and, on the Triton path, an in-register membership test):
  there is no [N, V] multi-hot target.

Each group of rows goes through the shared driver ``kernels.vocab_chunks.vocab_chunk_pass``
in chunks of ``CHUNK_ELEMENTS // V`` rows (ignored rows are skipped entirely: no unembedding
FLOPs); per chunk the logits come from one matmul, a row loss turns them into the loss and, in
place, into d loss / d logits -- ``softmax - onehot`` for CE rows, ``w * (sigmoid(z) - a) /
norm`` for BCE rows -- and two more matmuls add the chunk's share of dh and of the one shared
dW accumulator. Like ``linear_cross_entropy``, the forward already computes the gradients, so
the backward is a multiply by the incoming scalar. The CE rows are linear cross-entropy's row
losses (``ce_row_loss_torch`` / ``ce_row_loss_triton``); the BCE rows are ``bce_row_loss_torch``
here or ``bce_row_loss_triton`` in ``future_summary_triton.py`` (imported on the first Triton
call).

Used by ``recipes/future_summary`` (MTP, DeepSeek-V3 MTP, FSP-BCE) and by
``benchmarks/future_summary_memory.py``; ``future_summary_reference.py`` holds the dense
float64 definition the tests and the benchmark's naive path use.
"""

from functools import partial

import torch
import torch.nn.functional as F

from kernels import _dispatch
from kernels.linear_cross_entropy import ce_row_loss_torch
from kernels.loss_targets import check_in_vocab, loss_target_mask
from kernels.vocab_chunks import acc_dtype, kept_rows, rows_per_chunk, vocab_chunk_pass

__all__ = ["future_summary_loss", "multi_token_cross_entropy", "future_bag_bce", "inv_norm",
           "bce_row_loss_torch", "NORMS"]

# Logits alive at once: 2**22 elements (16 MiB fp32). Smaller than linear_cross_entropy's
# chunk because this op runs beside it in the same step: its peak adds to the NTP peak.
CHUNK_ELEMENTS = 1 << 22
NORMS = ("vocab", "weight_sum", "none")


# --- the PyTorch BCE row loss ------------------------------------------------------------------

def bce_row_loss_torch(logits, bag, want_grad, *, token_weight, inv_norm, scale):
    """Row loss (``vocab_chunk_pass``) of the normalised multi-hot BCE: loss [n] of logits
    [n, V] (accumulation dtype) against bags [n, M] (-1 = padding) and, when ``want_grad``,
    the logits overwritten with ``scale * w * (sigmoid(z) - a) * inv_norm``."""
    present = bag >= 0
    safe = bag.clamp(min=0)
    wb = present.to(logits.dtype)
    if token_weight is not None:
        wb = wb * token_weight[safe]
    dense = F.softplus(logits)  # (n, V): the only chunk-sized temporary besides the logits
    dense = (dense.mul_(token_weight) if token_weight is not None else dense).sum(dim=1)
    loss = (dense - (wb * logits.gather(1, safe)).sum(dim=1)) * inv_norm
    if not want_grad:
        return loss, None
    grad = logits.sigmoid_()
    if token_weight is not None:
        grad.mul_(token_weight)
    grad.scatter_add_(1, safe, -wb)  # padding adds 0 at column 0
    grad.mul_(inv_norm * scale)
    return loss, grad


# --- the row groups, each through the shared driver ---------------------------------------------

class _Part:
    """One group of rows scored the same way: rows ``h`` [R, d], their loss mask ``keep``
    [R], the kept rows ``rows`` (``kept_rows``) and the per-row tensors of its row loss
    (``data``: MTP labels and per-row head weights, or FSP bags), all over h's R rows."""

    def __init__(self, kind, h, keep, data):
        self.kind, self.h, self.keep, self.data = kind, h, keep, data
        self.rows = kept_rows(keep)


def _row_losses(backend, opts):
    """(CE row loss, BCE row loss) of ``backend`` for ``vocab_chunk_pass``."""
    if backend == "torch":
        ce, bce = ce_row_loss_torch, bce_row_loss_torch
    else:
        from kernels.future_summary_triton import bce_row_loss_triton as bce
        from kernels.linear_cross_entropy_triton import ce_row_loss_triton as ce
    return ce, partial(bce, token_weight=opts["token_weight"], inv_norm=opts["inv_norm"],
                       scale=opts["fsp_weight"])


def _run_parts(w, parts, opts, backend, want_dh, want_dw):
    """Losses per row of every part (0 at rows it does not score), and (if asked) dh per
    part and the shared dW (accumulation dtype), of ``sum_rows scale_row * loss_row``."""
    ce, bce = _row_losses(backend, opts)
    # The Triton row kernels read the logits in the inputs' dtype and work in fp32; the
    # PyTorch path upcasts each chunk first (as linear_cross_entropy's PyTorch path does).
    logits_dtype = acc_dtype(w.dtype) if backend == "torch" else None
    dw, losses, dhs = None, [], []
    for part, part_dh in zip(parts, want_dh):
        n = part.h.shape[0] if part.rows is None else part.rows.numel()
        loss, dh, dw = vocab_chunk_pass(
            part.h, w, ce if part.kind == "ce" else bce, part.data, part.rows,
            step=rows_per_chunk(n, CHUNK_ELEMENTS, w.shape[0]), want_dh=part_dh,
            want_dw=want_dw, logits_dtype=logits_dtype, dw=dw)
        losses.append(loss)
        dhs.append(dh)
    return losses, dhs, dw


def _term_sums(parts, losses, n_heads, n_rows, opts, acc, device):
    """Weighted per-term sums [K (+1)] and row counts: MTP head k, then FSP-BCE."""
    sums, counts = [], []
    for part, loss in zip(parts, losses):
        if part.kind == "ce":
            _, row_scale = part.data
            sums.append((loss * row_scale).view(n_heads, n_rows).sum(dim=1))
            counts.append(part.keep.view(n_heads, n_rows).sum(dim=1))
        else:
            scored = loss.numel() if part.rows is None else part.rows.numel()
            sums.append((loss.sum() * opts["fsp_weight"]).reshape(1))
            counts.append(torch.tensor([scored], device=device))
    return torch.cat(sums).to(acc), torch.cat(counts)


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
                                  acc_dtype(w.dtype), w.device)
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


def inv_norm(norm, vocab, token_weight):
    """The factor on each row's FSP-BCE sum for ``norm`` (see ``future_summary_loss``)."""
    if norm == "vocab":
        return 1.0 / vocab
    if norm == "weight_sum":
        return 1.0 / (float(token_weight.double().sum()) if token_weight is not None else vocab)
    if norm == "none":
        return 1.0
    return 1.0 / float(norm)


def _assemble(w, mtp_h, mtp_labels, mtp_weight, fsp_h, bag, fsp_rows, token_weight, fsp_weight,
              norm, ignore_index, ignore_ids):
    """The row groups and options of one call (shared by both backends)."""
    device, dtype = w.device, w.dtype
    acc = acc_dtype(dtype)
    parts, n_heads, n_rows = [], 0, 0
    if mtp_h is not None:
        n_heads, n_rows = mtp_h.shape[0], mtp_h.shape[1]
        keep = loss_target_mask(mtp_labels, ignore_index, ignore_ids)
        check_in_vocab("future_summary_loss", "mtp label", mtp_labels, keep, w.shape[0],
                       f"neither ignore_index={ignore_index} nor in ignore_ids")
        weights = torch.as_tensor(mtp_weight if mtp_weight is not None else 1.0, dtype=torch.float64)
        weights = weights.expand(n_heads) if weights.dim() == 0 else weights  # checked
        # head k's weight on each of its N rows: the CE row loss scales its gradient by it
        row_scale = weights.to(device=device, dtype=acc).repeat_interleave(n_rows)
        parts.append(_Part("ce", mtp_h.reshape(-1, mtp_h.shape[-1]).to(dtype), keep.reshape(-1),
                           (mtp_labels.reshape(-1).long(), row_scale)))
    tw = token_weight.to(device=device, dtype=acc) if token_weight is not None else None
    opts = {"token_weight": tw, "inv_norm": inv_norm(norm, w.shape[0], token_weight),
            "fsp_weight": float(fsp_weight)}
    if fsp_h is not None:
        rows = fsp_rows if fsp_rows is not None else torch.ones(fsp_h.shape[0], dtype=torch.bool, device=device)
        check_in_vocab("future_summary_loss", "bag id", bag, (bag >= 0) & rows[:, None],
                       w.shape[0], "not padding (-1)")
        parts.append(_Part("bce", fsp_h.to(dtype), rows, (bag.long(),)))
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
                                      spec["opts"], acc_dtype(dtype), w.device)
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
