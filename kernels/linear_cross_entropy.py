"""Linear cross-entropy: next-token loss from hidden states without a [N, V] logits tensor.

Both backends compact away ignored rows (``ignore_index`` labels and the ``ignore_ids``
control tokens such as ``<pause>``), so those rows cost no unembedding FLOPs, and walk the rest
in chunks of rows, gathered per chunk (no copy of h). (The Triton path's vocabulary-blocked
pass, taken only when at most 1/8 of the rows are ignored and row chunks would be small, gives
ignored rows a zero gradient instead.) The forward of ``LinearCrossEntropyFunction`` computes
the loss AND the gradients w.r.t. the hidden states and the weight, so the backward is one
multiply by the incoming scalar; only ``reduction="none"`` recomputes in its backward, since
the per-token weights are known only then. The per-chunk work is ``chunk_pass_torch`` here or
``chunk_pass_triton`` (fused softmax/gradient row kernels) in ``linear_cross_entropy_triton.py``.

Used by ``llmcore`` losses (``kernels.linear_cross_entropy(h, W_out, labels)``) and by recipes
that add vocabulary losses.
"""

from typing import Optional

import torch
from torch import Tensor

from kernels import _dispatch
from kernels._opaque import compile_opaque

__all__ = ["linear_cross_entropy", "linear_cross_entropy_torch", "valid_rows", "kept_rows",
           "check_in_vocab", "chunk_pass_torch"]

# Logits alive at once on the PyTorch path: 2**24 elements (64 MiB fp32) per chunk keeps peak
# memory a small multiple of W while the matmuls stay large enough to be efficient.
CHUNK_ELEMENTS = 1 << 24
REDUCTIONS = ("mean", "sum", "none")


def valid_rows(labels, ignore_index, ignore_ids):
    """Boolean [N]: rows whose target is neither ``ignore_index`` nor in ``ignore_ids``."""
    valid = labels != ignore_index
    if ignore_ids is not None and ignore_ids.numel() > 0:
        valid &= ~torch.isin(labels, ignore_ids)
    return valid


def _chunk_pass(backend):
    if backend == "torch":
        return chunk_pass_torch
    from kernels.linear_cross_entropy_triton import chunk_pass_triton

    return chunk_pass_triton


def _grad_outputs(h, w, dh, dw):
    # custom ops return tensors only: a gradient not asked for comes back empty
    return (dh if dh is not None else h.new_empty(0),
            dw.to(w.dtype) if dw is not None else w.new_empty(0))


def _fake_grads(h, w, want_dh, want_dw):
    return _grad_outputs(h, w, h.new_empty(h.shape) if want_dh else None,
                         w.new_empty(w.shape) if want_dw else None)


def _loss_fake(h, w, labels, ignore_ids, ignore_index, z_loss, smoothing, reduction, want_dh,
               want_dw, backend):
    shape, grads = (labels.shape, False) if reduction == "none" else ((), True)
    return (h.new_empty(shape, dtype=_acc_dtype(h)),
            *_fake_grads(h, w, want_dh and grads, want_dw and grads))


