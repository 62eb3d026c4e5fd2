"""Triton flash-attention backward: dK/dV per key block, dQ per query block, no atomics.

Imported by ``kernels/attention/function.py`` on the first Triton call. Both kernels recompute
the probabilities from the saved base-2 log-sum-exp (``P = exp2(S * scale * log2e - lse2)``)
and use ``delta = rowsum(dO * O)``: dS = P * (dP - delta). The dK/dV kernel walks every query
head of its kv group, so grouped-query gradients are summed in registers rather than with
atomics, and the result is deterministic.
"""

import torch
import triton
import triton.language as tl

from kernels.attention.triton_fwd import LOG2E
from kernels.attention.triton_masks import query_block_key_range, visible


@triton.jit
def _attn_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, doc_ptr, first_ptr, last_ptr,
    sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdob, sdot, sdoh, sdkb, sdkt, sdkh,
    H, H_KV, T_Q, T_K, HEAD_D, GROUP, qk_scale, sm_scale,
    CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr, DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
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
    nd_mask = n_valid[:, None] & d_valid[None, :]

    k = tl.load(k_ptr + b * skb + offs_n[:, None] * skt + hk * skh + offs_d[None, :],
                mask=nd_mask, other=0.0).to(tl.float32).to(DOT_DTYPE)
    v = tl.load(v_ptr + b * svb + offs_n[:, None] * svt + hk * svh + offs_d[None, :],
                mask=nd_mask, other=0.0).to(tl.float32).to(DOT_DTYPE)

    # queries that can see this key block
    lo = 0
    hi = T_Q
    if CAUSAL:
        lo = tl.maximum(pid_n * BLOCK_N - off, 0)
    # placeholders, read only when HAS_DOC; typed like the ids since a loop-carried value keeps its type
    k_doc = offs_n.to(doc_ptr.dtype.element_ty)
    q_doc = offs_m0.to(doc_ptr.dtype.element_ty)
    if HAS_DOC:
        k_doc = tl.load(doc_ptr + b * T_K + offs_n, mask=n_valid, other=-2)
        first = tl.min(tl.load(first_ptr + b * T_K + offs_n, mask=n_valid, other=T_K), axis=0)
        last = tl.max(tl.load(last_ptr + b * T_K + offs_n, mask=n_valid, other=-1), axis=0)
        lo = tl.maximum(lo, first - off)
        hi = tl.minimum(hi, last - off + 1)

    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for g in range(0, GROUP):
        h = hk * GROUP + g
        for start_m in range(lo, hi, BLOCK_M):
            offs_m = start_m + offs_m0
            m_valid = offs_m < T_Q
            md_mask = m_valid[:, None] & d_valid[None, :]
            q = tl.load(q_ptr + b * sqb + offs_m[:, None] * sqt + h * sqh + offs_d[None, :],
                        mask=md_mask, other=0.0).to(tl.float32)
            do = tl.load(do_ptr + b * sdob + offs_m[:, None] * sdot + h * sdoh + offs_d[None, :],
                         mask=md_mask, other=0.0).to(tl.float32)
            row = (b * H + h) * T_Q + offs_m
            lse2 = tl.load(lse_ptr + row, mask=m_valid, other=0.0)
            delta = tl.load(delta_ptr + row, mask=m_valid, other=0.0)
            s = tl.dot(q.to(DOT_DTYPE), tl.trans(k), input_precision=PRECISION) * qk_scale
            if HAS_DOC:
                q_doc = tl.load(doc_ptr + b * T_K + off + offs_m, mask=m_valid, other=-1)
            keep = visible(offs_m, offs_n, m_valid, n_valid, q_doc, k_doc, off, CAUSAL, HAS_DOC)
            p = tl.where(keep, tl.exp2(s - lse2[:, None]), 0.0)  # (M, N)
            dv += tl.dot(tl.trans(p.to(DOT_DTYPE)), do.to(DOT_DTYPE), input_precision=PRECISION)
            dp = tl.dot(do.to(DOT_DTYPE), tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds.to(DOT_DTYPE)), q.to(DOT_DTYPE), input_precision=PRECISION)

    out_off = b * sdkb + offs_n[:, None] * sdkt + hk * sdkh + offs_d[None, :]
    tl.store(dk_ptr + out_off, (dk * sm_scale).to(dk_ptr.dtype.element_ty), mask=nd_mask)
    tl.store(dv_ptr + out_off, dv.to(dv_ptr.dtype.element_ty), mask=nd_mask)


