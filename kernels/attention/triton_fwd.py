"""Triton flash-attention forward: online softmax over key blocks, base-2 log-sum-exp saved.

Imported by ``kernels/attention/function.py`` on the first Triton call. One program owns
BLOCK_M queries of one (batch, head); it streams the key/value blocks its queries can see
(causal and document bounds narrow the range) and never holds a [T, T] tensor. Scores are
kept in base 2 (``exp2`` is the cheap instruction), so the saved ``lse2`` is
log2(sum exp(score)), in units the backward consumes directly.

Speed choices: the key range is split into blocks seen whole (no mask built) and the diagonal
or document blocks (masked); with EVEN (lengths divisible by the tiles, head dim a power of
two) no load is bounds-checked; causal programs run heaviest-first (``query_block``).
"""

import torch
import triton
import triton.language as tl

from kernels.attention.triton_masks import load_tile, query_block, store_tile, visible

LOG2E = 1.4426950408889634


@triton.jit
def _fwd_key_loop(acc, l_i, m_i, q, k_base, v_base, skt, svt, doc_row, q_doc,
                  offs_m, offs_n, offs_d, m_valid, d_valid, start, stop, T_K, off, qk_scale,
                  MASKED: tl.constexpr, EVEN: tl.constexpr, CAUSAL: tl.constexpr,
                  HAS_DOC: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
                  BLOCK_N: tl.constexpr):
    k_doc = offs_n.to(doc_row.dtype.element_ty)  # placeholder unless HAS_DOC
    for start_n in range(start, stop, BLOCK_N):
        kn = start_n + offs_n
        n_valid = kn < T_K
        k = load_tile(k_base, kn, skt, offs_d, n_valid, d_valid, EVEN)
        v = load_tile(v_base, kn, svt, offs_d, n_valid, d_valid, EVEN)
        # (M, N) scores in base 2; the .to casts bf16 loads to fp32 under the interpreter
        s = tl.dot(q, tl.trans(k.to(DOT_DTYPE)), input_precision=PRECISION) * qk_scale
        if MASKED:
            if HAS_DOC:
                k_doc = tl.load(doc_row + kn, mask=n_valid, other=-2)
            keep = visible(offs_m, kn, m_valid, n_valid, q_doc, k_doc, off, CAUSAL, HAS_DOC,
                           False)
            s = tl.where(keep, s, float("-inf"))
        elif not EVEN:
            s = tl.where(n_valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        if MASKED:
            # a row that has seen no visible key yet stays at -inf: shift it by 0, not nan
            m_new_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_new_safe = m_new  # every row sees a key of every whole block
        alpha = tl.exp2(m_i - m_new_safe)
        p = tl.exp2(s - m_new_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(DOT_DTYPE), v.to(DOT_DTYPE),
                                            input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, doc_ptr, first_ptr, last_ptr,
    sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sob, sot, soh,
    H, T_Q, T_K, HEAD_D, GROUP, qk_scale,
    CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr, EVEN: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_bh, b, h, hk, off, offs_m, m_valid, lo, mid, hi, doc_row, q_doc = query_block(
        H, GROUP, T_Q, T_K, doc_ptr, first_ptr, last_ptr, BLOCK_M, BLOCK_N, CAUSAL, HAS_DOC)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_valid = offs_d < HEAD_D
    q = load_tile(q_ptr + b * sqb + h * sqh, offs_m, sqt, offs_d, m_valid, d_valid, EVEN)
    q = q.to(DOT_DTYPE)

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    k_base = k_ptr + b * skb + hk * skh
    v_base = v_ptr + b * svb + hk * svh
    acc, l_i, m_i = _fwd_key_loop(acc, l_i, m_i, q, k_base, v_base, skt, svt, doc_row, q_doc,
                                  offs_m, offs_n, offs_d, m_valid, d_valid, lo, mid, T_K, off,
                                  qk_scale, False, EVEN, CAUSAL, HAS_DOC, DOT_DTYPE, PRECISION,
                                  BLOCK_N)
    acc, l_i, m_i = _fwd_key_loop(acc, l_i, m_i, q, k_base, v_base, skt, svt, doc_row, q_doc,
                                  offs_m, offs_n, offs_d, m_valid, d_valid, mid, hi, T_K, off,
                                  qk_scale, True, EVEN, CAUSAL, HAS_DOC, DOT_DTYPE, PRECISION,
                                  BLOCK_N)

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = (acc / l_safe[:, None]).to(o_ptr.dtype.element_ty)
    store_tile(o_ptr + b * sob + h * soh, offs_m, sot, offs_d, m_valid, d_valid, out, EVEN)
    lse2 = tl.where(l_i == 0.0, float("inf"), m_i + tl.log2(l_safe))
    tl.store(lse_ptr + pid_bh.to(tl.int64) * T_Q + offs_m, lse2, mask=m_valid)


def is_even(t_q, t_k, head_dim, block_q, block_k, block_d):
    """True when no tile crosses a sequence end or pads the head dim and the causal diagonal
    (shifted by Tk - Tq) lands on the query tile grid: the kernels then skip bounds checks."""
    return (t_q % block_q == 0 and t_k % block_k == 0 and head_dim == block_d
            and (t_k - t_q) % block_q == 0)


def attention_fwd(q, k, v, causal, docs, scale, cfg):
    """Launch the forward.

    Args:
        q [B, Tq, H, D], k/v [B, Tk, Hkv, D] with unit stride in D.
        docs: None or (doc_ids [B, Tk], first [B, Tk] int32, last [B, Tk] int32), contiguous.
        scale: softmax scale (natural units).
        cfg: ``block_config`` dict: BLOCK_D, DOT_DTYPE, PRECISION and, under "fwd", BLOCK_M,
            BLOCK_N, num_warps, num_stages.

    Returns:
        o [B, Tq, H, D] (q's dtype), lse2 [B, H, Tq] fp32 (base-2 log-sum-exp of the scaled
        scores; +inf for a row that sees no key).
    """
    b, t_q, h, d = q.shape
    t_k, h_kv = k.shape[1], k.shape[2]
    tile = cfg["fwd"]
    o = torch.empty((b, t_q, h, d), dtype=q.dtype, device=q.device)
    lse2 = torch.empty((b, h, t_q), dtype=torch.float32, device=q.device)
    doc, first, last = docs if docs is not None else (q, q, q)  # unread when HAS_DOC is False
    grid = (triton.cdiv(t_q, tile["BLOCK_M"]), b * h)
    _attn_fwd_kernel[grid](
        q, k, v, o, lse2, doc, first, last,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
        h, t_q, t_k, d, h // h_kv, scale * LOG2E,
        CAUSAL=causal, HAS_DOC=docs is not None,
        EVEN=is_even(t_q, t_k, d, tile["BLOCK_M"], tile["BLOCK_N"], cfg["BLOCK_D"]),
        DOT_DTYPE=cfg["DOT_DTYPE"], PRECISION=cfg["PRECISION"], BLOCK_M=tile["BLOCK_M"],
        BLOCK_N=tile["BLOCK_N"], BLOCK_D=cfg["BLOCK_D"], num_warps=tile["num_warps"],
        num_stages=tile["num_stages"],
    )
    return o, lse2