@compile_opaque("linear_cross_entropy", _loss_fake)
def _loss_and_grads(h: Tensor, w: Tensor, labels: Tensor, ignore_ids: Optional[Tensor],
                    ignore_index: int, z_loss: float, smoothing: float, reduction: str,
                    want_dh: bool, want_dw: bool, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, dh, dW): the reduced loss and its gradients (empty when not wanted), or for
    ``reduction="none"`` the per-row losses and no gradients (they need the incoming weights).
    Finding the kept rows syncs with the host, hence one opaque op for the whole pass."""
    rows = kept_rows(labels, ignore_index, ignore_ids, w.shape[0])
    count = labels.numel() if rows is None else rows.numel()
    grads = reduction != "none"
    # mean over zero rows stays 0/0 = nan, exactly like F.cross_entropy
    scale = 1.0 / count if (reduction == "mean" and count > 0) else 1.0
    losses, dh, dw = _chunk_pass(backend)(h, w, labels, rows, z_loss, smoothing, scale, None,
                                          want_dh and grads, want_dw and grads)
    if reduction != "none":
        losses = losses.sum() / count if reduction == "mean" else losses.sum()
    return (losses, *_grad_outputs(h, w, dh, dw))


@compile_opaque("linear_cross_entropy_weighted_bwd",
                lambda h, w, labels, ignore_ids, ignore_index, z_loss, smoothing, row_weight,
                want_dh, want_dw, backend: _fake_grads(h, w, want_dh, want_dw))
def _weighted_grads(h: Tensor, w: Tensor, labels: Tensor, ignore_ids: Optional[Tensor],
                    ignore_index: int, z_loss: float, smoothing: float, row_weight: Tensor,
                    want_dh: bool, want_dw: bool, backend: str) -> tuple[Tensor, Tensor]:
    """(dh, dW) of sum_i row_weight_i * loss_i: the backward of ``reduction="none"``, which
    finds the kept rows again rather than keep a data-dependent index tensor alive."""
    rows = kept_rows(labels, ignore_index, ignore_ids, w.shape[0])
    _, dh, dw = _chunk_pass(backend)(h, w, labels, rows, z_loss, smoothing, 1.0, row_weight,
                                     want_dh, want_dw)
    return _grad_outputs(h, w, dh, dw)


class LinearCrossEntropyFunction(torch.autograd.Function):
    """Chunked linear CE over the non-ignored rows; ``backend`` picks the per-chunk pass.

    The surviving rows are gathered chunk by chunk (``rows``), never as a copy of h, and their
    dh is scattered into one zeroed [N, d] tensor; with nothing ignored the chunks are plain
    slices. With reduction mean/sum the backward scales the saved gradients in place, so it
    may run once per forward.
    """

    @staticmethod
    def forward(ctx, h, w, labels, ignore_index, ignore_ids, z_loss, smoothing, reduction,
                backend):
        want_dh, want_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        out, dh, dw = _loss_and_grads(h, w, labels, ignore_ids, ignore_index, z_loss, smoothing,
                                      reduction, want_dh, want_dw, backend)
        ctx.reduction, ctx.used = reduction, False
        if reduction == "none":
            ctx.save_for_backward(h, w, labels, ignore_ids)
            ctx.options = (ignore_index, z_loss, smoothing, want_dh, want_dw, backend)
        else:
            ctx.save_for_backward(dh if want_dh else None, dw if want_dw else None)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        nones = (None,) * 7
        if ctx.reduction == "none":
            h, w, labels, ignore_ids = ctx.saved_tensors
            ignore_index, z_loss, smoothing, want_dh, want_dw, backend = ctx.options
            dh, dw = _weighted_grads(h, w, labels, ignore_ids, ignore_index, z_loss, smoothing,
                                     grad_out.reshape(-1).contiguous(), want_dh, want_dw,
                                     backend)
            return (dh if want_dh else None, dw if want_dw else None) + nones
        if ctx.used:
            raise RuntimeError(
                "linear_cross_entropy: a second backward through one forward (retain_graph) "
                "is not supported with reduction='mean'/'sum': the gradients computed in the "
                "forward were scaled in place by the first")
        ctx.used = True
        dh, dw = ctx.saved_tensors
        # in place: a copy would double the [V, d] weight gradient at the peak
        dh = dh.mul_(grad_out.to(dh.dtype)) if dh is not None else None
        dw = dw.mul_(grad_out.to(dw.dtype)) if dw is not None else None
        return (dh, dw) + nones


def kept_rows(labels, ignore_index, ignore_ids, vocab):
    """Long [n] indices of the rows that take a loss, or None when every row does; a kept
    label outside [0, vocab) is an error (``check_in_vocab``)."""
    valid = valid_rows(labels, ignore_index, ignore_ids)
    check_in_vocab("linear_cross_entropy", "label", labels, valid, vocab,
                   f"neither ignore_index={ignore_index} nor in ignore_ids")
    rows = valid.nonzero().squeeze(1)  # the queue is drained already: this sync is cheap
    return None if rows.numel() == labels.numel() else rows


def check_in_vocab(op, what, ids, keep, vocab, why_kept):
    """ValueError naming the first id of ``ids`` that ``keep`` marks as scored but lies
    outside [0, vocab): the Triton kernels would read past the logits row instead of failing
    as F.cross_entropy's device assert does. One host sync."""
    outside = keep & ((ids < 0) | (ids >= vocab))
    if outside.any():
        at = tuple(outside.nonzero()[0].tolist())
        raise ValueError(f"{op}: {what} {int(ids[at])} at position {at if len(at) > 1 else at[0]}"
                         f" is outside the vocabulary [0, {vocab}) and is {why_kept}")


