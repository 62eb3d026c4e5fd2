"""Linear cross-entropy: next-token loss from hidden states without a [N, V] logits tensor.

Both backends compact away ignored rows (``loss_target_mask``: ``ignore_index`` labels and the
``ignore_ids`` control tokens such as ``<pause>``), so those rows cost no unembedding FLOPs, and
walk the rest in chunks of rows, gathered per chunk (no copy of h), through the shared driver
``kernels.vocab_chunks.vocab_chunk_pass``. (The Triton path's vocabulary-blocked pass, taken
only when at most 1/8 of the rows are ignored and row chunks would be small, gives ignored rows
a zero gradient instead.) The forward of ``LinearCrossEntropyFunction`` computes the loss AND
the gradients w.r.t. the hidden states and the weight, so the backward is one multiply by the
incoming scalar; only ``reduction="none"`` recomputes in its backward, since the per-token
weights are known only then. The per-chunk row loss is ``ce_row_loss_torch`` here or
``ce_row_loss_triton`` (a fused softmax/gradient row kernel) in
``linear_cross_entropy_triton.py``; ``linear_cross_entropy_reference.py`` is the dense float64
definition.

Used by ``llmcore`` losses (``kernels.linear_cross_entropy(h, W_out, labels)``) and by recipes
that add vocabulary losses.
"""

from functools import partial
from typing import Optional

import torch
from torch import Tensor

from kernels import _dispatch
from kernels._opaque import compile_opaque
from kernels.loss_targets import as_id_tensor, check_in_vocab, loss_target_mask
from kernels.vocab_chunks import acc_dtype, kept_rows, rows_per_chunk, vocab_chunk_pass

__all__ = ["linear_cross_entropy", "linear_cross_entropy_torch", "chunk_pass_torch",
           "ce_row_loss_torch"]

# Logits alive at once on the PyTorch path: 2**24 elements (64 MiB fp32) per chunk keeps peak
# memory a small multiple of W while the matmuls stay large enough to be efficient.
CHUNK_ELEMENTS = 1 << 24
REDUCTIONS = ("mean", "sum", "none")


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
    return (h.new_empty(shape, dtype=acc_dtype(h.dtype)),
            *_fake_grads(h, w, want_dh and grads, want_dw and grads))


@compile_opaque("linear_cross_entropy", _loss_fake)
def _loss_and_grads(h: Tensor, w: Tensor, labels: Tensor, ignore_ids: Optional[Tensor],
                    ignore_index: int, z_loss: float, smoothing: float, reduction: str,
                    want_dh: bool, want_dw: bool, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, dh, dW): the reduced loss and its gradients (empty when not wanted), or for
    ``reduction="none"`` the per-row losses and no gradients (they need the incoming weights).
    Finding the kept rows syncs with the host, hence one opaque op for the whole pass."""
    rows = _label_rows(labels, ignore_index, ignore_ids, w.shape[0])
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
    rows = _label_rows(labels, ignore_index, ignore_ids, w.shape[0])
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


def _label_rows(labels, ignore_index, ignore_ids, vocab):
    """The kept rows (``vocab_chunks.kept_rows``) of labels [N]; a kept label outside
    [0, vocab) is an error (``check_in_vocab``)."""
    keep = loss_target_mask(labels, ignore_index, ignore_ids)
    check_in_vocab("linear_cross_entropy", "label", labels, keep, vocab,
                   f"neither ignore_index={ignore_index} nor in ignore_ids")
    return kept_rows(keep)  # the queue is drained already: this sync is cheap


def ce_row_loss_torch(logits, y, row_weight, want_grad, *, z_loss=0.0, smoothing=0.0,
                      scale=1.0):
    """Row loss (``vocab_chunk_pass``) of cross-entropy with z-loss and label smoothing:
    loss [n] of logits [n, V] (accumulation dtype) against y [n] and, when ``want_grad``, the
    logits overwritten with ``row_weight_i * scale * d loss_i / d logits`` (``row_weight``
    [n] or None). Also future_summary's MTP rows (no z-loss, no smoothing)."""
    vocab = logits.shape[1]
    lse = torch.logsumexp(logits, dim=-1)  # (n,)
    loss = lse - logits.gather(1, y[:, None]).squeeze(1)
    if smoothing > 0.0:
        # PyTorch's definition: (1 - e) * nll + e * mean over classes of -log p
        loss = (1.0 - smoothing) * loss + smoothing * (lse - logits.mean(dim=-1))
    if z_loss > 0.0:
        loss = loss + z_loss * lse * lse
    if not want_grad:
        return loss, None
    # d loss / d logits = p * (1 + 2 z lse) - (1 - e) onehot - e / V, built in place
    grad = logits.sub_(lse[:, None]).exp_()
    if z_loss > 0.0:
        grad.mul_((1.0 + 2.0 * z_loss * lse)[:, None])
    grad.scatter_add_(1, y[:, None], torch.full_like(lse, smoothing - 1.0)[:, None])
    if smoothing > 0.0:
        grad.sub_(smoothing / vocab)
    if row_weight is not None:
        grad.mul_(row_weight[:, None].to(grad.dtype))
    if scale != 1.0:
        grad.mul_(scale)
    return loss, grad


def chunk_pass_torch(h, w, y, rows, z_loss, smoothing, scale, row_weight, want_dh, want_dw):
    """Per-row losses [N] (0 at rows not in ``rows``) and, if asked, dh [N, d] and dW [V, d]
    (fp32, fp64 for fp64 inputs) for the rows ``rows`` of h [N, d] (all rows when None) with
    targets y [N]; gradients are of ``sum_i row_weight_i * scale * loss_i`` (``row_weight``
    [N] or None). Matmuls run in h's dtype (w is cast if it differs)."""
    n = h.shape[0] if rows is None else rows.numel()
    row_loss = partial(ce_row_loss_torch, z_loss=z_loss, smoothing=smoothing, scale=scale)
    return vocab_chunk_pass(h, w, row_loss, (y, row_weight), rows,
                            step=rows_per_chunk(n, CHUNK_ELEMENTS, w.shape[0]),
                            want_dh=want_dh, want_dw=want_dw, logits_dtype=acc_dtype(h.dtype))


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
