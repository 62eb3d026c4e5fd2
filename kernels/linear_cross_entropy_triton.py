"""Triton linear cross-entropy: a fused softmax/loss/gradient row kernel around chunked matmuls.

Imported by ``kernels/linear_cross_entropy.py`` on the first Triton call; the autograd.Function
there calls ``chunk_pass_triton``. The surviving
(non-ignored) rows are walked in chunks; per chunk the logits come from one matmul, then
``_ce_rows_kernel`` makes two passes over each row: an online max/sum-exp for the
log-sum-exp and loss, then the gradient d loss / d logits written in place over the logits,
which two more matmuls turn into dh and dW. Peak memory is one chunk of logits plus dW.
"""

import torch
import triton
import triton.language as tl

from kernels._triton_utils import check_dtype, next_pow2
from kernels.linear_cross_entropy import chunk_rows, put_rows

# Logits alive at once: at most 2**26 elements (128 MiB bf16) and CHUNK_FACTOR times the
# hidden states' size. Each chunk streams W twice and reads and writes dW once, so chunks of
# fewer than a few hundred rows are bound by that traffic: on an H100 at V=128256, d=4096,
# N=8192, Liger's 1x budget (~250 rows) took 65.6 ms and 2x (~500 rows) 47.0 ms for 6% more
# peak memory (benchmarks/RESULTS.md). MIN_CHUNK_ROWS keeps small batches off that cliff.
CHUNK_ELEMENTS = 1 << 26
CHUNK_FACTOR = 2
MIN_CHUNK_ROWS = 256
MAX_BLOCK_V = 4096
ROW_WARPS = 8


