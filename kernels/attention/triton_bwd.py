"""Triton flash-attention backward: delta per row, dK/dV per key block, dQ per query block,
no atomics.

Imported by ``kernels/attention/function.py`` on the first Triton call. Both gradient kernels
recompute the probabilities from the saved base-2 log-sum-exp (``P = exp2(S * scale * log2e -
lse2)``) and use ``delta = rowsum(dO * O)``: dS = P * (dP - delta). The dK/dV kernel works in
the transposed layout (keys as rows: P^T = exp2(K Q^T - lse2), dV += P^T dO, dK += dS^T Q), so
no probability tile is transposed, and walks every query head of its kv group: grouped-query
gradients are summed in registers rather than with atomics, and the result is deterministic.
Like the forward, each walk is split into whole blocks (no mask) and diagonal/document blocks.
"""

import torch
import triton
import triton.language as tl

from kernels.attention.triton_fwd import LOG2E, is_even
from kernels.attention.triton_masks import (key_block_query_range, load_rows, load_tile,
                                            query_block, store_tile, visible)


@triton.jit
def _attn_bwd_delta_kernel(o_ptr, do_ptr, delta_ptr, sob, sot, soh, sdob, sdot, sdoh,
                           H, T_Q, HEAD_D, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_valid = offs_m < T_Q
    d_valid = offs_d < HEAD_D
    o = load_tile(o_ptr + b * sob + h * soh, offs_m, sot, offs_d, m_valid, d_valid, False)
    do = load_tile(do_ptr + b * sdob + h * sdoh, offs_m, sdot, offs_d, m_valid, d_valid, False)
    tl.store(delta_ptr + pid_bh.to(tl.int64) * T_Q + offs_m,
             tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1), mask=m_valid)


@triton.jit
def _dkdv_query_loop(dk, dv, k, v, q_base, do_base, sqt, sdot, lse_row, delta_row, doc_row,
                     k_doc, offs_n, offs_m0, offs_d, n_valid, d_valid, start, stop, T_Q, off,
                     qk_scale, MASKED: tl.constexpr, EVEN: tl.constexpr, CAUSAL: tl.constexpr,
                     HAS_DOC: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
                     BLOCK_M: tl.constexpr):
    q_doc = offs_m0.to(doc_row.dtype.element_ty)  # placeholder unless HAS_DOC
    for start_m in range(start, stop, BLOCK_M):
        offs_m = start_m + offs_m0
        m_valid = offs_m < T_Q
        q = load_tile(q_base, offs_m, sqt, offs_d, m_valid, d_valid, EVEN).to(DOT_DTYPE)
        do = load_tile(do_base, offs_m, sdot, offs_d, m_valid, d_valid, EVEN).to(DOT_DTYPE)
        lse2 = load_rows(lse_row, offs_m, m_valid, EVEN)
        delta = load_rows(delta_row, offs_m, m_valid, EVEN)
        st = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale  # (N, M)
        pt = tl.exp2(st - lse2[None, :])
        if MASKED:
            if HAS_DOC:
                q_doc = tl.load(doc_row + off + offs_m, mask=m_valid, other=-1)
            keep = visible(offs_m, offs_n, m_valid, n_valid, q_doc, k_doc, off, CAUSAL, HAS_DOC,
                           True)
            pt = tl.where(keep, pt, 0.0)
        elif not EVEN:
            pt = tl.where(m_valid[None, :], pt, 0.0)
        dv += tl.dot(pt.to(DOT_DTYPE), do, input_precision=PRECISION)
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)  # (N, M)
        dst = pt * (dpt - delta[None, :])
        dk += tl.dot(dst.to(DOT_DTYPE), q, input_precision=PRECISION)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, doc_ptr, first_ptr, last_ptr,
    sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdob, sdot, sdoh, sdkb, sdkt, sdkh,
    H, H_KV, T_Q, T_K, HEAD_D, GROUP, qk_scale, sm_scale,
    CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr, EVEN: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H_KV).to(tl.int64)
    hk = pid_bh % H_KV
    off = T_K - T_Q
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    n_valid = offs_n < T_K
    d_valid = offs_d < HEAD_D
    k = load_tile(k_ptr + b * skb + hk * skh, offs_n, skt, offs_d, n_valid, d_valid,
                  EVEN).to(DOT_DTYPE)
    v = load_tile(v_ptr + b * svb + hk * svh, offs_n, svt, offs_d, n_valid, d_valid,
                  EVEN).to(DOT_DTYPE)

    lo, mid, hi = key_block_query_range(pid_n, b * T_K, offs_n, n_valid, first_ptr, last_ptr,
                                        T_Q, off, BLOCK_M, BLOCK_N, CAUSAL, HAS_DOC)
    doc_row = doc_ptr + b * T_K
    k_doc = offs_n.to(doc_ptr.dtype.element_ty)  # placeholder unless HAS_DOC
    if HAS_DOC:
        k_doc = tl.load(doc_row + offs_n, mask=n_valid, other=-2)

    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for g in range(0, GROUP):
        h = hk * GROUP + g
        q_base = q_ptr + b * sqb + h * sqh
        do_base = do_ptr + b * sdob + h * sdoh
        row = (b * H + h) * T_Q
        # the diagonal blocks (or, with documents, all of them) first, then the whole ones
        dk, dv = _dkdv_query_loop(dk, dv, k, v, q_base, do_base, sqt, sdot, lse_ptr + row,
                                  delta_ptr + row, doc_row, k_doc, offs_n, offs_m0, offs_d,
                                  n_valid, d_valid, lo, mid, T_Q, off, qk_scale, True, EVEN,
                                  CAUSAL, HAS_DOC, DOT_DTYPE, PRECISION, BLOCK_M)
        dk, dv = _dkdv_query_loop(dk, dv, k, v, q_base, do_base, sqt, sdot, lse_ptr + row,
                                  delta_ptr + row, doc_row, k_doc, offs_n, offs_m0, offs_d,
                                  n_valid, d_valid, mid, hi, T_Q, off, qk_scale, False, EVEN,
                                  CAUSAL, HAS_DOC, DOT_DTYPE, PRECISION, BLOCK_M)

    out = b * sdkb + hk * sdkh  # dk and dv share one layout
    store_tile(dk_ptr + out, offs_n, sdkt, offs_d, n_valid, d_valid,
               (dk * sm_scale).to(dk_ptr.dtype.element_ty), EVEN)
    store_tile(dv_ptr + out, offs_n, sdkt, offs_d, n_valid, d_valid,
               dv.to(dv_ptr.dtype.element_ty), EVEN)


