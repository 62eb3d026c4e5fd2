"""Triton linear cross-entropy: a fused softmax/loss/gradient row kernel around chunked matmuls.

Imported by ``kernels/linear_cross_entropy.py`` on the first Triton call; the autograd.Function
there calls ``chunk_pass_triton``, which takes one of two paths:

- row chunks (the usual one): the shared driver ``kernels.vocab_chunks.vocab_chunk_pass`` walks
  the surviving (non-ignored) rows in chunks; per chunk the logits come from one matmul, then
  ``ce_row_loss_triton`` runs ``_ce_rows_kernel``, two passes over each row (an online
  max/sum-exp for the log-sum-exp and loss, then the gradient d loss / d logits written in
  place over the logits), which two more matmuls turn into dh and dW. ``future_summary``'s MTP
  rows use the same row loss;
- vocabulary blocks (``vocab_block_size``), where the memory budget would make row chunks
  small: all rows against blocks of the vocabulary, ``_lse_block_kernel`` folding each block
  into per-row statistics, then ``_grad_block_kernel`` turning each recomputed block into its
  gradient, which writes that block's dW rows once and adds to dh.

Peak memory is the logits budget plus dh and dW.
"""

from functools import partial

import torch
import triton
import triton.language as tl

from kernels._triton_utils import check_dtype, next_pow2
from kernels.vocab_chunks import rows_per_chunk, vocab_chunk_pass, weight_grad_into

# Logits alive at once: at most 2**26 elements (128 MiB bf16) and CHUNK_FACTOR times the
# hidden states' size (1 is Liger-Kernel's budget). Each row chunk streams W twice and reads
# and writes dW once, so chunks of fewer than a few hundred rows are bound by that traffic: on
# an H100 at V=128256, d=4096, N=8192, row chunks at 1x (~250 rows) took 65 ms and at 2x
# (~500 rows) 46-49 ms for 5% more peak memory; the vocabulary-blocked pass at 1x took 58 ms
# (benchmarks/RESULTS.md). 2 is the default: the fastest in every measured case.
CHUNK_ELEMENTS = 1 << 26
CHUNK_FACTOR = 2
MIN_CHUNK_ROWS = 256
ROW_MULTIPLE = 128  # row chunks are whole multiples of this where that costs no extra chunk
ROW_PATH_MIN_ROWS = 512  # fewer rows per chunk at the budget: the vocabulary-blocked pass
VOCAB_PATH_MAX_IGNORED = 0.125
VOCAB_BLOCK_MULTIPLE = 128  # vocabulary blocks are whole multiples of this (matmul tiles)
ROW_STATS_ELEMENTS = 64  # logits-sized elements per row that the vocab pass's row vectors take
# Narrower blocks make the per-block matmuls and row programs too small: the 150m preset
# (d=768) at 1x got blocks of 640 and its training step ran 1.23x slower than at 2x (rows).
VOCAB_BLOCK_MIN = 2048
MAX_BLOCK_V = 4096
ROW_WARPS = 8


@triton.jit
def _row_stats(base, VB, BLOCK_V: tl.constexpr):
    """Over x = base[0:VB]: (max, sum of exp(x - max), sum of x), one online pass."""
    cols = tl.arange(0, BLOCK_V)
    m = tl.full((BLOCK_V,), float("-inf"), dtype=tl.float32)
    s = tl.zeros((BLOCK_V,), dtype=tl.float32)
    total = tl.zeros((BLOCK_V,), dtype=tl.float32)
    for start in range(0, VB, BLOCK_V):
        mask = start + cols < VB
        x = tl.load(base + start + cols, mask=mask, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, x)
        # lanes past VB stay at -inf: shift them by 0 so exp gives 0 instead of exp(nan)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - m_safe) + tl.exp(x - m_safe)
        m = m_new
        total += tl.where(mask, x, 0.0)
    m_row = tl.max(m, axis=0)
    return m_row, tl.sum(s * tl.exp(m - m_row), axis=0), tl.sum(total, axis=0)


@triton.jit
def _write_grad(base, label, lse, g_scale, v0, VB, V, z_loss, smoothing,
                BLOCK_V: tl.constexpr):
    """Overwrite x = base[0:VB] (vocabulary ids v0..v0+VB) with g_scale * d loss / d x, where
    d loss / d x = p * (1 + 2 z lse) - (1 - e) [id == label] - e / V."""
    cols = tl.arange(0, BLOCK_V)
    p_scale = 1.0 + 2.0 * z_loss * lse
    for start in range(0, VB, BLOCK_V):
        idx = start + cols
        mask = idx < VB
        x = tl.load(base + idx, mask=mask, other=0.0).to(tl.float32)
        grad = tl.exp(x - lse) * p_scale - smoothing / V
        grad = tl.where(idx + v0 == label, grad - (1.0 - smoothing), grad)
        tl.store(base + idx, (grad * g_scale).to(base.dtype.element_ty), mask=mask)


