"""Triton linear distillation: fused CE + KD row kernels around the shared chunked matmuls.

Imported by ``kernels/linear_distill.py`` on the first Triton call. ``chunk_pass_triton`` walks
the kept rows through the shared driver (``kernels.vocab_chunks.vocab_chunk_pass``) in row
chunks sized like linear cross-entropy's Triton chunks (a dense teacher's logits chunk counts
against the same budget); per chunk one program per row runs

- ``_kd_sparse_rows_kernel`` (cached teacher: k ids and log-probs per row): one online pass
  for the log-sum-exp of z and of z / T, the loss from them and the gathered logits at the
  label and the k ids, then one pass writing the gradient over the logits, where the teacher
  term ``q`` enters by an in-register comparison of the block's column ids with the row's k
  ids (no [n, V] target, repeated ids counted per slot);
- ``_kd_dense_rows_kernel`` (online teacher, its logits chunk beside the student's): one
  online pass for the three log-sum-exps (z, z / T, z_teacher / T), one for the KL, one
  writing the gradient (forward or reverse KL).

``_entropy_rows_kernel`` is ``teacher_entropy``'s row pass (one online pass: log-sum-exp and
E_p[z / T] together). There is no vocabulary-blocked variant (linear CE's path for tiny row
chunks): each row needs its whole vocabulary at once for the KL. At alpha = 0 the public
function calls ``linear_cross_entropy``, whose own Triton path runs.
"""

import torch
import triton
import triton.language as tl

from kernels._triton_utils import check_dtype, next_pow2
from kernels.vocab_chunks import vocab_chunk_pass

MAX_BLOCK_V = 4096
# columns x teacher ids compared per gradient block: bounds the membership matrix in registers
MEMBERSHIP_ELEMENTS = 8192
ROW_WARPS = 8


@triton.jit
def _fold(m, s, x):
    """One online log-sum-exp step over a block: running (max, sum exp(x - max)) per lane."""
    m_new = tl.maximum(m, x)
    # lanes still at -inf: shift by 0 so exp gives 0 instead of exp(nan)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    return m_new, s * tl.exp(m - m_safe) + tl.exp(x - m_safe)


@triton.jit
def _lse(m, s):
    m_row = tl.max(m, axis=0)
    return m_row + tl.log(tl.sum(s * tl.exp(m - m_row), axis=0))


@triton.jit
def _grad_scales(kdw_ptr, cew_ptr, row, alpha, temperature, z_loss, lse, scale,
                 HAS_KDW: tl.constexpr, HAS_CEW: tl.constexpr):
    """d loss / d logit scales of a row's KD term (its routing weight included), of its CE +
    z-loss term, and the CE coefficient the label's logit loses: both row kernels share them."""
    c_kd = alpha * temperature * scale
    if HAS_KDW:
        c_kd = c_kd * tl.load(kdw_ptr + row).to(tl.float32)
    c_y = (1.0 - alpha) * scale
    if HAS_CEW:
        c_y = tl.load(cew_ptr + row).to(tl.float32) * scale
    return c_kd, c_y * (1.0 + 2.0 * z_loss * lse), c_y