@triton.jit
def _dq_key_loop(dq, q, do, lse2, delta, k_base, v_base, skt, svt, doc_row, q_doc,
                 offs_m, offs_n0, offs_d, m_valid, d_valid, start, stop, T_K, off, qk_scale,
                 MASKED: tl.constexpr, EVEN: tl.constexpr, CAUSAL: tl.constexpr,
                 HAS_DOC: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
                 BLOCK_N: tl.constexpr):
    k_doc = offs_n0.to(doc_row.dtype.element_ty)  # placeholder unless HAS_DOC
    for start_n in range(start, stop, BLOCK_N):
        kn = start_n + offs_n0
        n_valid = kn < T_K
        k = load_tile(k_base, kn, skt, offs_d, n_valid, d_valid, EVEN).to(DOT_DTYPE)
        v = load_tile(v_base, kn, svt, offs_d, n_valid, d_valid, EVEN)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        p = tl.exp2(s - lse2[:, None])
        if MASKED:
            if HAS_DOC:
                k_doc = tl.load(doc_row + kn, mask=n_valid, other=-2)
            keep = visible(offs_m, kn, m_valid, n_valid, q_doc, k_doc, off, CAUSAL, HAS_DOC,
                           False)
            p = tl.where(keep, p, 0.0)
        elif not EVEN:
            p = tl.where(n_valid[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v.to(DOT_DTYPE)), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(DOT_DTYPE), k, input_precision=PRECISION)
    return dq