@triton.jit
def _ce_rows_kernel(logits_ptr, labels_ptr, loss_ptr, weight_ptr, stride_row, V,
                    z_loss, smoothing, scale,
                    HAS_WEIGHT: tl.constexpr, COMPUTE_GRAD: tl.constexpr,
                    BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride_row
    label = tl.load(labels_ptr + row)
    m_row, s_row, total = _row_stats(base, V, BLOCK_V)
    lse = m_row + tl.log(s_row)
    target = tl.load(base + label).to(tl.float32)
    loss = lse - target
    if smoothing > 0.0:
        loss = (1.0 - smoothing) * loss + smoothing * (lse - total / V)
    loss += z_loss * lse * lse
    tl.store(loss_ptr + row, loss)
    if COMPUTE_GRAD:
        g_scale = scale
        if HAS_WEIGHT:
            g_scale = g_scale * tl.load(weight_ptr + row).to(tl.float32)
        _write_grad(base, label, lse, g_scale, 0, V, V, z_loss, smoothing, BLOCK_V)


@triton.jit
def _lse_block_kernel(logits_ptr, labels_ptr, m_ptr, s_ptr, target_ptr, total_ptr, stride_row,
                      v0, VB, BLOCK_V: tl.constexpr):
    """Fold one vocabulary block [v0, v0 + VB) of a row's logits into its running max m,
    sum-exp s (relative to m) and sum; pick up the target logit if the label is in the block."""
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride_row
    m_blk, s_blk, total = _row_stats(base, VB, BLOCK_V)
    m_old = tl.load(m_ptr + row)
    m_new = tl.maximum(m_old, m_blk)
    s_new = tl.load(s_ptr + row) * tl.exp(m_old - m_new) + s_blk * tl.exp(m_blk - m_new)
    tl.store(m_ptr + row, m_new)
    tl.store(s_ptr + row, s_new)
    tl.store(total_ptr + row, tl.load(total_ptr + row) + total)
    label = tl.load(labels_ptr + row)
    here = (label >= v0) & (label < v0 + VB)
    target = tl.load(base + (label - v0), mask=here, other=0.0).to(tl.float32)
    tl.store(target_ptr + row, target, mask=here)


@triton.jit
def _grad_block_kernel(logits_ptr, labels_ptr, lse_ptr, g_ptr, stride_row, v0, VB, V,
                       z_loss, smoothing, BLOCK_V: tl.constexpr):
    """One vocabulary block of a row's logits, in place, becomes g * d loss / d logits."""
    row = tl.program_id(0).to(tl.int64)
    _write_grad(logits_ptr + row * stride_row, tl.load(labels_ptr + row),
                tl.load(lse_ptr + row), tl.load(g_ptr + row), v0, VB, V, z_loss, smoothing,
                BLOCK_V)


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


def ce_row_loss_triton(logits, y, row_weight, want_grad, *, z_loss=0.0, smoothing=0.0,
                       scale=1.0):
    """Row loss (``vocab_chunk_pass``) of ``_ce_rows_kernel``: fp32 loss [n] of a logits chunk
    [n, V] against y [n] and, when ``want_grad``, the chunk itself, overwritten with
    ``row_weight_i * scale * d loss_i / d logits`` (``row_weight`` [n] or None)."""
    if row_weight is not None:
        row_weight = row_weight.float().contiguous()
    loss = _rows_pass(logits, y.contiguous(), z_loss, smoothing, scale, row_weight, want_grad)
    return loss, logits if want_grad else None


def vocab_block_size(n_rows, n_kept, width, vocab):
    """Vocabulary block of the vocabulary-blocked pass, or 0 for row chunks.

    Row chunks stream W twice and dW twice per chunk, so when the memory budget allows only
    chunks of fewer than ROW_PATH_MIN_ROWS rows that traffic sets the time. Then all rows are
    taken at once against vocabulary blocks of the same budget: every dW row is written once
    and the matmuls are large, for one extra logits matmul (4 instead of 3). Ignored rows are
    not compacted on that path (they get zero gradient), so it is used only when at most
    VOCAB_PATH_MAX_IGNORED of the rows are ignored."""
    budget = logits_budget(n_rows, width)
    if budget // max(vocab, 1) >= ROW_PATH_MIN_ROWS or n_rows == 0:
        return 0
    if n_kept < (1.0 - VOCAB_PATH_MAX_IGNORED) * n_rows:
        return 0
    # the per-row statistics (max, sum-exp, target, lse, ...) come out of the same budget
    block = (budget // n_rows - ROW_STATS_ELEMENTS) // VOCAB_BLOCK_MULTIPLE * VOCAB_BLOCK_MULTIPLE
    return min(block, vocab) if block >= min(VOCAB_BLOCK_MIN, vocab) else 0


def _vocab_block_pass(h, wc, y, rows, z_loss, smoothing, scale, row_weight, want_dh, want_dw,
                      dw_dtype, block_v):
    """All N rows against vocabulary blocks of ``block_v``: pass 1 folds each block's logits
    into per-row log-sum-exp statistics, pass 2 recomputes them, turns them into the gradient
    in place and writes dW's rows of the block once and adds the block's share of dh."""
    n, vocab = h.shape[0], wc.shape[0]
    dev = h.device
    kept = torch.ones(n, dtype=torch.bool, device=dev)
    if rows is not None:
        kept = torch.zeros(n, dtype=torch.bool, device=dev).index_fill_(0, rows, True)
    labels = torch.where(kept, y, torch.full_like(y, -1)).contiguous()  # -1: in no block
    m = torch.full((n,), float("-inf"), dtype=torch.float32, device=dev)
    sumexp = torch.zeros(n, dtype=torch.float32, device=dev)
    target = torch.zeros(n, dtype=torch.float32, device=dev)
    total = torch.zeros(n, dtype=torch.float32, device=dev)
    buffer = torch.empty(n * block_v, dtype=h.dtype, device=dev)
    blocks = [(v0, min(block_v, vocab - v0)) for v0 in range(0, vocab, block_v)]
    row_block = min(MAX_BLOCK_V, next_pow2(block_v))

    def logits_of(v0, vb):
        logits = buffer[: n * vb].view(n, vb)
        torch.matmul(h, wc[v0:v0 + vb].t(), out=logits)
        return logits

    for v0, vb in blocks:
        logits = logits_of(v0, vb)
        _lse_block_kernel[(n,)](logits, labels, m, sumexp, target, total, logits.stride(0), v0,
                                vb, BLOCK_V=row_block, num_warps=ROW_WARPS)
    lse = m + torch.log(sumexp)
    losses = lse - target
    if smoothing > 0.0:
        losses = (1.0 - smoothing) * losses + smoothing * (lse - total / vocab)
    losses = torch.where(kept, losses + z_loss * lse * lse, torch.zeros_like(losses))
    if not (want_dh or want_dw):
        return losses, None, None
    g = kept.float() * scale
    if row_weight is not None:
        g = g * row_weight
    dh = torch.empty_like(h) if want_dh else None
    dw = torch.empty((vocab, h.shape[1]), dtype=dw_dtype, device=dev) if want_dw else None
    for i, (v0, vb) in enumerate(blocks):
        logits = logits_of(v0, vb)
        _grad_block_kernel[(n,)](logits, labels, lse, g, logits.stride(0), v0, vb, vocab,
                                 z_loss, smoothing, BLOCK_V=row_block, num_warps=ROW_WARPS)
        if want_dw:
            weight_grad_into(dw[v0:v0 + vb], logits, h, accumulate=False)
        if want_dh:
            if i == 0:
                torch.matmul(logits, wc[v0:v0 + vb], out=dh)
            else:
                dh.addmm_(logits, wc[v0:v0 + vb])
    return losses, dh, dw


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
    both_half = h.dtype != torch.float32 and w.dtype != torch.float32
    dw_dtype = w.dtype if both_half else torch.float32
    block_v = vocab_block_size(h.shape[0], n, h.shape[1], vocab) if want_dh or want_dw else 0
    if block_v:
        return _vocab_block_pass(h, wc, y, rows, z_loss, smoothing, scale, row_weight, want_dh,
                                 want_dw, dw_dtype, block_v)
    row_loss = partial(ce_row_loss_triton, z_loss=z_loss, smoothing=smoothing, scale=scale)
    return vocab_chunk_pass(h, wc, row_loss, (y, row_weight), rows,
                            step=chunk_size(n, h.shape[1], vocab, compacting=rows is not None),
                            want_dh=want_dh, want_dw=want_dw, dw_dtype=dw_dtype)


def chunk_size(n, width, vocab, compacting=False):
    """Rows per chunk: the logits chunk (and, when compacting, the chunk's gathered rows)
    hold at most CHUNK_ELEMENTS and no more than CHUNK_FACTOR times the rows' hidden states
    (n x width), Liger-Kernel's bound, so the transient memory scales with the batch; at
    least MIN_CHUNK_ROWS rows keep the matmuls large. Rounded down to whole ROW_MULTIPLE
    row tiles where that adds no chunk: every chunk but the last then fills its matmul tiles
    (1859 budget rows would leave a part-empty tile in each), for less memory, not more."""
    per_row = vocab + (width if compacting else 0)
    return rows_per_chunk(n, logits_budget(n, width), per_row, MIN_CHUNK_ROWS, ROW_MULTIPLE)


def logits_budget(n, width):
    """Elements of transient logits (and their bookkeeping) one call may hold: at most
    CHUNK_ELEMENTS and CHUNK_FACTOR times the hidden states of n rows."""
    return min(CHUNK_ELEMENTS, CHUNK_FACTOR * max(n, 1) * width)


def check_inputs(h, w):
    """The Triton path takes fp32/fp16/bf16 tensors (h and w may differ, e.g. bf16 and fp32)."""
    check_dtype("linear_cross_entropy", h, w)