@triton.jit
def _ce_rows_kernel(logits_ptr, labels_ptr, loss_ptr, weight_ptr, stride_row, V,
                    z_loss, smoothing, scale,
                    HAS_WEIGHT: tl.constexpr, COMPUTE_GRAD: tl.constexpr,
                    BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride_row
    label = tl.load(labels_ptr + row)
    cols = tl.arange(0, BLOCK_V)
    # pass 1: running max m and sum of exp(x - m) over the vocabulary, plus sum(x) for smoothing
    m = tl.full((BLOCK_V,), float("-inf"), dtype=tl.float32)
    s = tl.zeros((BLOCK_V,), dtype=tl.float32)
    total = tl.zeros((BLOCK_V,), dtype=tl.float32)
    for start in range(0, V, BLOCK_V):
        mask = start + cols < V
        x = tl.load(base + start + cols, mask=mask, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, x)
        # lanes past V stay at -inf: shift them by 0 so exp gives 0 instead of exp(nan)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - m_safe) + tl.exp(x - m_safe)
        m = m_new
        total += tl.where(mask, x, 0.0)
    m_row = tl.max(m, axis=0)
    s_row = tl.sum(s * tl.exp(m - m_row), axis=0)
    lse = m_row + tl.log(s_row)
    target = tl.load(base + label).to(tl.float32)
    loss = lse - target
    if smoothing > 0.0:
        loss = (1.0 - smoothing) * loss + smoothing * (lse - tl.sum(total, axis=0) / V)
    loss += z_loss * lse * lse
    tl.store(loss_ptr + row, loss)
    if COMPUTE_GRAD:
        # pass 2: d loss / d x = p * (1 + 2 z lse) - (1 - e) [col == label] - e / V
        g_scale = scale
        if HAS_WEIGHT:
            g_scale = g_scale * tl.load(weight_ptr + row).to(tl.float32)
        p_scale = 1.0 + 2.0 * z_loss * lse
        for start in range(0, V, BLOCK_V):
            idx = start + cols
            mask = idx < V
            x = tl.load(base + idx, mask=mask, other=0.0).to(tl.float32)
            grad = tl.exp(x - lse) * p_scale - smoothing / V
            grad = tl.where(idx == label, grad - (1.0 - smoothing), grad)
            tl.store(base + idx, (grad * g_scale).to(logits_ptr.dtype.element_ty), mask=mask)


def _rows_pass(logits, labels, z_loss, smoothing, scale, row_weight, compute_grad):
    """Run the row kernel over a [n, V] logits chunk (in place when computing the gradient);
    returns the fp32 loss [n]."""
    n, vocab = logits.shape
    loss = torch.empty(n, dtype=torch.float32, device=logits.device)
    if n:
        _ce_rows_kernel[(n,)](
            logits, labels, loss, row_weight if row_weight is not None else loss,
            logits.stride(0), vocab, z_loss, smoothing, scale,
            HAS_WEIGHT=row_weight is not None, COMPUTE_GRAD=compute_grad,
            BLOCK_V=min(MAX_BLOCK_V, next_pow2(vocab)), num_warps=ROW_WARPS,
        )
    return loss


def _accumulate_dw(dw, grad, hc):
    """dw += grad.T @ hc, with dw in fp32 (or the half dtype of a half weight)."""
    if dw.dtype == grad.dtype:
        dw.addmm_(grad.t(), hc)
        return
    if dw.is_cuda and _OUT_DTYPE_MM["ok"]:
        try:
            # cuBLAS accumulates the half product straight into fp32: no [V, d] temporaries
            torch.addmm(dw, grad.t(), hc, out_dtype=dw.dtype, out=dw)
            return
        except (TypeError, RuntimeError):
            _OUT_DTYPE_MM["ok"] = False  # older torch: fall back below from now on
    dw += (grad.t() @ hc).to(dw.dtype)


_OUT_DTYPE_MM = {"ok": True}


def chunk_pass_triton(h, w, y, rows, z_loss, smoothing, scale, row_weight, want_dh, want_dw):
    """Triton version of ``chunk_pass_torch``: per-row losses [N] fp32 (0 at rows not in
    ``rows``) and, if asked, dh [N, d] (h's dtype) and dW [V, d] for the rows ``rows`` of h
    (all when None); gradients are of ``sum_i row_weight_i * scale * loss_i`` (``row_weight``
    [N] or None).

    The matmuls run in h's dtype (an fp32 weight is cast once, as autocast would). dW
    accumulates in fp32 unless h and w are both half precision; then it accumulates in that
    dtype, like Liger-Kernel, so its memory stays one weight's worth.
    """
    h, y = h.contiguous(), y.contiguous()
    if row_weight is not None:
        row_weight = row_weight.float().contiguous()
    wc = w if w.dtype == h.dtype else w.to(h.dtype)
    vocab = w.shape[0]
    n = h.shape[0] if rows is None else rows.numel()
    losses = torch.zeros(h.shape[0], dtype=torch.float32, device=h.device)
    dh = torch.zeros_like(h) if want_dh else None
    dw = None
    if want_dw:
        both_half = h.dtype != torch.float32 and w.dtype != torch.float32
        dw = torch.zeros(w.shape, dtype=w.dtype if both_half else torch.float32,
                         device=w.device)
    step = chunk_size(n, h.shape[1], vocab)
    grad = want_dh or want_dw
    buffer = torch.empty((min(step, n), vocab), dtype=h.dtype, device=h.device) if n else None
    for start in range(0, n, step):
        stop = min(start + step, n)
        hc, yc, idx = chunk_rows(h, y, rows, start, stop)
        logits = buffer[: stop - start]
        torch.matmul(hc, wc.t(), out=logits)  # (n_c, V); becomes the gradient in place
        rw = None
        if row_weight is not None:
            rw = row_weight[start:stop] if idx is None else row_weight.index_select(0, idx)
        put_rows(losses, idx, start, stop,
                 _rows_pass(logits, yc, z_loss, smoothing, scale, rw, grad))
        if want_dw:
            _accumulate_dw(dw, logits, hc)
        if want_dh:
            if idx is None:
                torch.matmul(logits, wc, out=dh[start:stop])
            else:
                # the gathered rows are spent once dW has them: their buffer takes dh's rows
                dh.index_copy_(0, idx, torch.matmul(logits, wc, out=hc))
    return losses, dh, dw


def chunk_size(n, width, vocab):
    """Rows per chunk: the logits chunk holds at most CHUNK_ELEMENTS and no more than
    CHUNK_FACTOR times the rows' hidden states (n x width), Liger-Kernel's bound, so the
    transient memory scales with the batch; at least MIN_CHUNK_ROWS rows keep the matmuls
    large."""
    budget = min(CHUNK_ELEMENTS, CHUNK_FACTOR * max(n, 1) * width)
    return max(MIN_CHUNK_ROWS, budget // max(vocab, 1), 1)


def check_inputs(h, w):
    """The Triton path takes fp32/fp16/bf16 tensors (h and w may differ, e.g. bf16 and fp32)."""
    check_dtype("linear_cross_entropy", h, w)
