"""Triton flash-attention forward: online softmax over key blocks, base-2 log-sum-exp saved.

Imported by ``kernels/attention/function.py`` on the first Triton call. One program owns
BLOCK_M queries of one (batch, head); it streams the key/value blocks its queries can see
(causal and document bounds narrow the range) and never holds a [T, T] tensor. Scores are
kept in base 2 (``exp2`` is the cheap instruction), so the saved ``lse2`` is
log2(sum exp(score)), in units the backward consumes directly.
"""

import torch
import triton
import triton.language as tl

from kernels.attention.triton_masks import query_block_key_range, visible

LOG2E = 1.4426950408889634


@triton.jit
def _attn_fwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, doc_ptr, first_ptr, last_ptr,
    sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sob, sot, soh,
    H, T_Q, T_K, HEAD_D, GROUP, qk_scale,
    CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr, DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    hk = h // GROUP  # the kv head this query head reads (Llama order)
    off = T_K - T_Q  # key position of query 0: causal mask aligned bottom-right
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_valid = offs_m < T_Q
    d_valid = offs_d < HEAD_D

    q = tl.load(q_ptr + b * sqb + offs_m[:, None] * sqt + h * sqh + offs_d[None, :],
                mask=m_valid[:, None] & d_valid[None, :], other=0.0).to(tl.float32)
    q = q.to(DOT_DTYPE)

    lo, hi = query_block_key_range(pid_m, b * T_K, offs_m, m_valid, first_ptr, last_ptr, T_K, off,
                                   BLOCK_M, CAUSAL, HAS_DOC)
    # placeholders, read only when HAS_DOC; typed like the ids since a loop-carried value keeps its type
    q_doc = offs_m.to(doc_ptr.dtype.element_ty)
    k_doc = offs_n.to(doc_ptr.dtype.element_ty)
    if HAS_DOC:
        q_doc = tl.load(doc_ptr + b * T_K + off + offs_m, mask=m_valid, other=-1)

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        kn = start_n + offs_n
        n_valid = kn < T_K
        kt = tl.load(k_ptr + b * skb + kn[None, :] * skt + hk * skh + offs_d[:, None],
                     mask=n_valid[None, :] & d_valid[:, None], other=0.0).to(tl.float32)
        s = tl.dot(q, kt.to(DOT_DTYPE), input_precision=PRECISION) * qk_scale  # (M, N), base 2
        if HAS_DOC:
            k_doc = tl.load(doc_ptr + b * T_K + kn, mask=n_valid, other=-2)
        keep = visible(offs_m, kn, m_valid, n_valid, q_doc, k_doc, off, CAUSAL, HAS_DOC)
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # rows that have seen no visible key yet stay at -inf; shift them by 0 to avoid nan
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_ptr + b * svb + kn[:, None] * svt + hk * svh + offs_d[None, :],
                    mask=n_valid[:, None] & d_valid[None, :], other=0.0).to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p.to(DOT_DTYPE), v.to(DOT_DTYPE),
                                            input_precision=PRECISION)
        m_i = m_new

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    tl.store(o_ptr + b * sob + offs_m[:, None] * sot + h * soh + offs_d[None, :],
             out.to(o_ptr.dtype.element_ty), mask=m_valid[:, None] & d_valid[None, :])
    lse2 = tl.where(l_i == 0.0, float("inf"), m_i + tl.log2(l_safe))
    tl.store(lse_ptr + pid_bh.to(tl.int64) * T_Q + offs_m, lse2, mask=m_valid)


def attention_fwd(q, k, v, causal, docs, scale, cfg):
    """Launch the forward.

    Args:
        q [B, Tq, H, D], k/v [B, Tk, Hkv, D] with unit stride in D.
        docs: None or (doc_ids [B, Tk], first [B, Tk] int32, last [B, Tk] int32), contiguous.
        scale: softmax scale (natural units).
        cfg: dict of BLOCK_M, BLOCK_N, num_warps, num_stages, DOT_DTYPE, PRECISION.

    Returns:
        o [B, Tq, H, D] (q's dtype), lse2 [B, H, Tq] fp32 (base-2 log-sum-exp of the scaled
        scores; +inf for a row that sees no key).
    """
    b, t_q, h, d = q.shape
    t_k, h_kv = k.shape[1], k.shape[2]
    o = torch.empty((b, t_q, h, d), dtype=q.dtype, device=q.device)
    lse2 = torch.empty((b, h, t_q), dtype=torch.float32, device=q.device)
    doc, first, last = docs if docs is not None else (q, q, q)  # unread when HAS_DOC is False
    grid = (triton.cdiv(t_q, cfg["BLOCK_M"]), b * h)
    _attn_fwd_kernel[grid](
        q, k, v, o, lse2, doc, first, last,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
        h, t_q, t_k, d, h // h_kv, scale * LOG2E,
        CAUSAL=causal, HAS_DOC=docs is not None, DOT_DTYPE=cfg["DOT_DTYPE"],
        PRECISION=cfg["PRECISION"], BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
        BLOCK_D=cfg["BLOCK_D"], num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return o, lse2
