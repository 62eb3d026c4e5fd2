"""The chunked-vocabulary driver: a per-row loss over ``h @ w.T`` without an [N, V] logits tensor.

Every loss over the vocabulary (linear cross-entropy, the future-summary heads, distillation)
has the same skeleton, owned here: keep only the rows that take a loss, walk them in chunks of
rows sized from a logits budget, and per chunk run one matmul for the logits, a row loss that
turns them into per-row losses and, in place, d loss / d logits, then two matmuls that add the
chunk's share of dh and dW. What differs between the losses is only the row loss, which the
caller passes in (``vocab_chunk_pass``); its backend (PyTorch ops or a fused Triton row kernel)
is the caller's choice too, so this module imports only torch. A frozen second head over the
same rows (a distillation teacher's hidden states and output weight) is chunked the same way:
its logits chunk is one more matmul per chunk, handed to the row loss beside the student's,
and takes no gradient.

Used by ``kernels/linear_cross_entropy*.py``, ``kernels/future_summary*.py`` and
``kernels/linear_distill*.py``.
"""

import torch
from torch import Tensor

__all__ = [
    "acc_dtype",
    "kept_rows",
    "put_rows",
    "rows_per_chunk",
    "take_rows",
    "vocab_chunk_pass",
    "weight_grad_into",
]


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of losses and gradients: fp32 for half inputs, the input's own dtype
    for fp32/fp64 (so the float64 references stay float64)."""
    return torch.promote_types(dtype, torch.float32)


def rows_per_chunk(n: int, budget: int, per_row: int, min_rows: int = 1,
                   multiple: int = 1) -> int:
    """Rows per chunk when each row holds ``per_row`` transient elements and a chunk may hold
    ``budget``; at least ``min_rows`` (small matmuls waste the GPU). Rounded down to whole
    ``multiple``-row matmul tiles where that adds no chunk over n rows: every chunk but the
    last then fills its tiles, for less memory, not more."""
    rows = max(min_rows, budget // max(per_row, 1), 1)
    aligned = rows // multiple * multiple
    if aligned and -(-n // aligned) == -(-n // rows):
        return aligned
    return rows


def kept_rows(keep: Tensor) -> Tensor | None:
    """Long [n] indices of the rows where ``keep`` [N] is True, or None when every row is:
    None lets the chunks be plain slices of h instead of gathers. Syncs with the host (the
    number of rows sets the loop), once per call."""
    rows = keep.nonzero().squeeze(1)
    return None if rows.numel() == keep.numel() else rows


def take_rows(t: Tensor, idx: Tensor | None, start: int, stop: int) -> Tensor:
    """Rows start:stop of the kept rows of ``t`` (a slice without compaction, else a gather)."""
    return t[start:stop] if idx is None else t.index_select(0, idx)


def put_rows(out: Tensor, idx: Tensor | None, start: int, stop: int, values: Tensor) -> None:
    """Write a chunk's per-row ``values`` at its rows of ``out`` (untouched elsewhere)."""
    if idx is None:
        out[start:stop] = values
    else:
        out.index_copy_(0, idx, values.to(out.dtype))


def weight_grad_into(dw: Tensor, grad: Tensor, hc: Tensor, accumulate: bool) -> None:
    """dw (+)= grad.T @ hc, with dw in fp32 (or the half dtype of a half weight)."""
    if dw.dtype == grad.dtype:
        if accumulate:
            dw.addmm_(grad.t(), hc)  # no [V, d] temporary per chunk
        else:
            torch.matmul(grad.t(), hc, out=dw)
        return
    if dw.is_cuda and _OUT_DTYPE_MM["ok"]:
        try:
            # cuBLAS writes the half product straight into fp32: no [V, d] temporaries
            if accumulate:
                torch.addmm(dw, grad.t(), hc, out_dtype=dw.dtype, out=dw)
            else:
                torch.mm(grad.t(), hc, out_dtype=dw.dtype, out=dw)
            return
        except (TypeError, RuntimeError):
            _OUT_DTYPE_MM["ok"] = False  # older torch: fall back below from now on
    product = (grad.t() @ hc).to(dw.dtype)
    if accumulate:
        dw += product
    else:
        dw.copy_(product)


_OUT_DTYPE_MM = {"ok": True}