@triton.jit
def _attn_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, doc_ptr, first_ptr, last_ptr,
    sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdob, sdot, sdoh, sdqb, sdqt, sdqh,
    H, T_Q, T_K, HEAD_D, GROUP, qk_scale, sm_scale,
    CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr, DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    hk = h // GROUP
    off = T_K - T_Q
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_valid = offs_m < T_Q
    d_valid = offs_d < HEAD_D
    md_mask = m_valid[:, None] & d_valid[None, :]

    q = tl.load(q_ptr + b * sqb + offs_m[:, None] * sqt + h * sqh + offs_d[None, :],
                mask=md_mask, other=0.0).to(tl.float32).to(DOT_DTYPE)
    do = tl.load(do_ptr + b * sdob + offs_m[:, None] * sdot + h * sdoh + offs_d[None, :],
                 mask=md_mask, other=0.0).to(tl.float32).to(DOT_DTYPE)
    row = pid_bh.to(tl.int64) * T_Q + offs_m
    lse2 = tl.load(lse_ptr + row, mask=m_valid, other=0.0)
    delta = tl.load(delta_ptr + row, mask=m_valid, other=0.0)

    lo, hi = query_block_key_range(pid_m, b * T_K, offs_m, m_valid, first_ptr, last_ptr, T_K, off,
                                   BLOCK_M, CAUSAL, HAS_DOC)
    # placeholders, read only when HAS_DOC; typed like the ids since a loop-carried value keeps its type
    q_doc = offs_m.to(doc_ptr.dtype.element_ty)
    k_doc = offs_n0.to(doc_ptr.dtype.element_ty)
    if HAS_DOC:
        q_doc = tl.load(doc_ptr + b * T_K + off + offs_m, mask=m_valid, other=-1)

    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        kn = start_n + offs_n0
        n_valid = kn < T_K
        nd_mask = n_valid[:, None] & d_valid[None, :]
        k = tl.load(k_ptr + b * skb + kn[:, None] * skt + hk * skh + offs_d[None, :],
                    mask=nd_mask, other=0.0).to(tl.float32).to(DOT_DTYPE)
        v = tl.load(v_ptr + b * svb + kn[:, None] * svt + hk * svh + offs_d[None, :],
                    mask=nd_mask, other=0.0).to(tl.float32).to(DOT_DTYPE)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        if HAS_DOC:
            k_doc = tl.load(doc_ptr + b * T_K + kn, mask=n_valid, other=-2)
        keep = visible(offs_m, kn, m_valid, n_valid, q_doc, k_doc, off, CAUSAL, HAS_DOC)
        p = tl.where(keep, tl.exp2(s - lse2[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(DOT_DTYPE), k, input_precision=PRECISION)

    tl.store(dq_ptr + b * sdqb + offs_m[:, None] * sdqt + h * sdqh + offs_d[None, :],
             (dq * sm_scale).to(dq_ptr.dtype.element_ty), mask=md_mask)


def attention_bwd(q, k, v, o, lse2, do, causal, docs, scale, cfg):
    """Launch the backward; shapes as in ``attention_fwd``, do like o. Returns (dq, dk, dv)."""
    b, t_q, h, d = q.shape
    t_k, h_kv = k.shape[1], k.shape[2]
    # delta_i = sum_d dO_id * O_id, the row term of the softmax backward: [B, H, Tq] fp32
    delta = (do.float() * o.float()).sum(-1).transpose(1, 2).contiguous()
    dq = torch.empty_like(q)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(k.shape, dtype=v.dtype, device=v.device)
    doc, first, last = docs if docs is not None else (q, q, q)
    common = dict(CAUSAL=causal, HAS_DOC=docs is not None, DOT_DTYPE=cfg["DOT_DTYPE"],
                  PRECISION=cfg["PRECISION"], BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
                  BLOCK_D=cfg["BLOCK_D"], num_warps=cfg["num_warps"],
                  num_stages=cfg["num_stages"])
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
               v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2))
    _attn_bwd_dkdv_kernel[(triton.cdiv(t_k, cfg["BLOCK_N"]), b * h_kv)](
        q, k, v, do, lse2, delta, dk, dv, doc, first, last, *strides,
        dk.stride(0), dk.stride(1), dk.stride(2),
        h, h_kv, t_q, t_k, d, h // h_kv, scale * LOG2E, scale, **common,
    )
    _attn_bwd_dq_kernel[(triton.cdiv(t_q, cfg["BLOCK_M"]), b * h)](
        q, k, v, do, lse2, delta, dq, doc, first, last, *strides,
        dq.stride(0), dq.stride(1), dq.stride(2),
        h, t_q, t_k, d, h // h_kv, scale * LOG2E, scale, **common,
    )
    return dq, dk, dv