@triton.jit
def _kd_sparse_rows_kernel(logits_ptr, labels_ptr, ids_ptr, logq_ptr, kdw_ptr, cew_ptr, out_ptr,
                           stride_row, stride_k, V, K, alpha, inv_t, temperature, z_loss, scale,
                           HAS_KDW: tl.constexpr, HAS_CEW: tl.constexpr, COMPUTE_GRAD: tl.constexpr,
                           BLOCK_V: tl.constexpr, BLOCK_VG: tl.constexpr,
                           BLOCK_K: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride_row
    cols = tl.arange(0, BLOCK_V)
    m = tl.full((BLOCK_V,), float("-inf"), dtype=tl.float32)
    s = tl.zeros((BLOCK_V,), dtype=tl.float32)
    mt = tl.full((BLOCK_V,), float("-inf"), dtype=tl.float32)
    st = tl.zeros((BLOCK_V,), dtype=tl.float32)
    for start in range(0, V, BLOCK_V):
        x = tl.load(base + start + cols, mask=start + cols < V,
                    other=float("-inf")).to(tl.float32)
        m, s = _fold(m, s, x)
        mt, st = _fold(mt, st, x * inv_t)
    lse = _lse(m, s)
    lse_t = _lse(mt, st)
    label = tl.load(labels_ptr + row)
    ce = lse - tl.load(base + label).to(tl.float32) + z_loss * lse * lse
    slots = tl.arange(0, BLOCK_K)
    logq = tl.load(logq_ptr + row * stride_k + slots, mask=slots < K,
                   other=float("-inf")).to(tl.float32)
    valid = logq > float("-inf")
    # padding slots read column 0 and weigh 0; -1 never matches a column in the gradient
    ids = tl.where(valid, tl.load(ids_ptr + row * stride_k + slots, mask=slots < K, other=0), -1)
    logq = tl.where(valid, logq, 0.0)  # q log q is 0 at padding, never 0 * -inf
    q = tl.where(valid, tl.exp(logq), 0.0)
    z_ids = tl.load(base + tl.where(valid, ids, 0), mask=valid, other=0.0).to(tl.float32)
    kl = tl.sum(q * (logq - (z_ids * inv_t - lse_t)), axis=0)
    tl.store(out_ptr + row * 2, ce)
    tl.store(out_ptr + row * 2 + 1, kl)
    if COMPUTE_GRAD:
        c_kd, c_ce, c_y = _grad_scales(kdw_ptr, cew_ptr, row, alpha, temperature, z_loss, lse, scale,
                                       HAS_KDW, HAS_CEW)
        c_s = c_kd * tl.sum(q, axis=0)  # Q s_T: the q need not sum to 1 (importance weights)
        gcols = tl.arange(0, BLOCK_VG)
        for start in range(0, V, BLOCK_VG):
            idx = start + gcols
            mask = idx < V
            x = tl.load(base + idx, mask=mask, other=0.0).to(tl.float32)
            g = c_ce * tl.exp(x - lse) + c_s * tl.exp(x * inv_t - lse_t)
            g -= c_kd * tl.sum(tl.where(idx[:, None] == ids[None, :], q[None, :], 0.0), axis=1)
            g = tl.where(idx == label, g - c_y, g)
            tl.store(base + idx, g.to(logits_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _kd_dense_rows_kernel(logits_ptr, t_ptr, labels_ptr, kdw_ptr, cew_ptr, out_ptr, stride_row,
                          stride_t, V, alpha, inv_t, temperature, z_loss, scale,
                          HAS_KDW: tl.constexpr, HAS_CEW: tl.constexpr, COMPUTE_GRAD: tl.constexpr,
                          REVERSE: tl.constexpr, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride_row
    tbase = t_ptr + row * stride_t
    cols = tl.arange(0, BLOCK_V)
    m = tl.full((BLOCK_V,), float("-inf"), dtype=tl.float32)
    s = tl.zeros((BLOCK_V,), dtype=tl.float32)
    mt = tl.full((BLOCK_V,), float("-inf"), dtype=tl.float32)
    st = tl.zeros((BLOCK_V,), dtype=tl.float32)
    mq = tl.full((BLOCK_V,), float("-inf"), dtype=tl.float32)
    sq = tl.zeros((BLOCK_V,), dtype=tl.float32)
    for start in range(0, V, BLOCK_V):
        mask = start + cols < V
        x = tl.load(base + start + cols, mask=mask, other=float("-inf")).to(tl.float32)
        u = tl.load(tbase + start + cols, mask=mask, other=float("-inf")).to(tl.float32)
        m, s = _fold(m, s, x)
        mt, st = _fold(mt, st, x * inv_t)
        mq, sq = _fold(mq, sq, u * inv_t)
    lse = _lse(m, s)
    lse_t = _lse(mt, st)
    lse_q = _lse(mq, sq)
    label = tl.load(labels_ptr + row)
    ce = lse - tl.load(base + label).to(tl.float32) + z_loss * lse * lse
    acc = tl.zeros((BLOCK_V,), dtype=tl.float32)
    for start in range(0, V, BLOCK_V):
        mask = start + cols < V
        x = tl.load(base + start + cols, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(tbase + start + cols, mask=mask, other=0.0).to(tl.float32)
        logs = x * inv_t - lse_t
        logq = u * inv_t - lse_q
        if REVERSE:
            term = tl.exp(logs) * (logs - logq)
        else:
            term = tl.exp(logq) * (logq - logs)
        acc += tl.where(mask, term, 0.0)
    kl = tl.sum(acc, axis=0)
    tl.store(out_ptr + row * 2, ce)
    tl.store(out_ptr + row * 2 + 1, kl)
    if COMPUTE_GRAD:
        c_kd, c_ce, c_y = _grad_scales(kdw_ptr, cew_ptr, row, alpha, temperature, z_loss, lse, scale,
                                       HAS_KDW, HAS_CEW)
        for start in range(0, V, BLOCK_V):
            idx = start + cols
            mask = idx < V
            x = tl.load(base + idx, mask=mask, other=0.0).to(tl.float32)
            u = tl.load(tbase + idx, mask=mask, other=0.0).to(tl.float32)
            logs = x * inv_t - lse_t
            logq = u * inv_t - lse_q
            if REVERSE:
                kd = tl.exp(logs) * (logs - logq - kl)
            else:
                kd = tl.exp(logs) - tl.exp(logq)
            g = c_ce * tl.exp(x - lse) + c_kd * kd
            g = tl.where(idx == label, g - c_y, g)
            tl.store(base + idx, g.to(logits_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _entropy_rows_kernel(logits_ptr, out_ptr, stride_row, V, inv_t, BLOCK_V: tl.constexpr):
    """(entropy, lse) of softmax(x / T) per row in one pass: beside the online (max, sum exp)
    it keeps sum exp(u - max) * u, rescaled like the sum, so H = lse - E_p[u]."""
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride_row
    cols = tl.arange(0, BLOCK_V)
    m = tl.full((BLOCK_V,), float("-inf"), dtype=tl.float32)
    s = tl.zeros((BLOCK_V,), dtype=tl.float32)
    su = tl.zeros((BLOCK_V,), dtype=tl.float32)
    for start in range(0, V, BLOCK_V):
        mask = start + cols < V
        u = tl.load(base + start + cols, mask=mask, other=float("-inf")).to(tl.float32) * inv_t
        m_new = tl.maximum(m, u)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        decay = tl.exp(m - m_safe)
        e = tl.exp(u - m_safe)
        s = s * decay + e
        su = su * decay + e * tl.where(mask, u, 0.0)  # masked lanes: e = 0, u = -inf
        m = m_new
    m_row = tl.max(m, axis=0)
    lane = tl.exp(m - m_row)
    total = tl.sum(s * lane, axis=0)
    lse = m_row + tl.log(total)
    tl.store(out_ptr + row * 2, lse - tl.sum(su * lane, axis=0) / total)
    tl.store(out_ptr + row * 2 + 1, lse)


def _blocks(vocab):
    return min(MAX_BLOCK_V, next_pow2(vocab))


def distill_row_loss_triton(logits, *data, want_grad, alpha, temperature, z_loss, reverse,
                            scale, dense):
    """Row loss (``vocab_chunk_pass``, ``loss_columns=2``) of the fused kernels: the same
    contract as ``distill_row_loss_torch`` (fp32 [n, 2] terms, the gradient written over the
    logits chunk in its own dtype)."""
    n, vocab = logits.shape
    out = torch.empty((n, 2), dtype=torch.float32, device=logits.device)
    if n == 0:
        return out, (logits if want_grad else None)
    block = _blocks(vocab)
    common = (float(alpha), 1.0 / temperature, float(temperature), float(z_loss), float(scale))
    *data, kdw, cew = data
    # an absent weight is not read (HAS_*): any valid pointer stands in for it
    weights = {"HAS_KDW": kdw is not None, "HAS_CEW": cew is not None}
    kdw, cew = (t.float().contiguous() if t is not None else out for t in (kdw, cew))
    if dense:
        t_logits, y = data
        _kd_dense_rows_kernel[(n,)](
            logits, t_logits, y.contiguous(), kdw, cew, out,
            logits.stride(0), t_logits.stride(0), vocab, *common, **weights,
            COMPUTE_GRAD=want_grad, REVERSE=bool(reverse), BLOCK_V=block, num_warps=ROW_WARPS)
    else:
        y, ids, logq = data
        ids, logq = ids.contiguous(), logq.float().contiguous()
        k = ids.shape[1]
        block_k = next_pow2(k)
        block_g = max(16, min(block, MEMBERSHIP_ELEMENTS // block_k))
        _kd_sparse_rows_kernel[(n,)](
            logits, y.contiguous(), ids, logq, kdw, cew, out,
            logits.stride(0), max(ids.stride(0), 1), vocab, k, *common, **weights,
            COMPUTE_GRAD=want_grad, BLOCK_V=block, BLOCK_VG=block_g, BLOCK_K=block_k,
            num_warps=ROW_WARPS)
    return out, (logits if want_grad else None)


def _chunk_rows(n, width, per_row_vocab, compacting):
    """Rows per chunk under linear CE's Triton budget: per row the student's logits (and a
    dense teacher's) plus, when compacting, the gathered rows."""
    from kernels import linear_cross_entropy_triton as lt

    return lt.chunk_size(n, width, per_row_vocab, compacting)


def chunk_pass_triton(h, w, rows, teacher, row_data, opts, scale, want_dh, want_dw):
    """Triton version of ``linear_distill.chunk_pass_torch`` (same arguments and results;
    terms fp32). The matmuls run in h's dtype (the teacher's in its hidden states' dtype);
    dW accumulates in fp32 unless h and w are both half precision, as in linear CE."""
    from functools import partial

    h = h.contiguous()
    wc = w if w.dtype == h.dtype else w.to(h.dtype)
    vocab = w.shape[0]
    n = h.shape[0] if rows is None else rows.numel()
    both_half = h.dtype != torch.float32 and w.dtype != torch.float32
    width = h.shape[1] + (teacher[0].shape[1] if teacher is not None else 0)
    step = _chunk_rows(n, width, vocab * (2 if teacher is not None else 1), rows is not None)
    names = ("alpha", "temperature", "z_loss", "reverse", "dense")
    row_loss = partial(_with_grad_flag, distill_row_loss_triton, scale=scale,
                       **{k: opts[k] for k in names})
    return vocab_chunk_pass(h, wc, row_loss, row_data, rows, step=step, want_dh=want_dh,
                            want_dw=want_dw, dw_dtype=w.dtype if both_half else torch.float32,
                            teacher=teacher, loss_columns=2)


def _with_grad_flag(fn, *args, **kw):
    *data, want_grad = args
    return fn(*data, want_grad=want_grad, **kw)


def entropy_pass_triton(th, tw, temperature):
    """[N, 2] fp32 = (entropy, lse) of softmax(th @ tw.T / T), chunked, no gradient."""
    vocab = tw.shape[0]

    def row_loss(logits, want_grad):
        n = logits.shape[0]
        out = torch.empty((n, 2), dtype=torch.float32, device=logits.device)
        if n:
            _entropy_rows_kernel[(n,)](logits, out, logits.stride(0), vocab, 1.0 / temperature,
                                       BLOCK_V=_blocks(vocab), num_warps=ROW_WARPS)
        return out, None

    th = th.contiguous()
    out, _, _ = vocab_chunk_pass(th, tw, row_loss, (), None,
                                 step=_chunk_rows(th.shape[0], th.shape[1], vocab, False),
                                 want_dh=False, want_dw=False, loss_columns=2)
    return out


def check_inputs(*tensors):
    """The Triton path takes fp32/fp16/bf16 hidden states and weights."""
    check_dtype("linear_distill_loss", *tensors)