def vocab_chunk_pass(h: Tensor, w: Tensor, row_loss, row_data=(), rows: Tensor | None = None,
                     *, step: int, want_dh: bool, want_dw: bool,
                     logits_dtype: torch.dtype | None = None, dw: Tensor | None = None,
                     dw_dtype: torch.dtype | None = None,
                     teacher: tuple[Tensor, Tensor] | None = None,
                     loss_columns: int | None = None):
    """Per-row losses of ``row_loss(h @ w.T)`` and, if asked, their gradients dh and dW.

    Args:
        h: [N, d] hidden states; w: [V, d] weight (cast to h's dtype: the matmuls run in it).
        row_loss: ``row_loss(logits, *chunk_data, want_grad) -> (loss, d_logits)`` for one
            chunk: ``logits`` [n_c, V], ``chunk_data`` the chunk's rows of each ``row_data``
            tensor, ``loss`` [n_c] and, when ``want_grad``, ``d_logits`` [n_c, V] the gradient
            of ``sum(loss_i * weight_i)`` w.r.t. the logits, with any per-row weights and
            scales the caller wants (None otherwise). Writing it over ``logits`` and returning
            that tensor costs no second [n_c, V] buffer; the driver does not keep ``logits``.
        row_data: per-row tensors aligned with h's rows ([N, ...]: targets, weights, a
            teacher's top-k ids and log-probs, ...), sliced or gathered like h per chunk;
            None entries pass through as None.
        rows: long [n] indices of the rows that take a loss (``kept_rows``), or None for all.
            Other rows cost no FLOPs, lose 0 and get a zero dh.
        step: rows per chunk (``rows_per_chunk``).
        want_dh, want_dw: which gradients to compute; neither skips the backward work.
        logits_dtype: dtype ``row_loss`` sees the logits in (default h's: a Triton row kernel
            reads them there; the PyTorch row losses ask for the accumulation dtype).
        dw: an accumulator [V, d] to add this call's dW to (several calls sharing one weight);
            default a new one, written outright by the first chunk (no [V, d] memset).
        dw_dtype: dtype of a new dW (default ``acc_dtype(h.dtype)``).
        teacher: (h_t [N, d_t], w_t [V, d_t]), a frozen second head over the same rows and
            vocabulary, or None. Its chunk logits ``h_t @ w_t.T`` [n_c, V] (in h_t's dtype,
            then ``logits_dtype``) come to the row loss right after the student's:
            ``row_loss(logits, teacher_logits, *chunk_data, want_grad)``; the row loss may
            overwrite them. No gradient is taken for them. Chunks should be sized for two
            [n_c, V] buffers (``per_row`` = 2V in ``rows_per_chunk``).
        loss_columns: None for one loss per row; m when ``row_loss`` returns [n_c, m] per-row
            terms (e.g. a hard and a soft loss kept apart for logging).

    Returns:
        (losses [N] (or [N, loss_columns]) in ``acc_dtype(h.dtype)``, 0 at rows not kept;
        dh [N, d] in h's dtype or None; dW [V, d] or None).
    """
    wc = w if w.dtype == h.dtype else w.to(h.dtype)  # matmuls in h's dtype, as autocast would
    vocab = w.shape[0]
    n = h.shape[0] if rows is None else rows.numel()
    want_grad = want_dh or want_dw
    shape = (h.shape[0],) if loss_columns is None else (h.shape[0], loss_columns)
    losses = torch.zeros(shape, dtype=acc_dtype(h.dtype), device=h.device)
    dh = torch.zeros_like(h) if want_dh else None
    accumulate = dw is not None
    if want_dw and dw is None:
        dw = (torch.empty if n else torch.zeros)(w.shape, dtype=dw_dtype or acc_dtype(h.dtype),
                                                 device=w.device)
    # one logits buffer for every chunk: the matmul writes into it, the row loss overwrites it
    buffer = torch.empty((min(step, n), vocab), dtype=h.dtype, device=h.device) if n else None
    if teacher is not None:
        th, tw = teacher
        twc = tw if tw.dtype == th.dtype else tw.to(th.dtype)
        t_buffer = torch.empty((min(step, n), vocab), dtype=th.dtype, device=th.device) if n else None
    for start in range(0, n, step):
        stop = min(start + step, n)
        idx = None if rows is None else rows[start:stop]  # into h's rows
        hc = take_rows(h, idx, start, stop)
        logits = torch.matmul(hc, wc.t(), out=buffer[: stop - start])  # (n_c, V)
        if logits_dtype is not None and logits_dtype != logits.dtype:
            logits = logits.to(logits_dtype)
        data = [None if t is None else take_rows(t, idx, start, stop) for t in row_data]
        if teacher is not None:
            with torch.no_grad():
                t_logits = torch.matmul(take_rows(th, idx, start, stop), twc.t(),
                                        out=t_buffer[: stop - start])
            if logits_dtype is not None and logits_dtype != t_logits.dtype:
                t_logits = t_logits.to(logits_dtype)
            data.insert(0, t_logits)
            del t_logits
        loss, grad = row_loss(logits, *data, want_grad)
        put_rows(losses, idx, start, stop, loss)
        del logits, data
        if not want_grad:
            continue
        grad = grad if grad.dtype == h.dtype else grad.to(h.dtype)
        if want_dw:
            weight_grad_into(dw, grad, hc, accumulate=accumulate or start > 0)
        if want_dh:
            if idx is None:
                torch.matmul(grad, wc, out=dh[start:stop])
            else:
                # the gathered rows are spent once dW has them: their buffer takes dh's rows
                dh.index_copy_(0, idx, torch.matmul(grad, wc, out=hc))
        del hc, grad  # before the next chunk's gather, or two chunks are alive at once
    return losses, dh, dw
