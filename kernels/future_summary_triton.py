"""Triton row loss of the future-summary FSP head: multi-hot BCE rows.

Imported by ``kernels/future_summary.py`` on the first Triton call; the shared driver
(``kernels.vocab_chunks.vocab_chunk_pass``) calls ``bce_row_loss_triton`` on each chunk of logits. ``_bce_rows_kernel`` walks
one row in vocabulary blocks, ONE pass: softplus sum and bag term for the loss, and the gradient
``w * (sigmoid(z) - a) / norm`` written over the logits. Bag membership ``a`` is an
in-register comparison of the block's column ids with the row's padded bag ids, so no multi-hot
target exists anywhere. The MTP heads' CE rows are ``linear_cross_entropy``'s fused softmax
row kernel (``ce_row_loss_triton``).
"""

import torch
import triton
import triton.language as tl

from kernels._triton_utils import check_dtype, next_pow2

MAX_BLOCK_V = 1024
# columns x bag slots compared per block: bounds the membership matrix held in registers
MEMBERSHIP_ELEMENTS = 8192


@triton.jit
def _bce_rows_kernel(logits_ptr, bag_ptr, weight_ptr, loss_ptr, stride_row, stride_bag, V, M,
                     inv_norm, g_scale,
                     HAS_WEIGHT: tl.constexpr, COMPUTE_GRAD: tl.constexpr,
                     BLOCK_V: tl.constexpr, BLOCK_M: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride_row
    slots = tl.arange(0, BLOCK_M)
    bag = tl.load(bag_ptr + row * stride_bag + slots, mask=slots < M, other=-1)
    cols = tl.arange(0, BLOCK_V)
    acc = tl.zeros((BLOCK_V,), dtype=tl.float32)
    for start in range(0, V, BLOCK_V):
        idx = start + cols
        mask = idx < V
        z = tl.load(base + idx, mask=mask, other=0.0).to(tl.float32)
        # a_i counted per bag slot: padding (-1) never matches a column id
        hits = tl.sum((idx[:, None] == bag[None, :]).to(tl.float32), axis=1)
        e = tl.exp(-tl.abs(z))
        softplus = tl.maximum(z, 0.0) + tl.log(1.0 + e)  # stable softplus, no libdevice
        term = softplus - hits * z
        if HAS_WEIGHT:
            wv = tl.load(weight_ptr + idx, mask=mask, other=0.0).to(tl.float32)
            term = term * wv
        acc += tl.where(mask, term, 0.0)
        if COMPUTE_GRAD:
            sig = tl.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
            grad = sig - hits
            if HAS_WEIGHT:
                grad = grad * wv
            tl.store(base + idx, (grad * (inv_norm * g_scale)).to(logits_ptr.dtype.element_ty), mask=mask)
    tl.store(loss_ptr + row, tl.sum(acc, axis=0) * inv_norm)


def bce_row_loss_triton(logits, bag, want_grad, *, token_weight, inv_norm, scale):
    """Row loss (``vocab_chunk_pass``): normalised multi-hot BCE [n] (fp32) of a logits chunk
    [n, V] against bags [n, M] (-1 padding) and, with ``want_grad``, the chunk itself,
    overwritten with ``scale * d loss / d logits``."""
    n, vocab = logits.shape
    loss = torch.empty(n, dtype=torch.float32, device=logits.device)
    if n == 0:
        return loss, logits if want_grad else None
    bag = bag.contiguous()
    width = bag.shape[1]
    block_m = next_pow2(max(width, 1))
    block_v = max(16, min(MAX_BLOCK_V, next_pow2(vocab), MEMBERSHIP_ELEMENTS // block_m))
    weight = token_weight.float().contiguous() if token_weight is not None else loss
    _bce_rows_kernel[(n,)](
        logits, bag, weight, loss, logits.stride(0), max(bag.stride(0), 1), vocab, width,
        float(inv_norm), float(scale),
        HAS_WEIGHT=token_weight is not None, COMPUTE_GRAD=want_grad,
        BLOCK_V=block_v, BLOCK_M=block_m,
    )
    return loss, logits if want_grad else None


def check_inputs(w, *hs):
    """The Triton path takes fp32/fp16/bf16 weights and hidden states."""
    check_dtype("future_summary_loss", w, *hs)