@triton.jit
def _attn_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, doc_ptr, first_ptr, last_ptr,
    sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdob, sdot, sdoh, sdqb, sdqt, sdqh,
    H, T_Q, T_K, HEAD_D, GROUP, qk_scale, sm_scale,
    CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr, EVEN: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_bh, b, h, hk, off, offs_m, m_valid, lo, mid, hi, doc_row, q_doc = query_block(
        H, GROUP, T_Q, T_K, doc_ptr, first_ptr, last_ptr, BLOCK_M, BLOCK_N, CAUSAL, HAS_DOC)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_valid = offs_d < HEAD_D
    q = load_tile(q_ptr + b * sqb + h * sqh, offs_m, sqt, offs_d, m_valid, d_valid,
                  EVEN).to(DOT_DTYPE)
    do = load_tile(do_ptr + b * sdob + h * sdoh, offs_m, sdot, offs_d, m_valid, d_valid,
                   EVEN).to(DOT_DTYPE)
    row = pid_bh.to(tl.int64) * T_Q
    lse2 = load_rows(lse_ptr + row, offs_m, m_valid, EVEN)
    delta = load_rows(delta_ptr + row, offs_m, m_valid, EVEN)

    k_base = k_ptr + b * skb + hk * skh
    v_base = v_ptr + b * svb + hk * svh
    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    dq = _dq_key_loop(dq, q, do, lse2, delta, k_base, v_base, skt, svt, doc_row, q_doc, offs_m,
                      offs_n0, offs_d, m_valid, d_valid, lo, mid, T_K, off, qk_scale, False,
                      EVEN, CAUSAL, HAS_DOC, DOT_DTYPE, PRECISION, BLOCK_N)
    dq = _dq_key_loop(dq, q, do, lse2, delta, k_base, v_base, skt, svt, doc_row, q_doc, offs_m,
                      offs_n0, offs_d, m_valid, d_valid, mid, hi, T_K, off, qk_scale, True,
                      EVEN, CAUSAL, HAS_DOC, DOT_DTYPE, PRECISION, BLOCK_N)

    store_tile(dq_ptr + b * sdqb + h * sdqh, offs_m, sdqt, offs_d, m_valid, d_valid,
               (dq * sm_scale).to(dq_ptr.dtype.element_ty), EVEN)


def attention_bwd(q, k, v, o, lse2, do, causal, docs, scale, cfg):
    """Launch the backward; shapes as in ``attention_fwd``, do like o, tiles from cfg["bwd_kv"]
    (BLOCK_N keys per program, BLOCK_M queries per step) and cfg["bwd_q"]. Returns (dq, dk, dv).
    """
    b, t_q, h, d = q.shape
    t_k, h_kv = k.shape[1], k.shape[2]
    delta = torch.empty((b, h, t_q), dtype=torch.float32, device=q.device)  # rowsum(dO * O)
    _attn_bwd_delta_kernel[(triton.cdiv(t_q, 64), b * h)](
        o, do, delta, o.stride(0), o.stride(1), o.stride(2), do.stride(0), do.stride(1),
        do.stride(2), h, t_q, d, BLOCK_M=64, BLOCK_D=cfg["BLOCK_D"],
    )
    dq = torch.empty_like(q)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(k.shape, dtype=v.dtype, device=v.device)
    doc, first, last = docs if docs is not None else (q, q, q)
    common = dict(CAUSAL=causal, HAS_DOC=docs is not None, DOT_DTYPE=cfg["DOT_DTYPE"],
                  PRECISION=cfg["PRECISION"], BLOCK_D=cfg["BLOCK_D"])
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
               v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2))
    kv = cfg["bwd_kv"]
    # query steps of a key block start on the query grid only if key tiles are whole multiples
    kv_even = (is_even(t_q, t_k, d, kv["BLOCK_M"], kv["BLOCK_N"], cfg["BLOCK_D"])
               and kv["BLOCK_N"] % kv["BLOCK_M"] == 0)
    _attn_bwd_dkdv_kernel[(triton.cdiv(t_k, kv["BLOCK_N"]), b * h_kv)](
        q, k, v, do, lse2, delta, dk, dv, doc, first, last, *strides,
        dk.stride(0), dk.stride(1), dk.stride(2),
        h, h_kv, t_q, t_k, d, h // h_kv, scale * LOG2E, scale, EVEN=kv_even,
        BLOCK_M=kv["BLOCK_M"], BLOCK_N=kv["BLOCK_N"], num_warps=kv["num_warps"],
        num_stages=kv["num_stages"], **common,
    )
    tq = cfg["bwd_q"]
    _attn_bwd_dq_kernel[(triton.cdiv(t_q, tq["BLOCK_M"]), b * h)](
        q, k, v, do, lse2, delta, dq, doc, first, last, *strides,
        dq.stride(0), dq.stride(1), dq.stride(2),
        h, t_q, t_k, d, h // h_kv, scale * LOG2E, scale,
        EVEN=is_even(t_q, t_k, d, tq["BLOCK_M"], tq["BLOCK_N"], cfg["BLOCK_D"]),
        BLOCK_M=tq["BLOCK_M"], BLOCK_N=tq["BLOCK_N"], num_warps=tq["num_warps"],
        num_stages=tq["num_stages"], **common,
    )
    return dq, dk, dv