def chunk_rows(h, y, rows, start, stop):
    """Rows start:stop of the kept rows: (h [n_c, d], y [n_c], their indices in h or None)."""
    if rows is None:
        return h[start:stop], y[start:stop], None
    idx = rows[start:stop]
    return h.index_select(0, idx), y.index_select(0, idx), idx


def put_rows(out, idx, start, stop, values):
    """Write a chunk's per-row ``values`` at its rows of ``out`` (zeros elsewhere)."""
    if idx is None:
        out[start:stop] = values
    else:
        out.index_copy_(0, idx, values.to(out.dtype))


def _acc_dtype(t):
    # fp32 for half inputs, the input's own dtype for fp32/fp64 (the float64 test references)
    return torch.promote_types(t.dtype, torch.float32)


def chunk_pass_torch(h, w, y, rows, z_loss, smoothing, scale, row_weight, want_dh, want_dw):
    """Per-row losses [N] (0 at rows not in ``rows``) and, if asked, dh [N, d] and dW [V, d]
    (fp32, fp64 for fp64 inputs) for the rows ``rows`` of h [N, d] (all rows when None) with
    targets y [N]; gradients are of ``sum_i row_weight_i * scale * loss_i`` (``row_weight``
    [N] or None). Matmuls run in h's dtype (w is cast if it differs)."""
    vocab = w.shape[0]
    n = h.shape[0] if rows is None else rows.numel()
    acc = _acc_dtype(h)
    w = w if w.dtype == h.dtype else w.to(h.dtype)  # matmuls in h's dtype, as autocast would
    losses = torch.zeros(h.shape[0], dtype=acc, device=h.device)
    dh = torch.zeros_like(h) if want_dh else None
    dw = torch.zeros(w.shape, dtype=acc, device=w.device) if want_dw else None
    step = max(1, CHUNK_ELEMENTS // max(vocab, 1))
    for start in range(0, n, step):
        stop = min(start + step, n)
        hc, yc, idx = chunk_rows(h, y, rows, start, stop)
        logits = (hc @ w.t()).to(acc)  # (n_c, V)
        lse = torch.logsumexp(logits, dim=-1)  # (n_c,)
        loss = lse - logits.gather(1, yc[:, None]).squeeze(1)
        if smoothing > 0.0:
            # PyTorch's definition: (1 - e) * nll + e * mean over classes of -log p
            loss = (1.0 - smoothing) * loss + smoothing * (lse - logits.mean(dim=-1))
        if z_loss > 0.0:
            loss = loss + z_loss * lse * lse
        put_rows(losses, idx, start, stop, loss)
        if not (want_dh or want_dw):
            continue
        # d loss / d logits = p * (1 + 2 z lse) - (1 - e) onehot - e / V, built in place
        grad = logits.sub_(lse[:, None]).exp_()
        if z_loss > 0.0:
            grad.mul_((1.0 + 2.0 * z_loss * lse)[:, None])
        grad.scatter_add_(1, yc[:, None], torch.full_like(lse, smoothing - 1.0)[:, None])
        if smoothing > 0.0:
            grad.sub_(smoothing / vocab)
        if row_weight is not None:
            rw = row_weight[start:stop] if idx is None else row_weight.index_select(0, idx)
            grad.mul_(rw[:, None].to(acc))
        if scale != 1.0:
            grad.mul_(scale)
        grad = grad.to(h.dtype)
        if want_dh:
            put_rows(dh, idx, start, stop, grad @ w)
        if want_dw:
            if dw.dtype == grad.dtype:
                dw.addmm_(grad.t(), hc)  # no [V, d] temporary per chunk
            else:
                dw += grad.t() @ hc
    return losses, dh, dw


def _forward_only(h, w, labels, ignore_index, ignore_ids, z_loss, smoothing, reduction, backend):
    # no autograd graph wanted (eval): skip the gradient work entirely
    return _loss_and_grads(h, w, labels, ignore_ids, ignore_index, z_loss, smoothing,
                           reduction, False, False, backend)[0]


def _run(h, w, labels, ignore_index, ignore_ids, z_loss, smoothing, reduction, backend):
    args = (h, w, labels, ignore_index, ignore_ids, float(z_loss), float(smoothing), reduction,
            backend)
    if torch.is_grad_enabled() and (h.requires_grad or w.requires_grad):
        return LinearCrossEntropyFunction.apply(*args)
    return _forward_only(*args)


def linear_cross_entropy_torch(h, w, labels, ignore_index=-100, ignore_ids=None, z_loss=0.0,
                               label_smoothing=0.0, reduction="mean"):
    """PyTorch path: h [N, d], w [V, d], labels [N], ignore_ids a long tensor or None."""
    return _run(h, w, labels, ignore_index, ignore_ids, z_loss, label_smoothing, reduction,
                "torch")


def as_id_tensor(ignore_ids, device):
    """A sequence or tensor of token ids (or None) as a flat long tensor on `device`."""
    if ignore_ids is None:
        return None
    if isinstance(ignore_ids, torch.Tensor):
        return ignore_ids.to(device=device, dtype=torch.long).reshape(-1)
    return torch.tensor(list(ignore_ids), dtype=torch.long, device=device)


def linear_cross_entropy(h, w, labels, ignore_index=-100, ignore_ids=None, z_loss=0.0,
                         label_smoothing=0.0, reduction="mean"):
    """Cross-entropy of ``h @ w.T`` against ``labels`` without materialising the logits.

    Args:
        h: [N, d] hidden states (any leading shape [..., d] is flattened).
        w: [V, d] output (unembedding) weight.
        labels: [N] (or h's leading shape) long targets.
        ignore_index: label value that takes no loss.
        ignore_ids: 1-D long tensor or sequence of target ids that also take no loss (pause
            and other control tokens); rows with them cost no unembedding FLOPs.
        z_loss: weight of the z-loss term ``z_loss * logsumexp(logits)**2`` per token.
        label_smoothing: as in ``F.cross_entropy`` (uniform over all V classes).
        reduction: "mean" over non-ignored tokens (nan when there are none, like
            ``F.cross_entropy``), "sum", or "none".

    Under autocast the matmuls run in the autocast dtype (as an ``nn.Linear`` would); the
    weight gradient keeps w's dtype and dh h's.

    Returns:
        A scalar (mean/sum) or a tensor of labels' shape (none) with zeros at ignored tokens,
        in fp32 (fp64 for fp64 inputs) whatever h's dtype: a bf16 sum over many tokens would
        lose the digits that the (sum, count) bookkeeping needs.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"linear_cross_entropy: reduction={reduction!r} not in {REDUCTIONS}")
    if w.dim() != 2 or h.shape[-1] != w.shape[1]:
        raise ValueError(
            f"linear_cross_entropy: h {tuple(h.shape)} and w {tuple(w.shape)} must be "
            "[N, d] and [V, d]"
        )
    lead = labels.shape
    h2 = h.reshape(-1, h.shape[-1])
    flat = labels.reshape(-1)
    if flat.shape[0] != h2.shape[0]:
        raise ValueError(
            f"linear_cross_entropy: labels {tuple(lead)} do not match h {tuple(h.shape)}"
        )
    if flat.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"linear_cross_entropy: labels must be int64 or int32, got {flat.dtype}")
    flat = flat.long()
    if not 0.0 <= label_smoothing < 1.0 or z_loss < 0.0:
        raise ValueError(
            f"linear_cross_entropy: need 0 <= label_smoothing < 1 and z_loss >= 0, got "
            f"{label_smoothing} and {z_loss}"
        )
    ids = as_id_tensor(ignore_ids, flat.device)
    backend = _dispatch.backend("linear_cross_entropy", h2, w, flat)
    if backend == "triton":
        from kernels.linear_cross_entropy_triton import check_inputs

        check_inputs(h2, w)
    device_type = h2.device.type
    if torch.is_autocast_enabled(device_type):
        # what autocast does for a Linear, done once and explicitly: the hidden states enter
        # the matmuls in the autocast dtype (the chunk passes cast w to match), and no op
        # inside is left to autocast's per-op rules (``out=`` matmuls would bypass them)
        h2 = h2.to(torch.get_autocast_dtype(device_type))
    with torch.autocast(device_type, enabled=False):
        out = _run(h2, w, flat, ignore_index, ids, z_loss, label_smoothing, reduction, backend)
    return out.reshape(lead) if reduction == "none" else out
