"""Attention: causal flash attention with GQA and document masking, over three backends.

- ``triton``: our flash-attention forward and backward (``kernels/attention/triton_fwd.py``,
  ``triton_bwd.py``, wired in ``function.py``);
- ``torch``: ``scaled_dot_product_attention`` with the right mask (``reference.py``);
- ``flash_attn``: the ``flash-attn`` package when installed (``LLMCORE_KERNELS=flash_attn``).

``flash_attention`` is the public op; the model (``llmcore/model``) calls it through
``kernels.flash_attention``. Layout is [batch, seq, heads, head_dim] everywhere.
"""

import torch

from kernels import _dispatch
from kernels.attention.reference import attention_naive, attention_torch, build_mask

__all__ = ["flash_attention", "attention_torch", "attention_naive", "build_mask"]

# Wider heads would need tiles of their own: with the head-dim-128 tiles a head of 256 needs
# 192-225 KiB of shared memory per backward program (compiled for sm_80: over its 163 KiB) and
# a 128 x 256 fp32 accumulator per forward program. ``auto`` sends them to PyTorch's SDPA.
TRITON_MAX_HEAD_DIM = 128


def _check(q, k, v, doc_ids):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"flash_attention: q, k, v must be [B, T, H, D], got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    b, t_q, h, d = q.shape
    if k.shape != v.shape or k.shape[0] != b or k.shape[3] != d:
        raise ValueError(
            f"flash_attention: k {tuple(k.shape)} and v {tuple(v.shape)} must both be "
            f"[B={b}, Tk, Hkv, D={d}]"
        )
    if h % k.shape[2] != 0:
        raise ValueError(f"flash_attention: n_kv_heads={k.shape[2]} must divide n_heads={h}")
    if t_q > k.shape[1]:
        raise ValueError(f"flash_attention: more queries ({t_q}) than keys ({k.shape[1]})")
    if not q.is_floating_point():
        raise TypeError(f"flash_attention: q, k, v must be floating point, got {q.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"flash_attention: q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if doc_ids is not None and tuple(doc_ids.shape) != (b, k.shape[1]):
        raise ValueError(
            f"flash_attention: doc_ids must be [B, Tk] = [{b}, {k.shape[1]}], "
            f"got {tuple(doc_ids.shape)}"
        )


def flash_attention(q, k, v, causal=True, doc_ids=None, softmax_scale=None):
    """Multi-head attention with grouped-query heads and optional document masking.

    Args:
        q: [B, Tq, H, D] queries.
        k, v: [B, Tk, Hkv, D] keys and values; Hkv divides H (query head h reads kv head
            h // (H // Hkv), the Llama convention). Tq <= Tk; when Tq < Tk the queries are the
            last Tq positions (causal mask aligned bottom-right, as in decoding with a cache).
        causal: mask keys after the query's position.
        doc_ids: [B, Tk] integer document id of every position, or None. A query attends only
            to keys with the same id (combined with ``causal``), so packed documents do not
            see each other.
        softmax_scale: multiplier of q.k; default D ** -0.5.

    Returns:
        [B, Tq, H, D] in q's dtype.
    """
    _check(q, k, v, doc_ids)
    limit = None
    if q.shape[-1] > TRITON_MAX_HEAD_DIM:
        limit = f"the Triton kernels take head dims up to {TRITON_MAX_HEAD_DIM}, got {q.shape[-1]}"
    which = _dispatch.backend("flash_attention", q, k, v, doc_ids, allow_flash_attn=True,
                              triton_limit=limit)
    if which == "torch":
        return attention_torch(q, k, v, causal, doc_ids, softmax_scale)
    if which == "flash_attn":
        from kernels.attention.flash_attn_backend import attention_flash_attn

        return attention_flash_attn(q, k, v, causal, doc_ids, softmax_scale)
    from kernels.attention.function import attention_triton

    return attention_triton(q, k, v, causal, doc_ids, softmax_scale)
