"""Attention through the ``flash-attn`` package (``LLMCORE_KERNELS=flash_attn``), CUDA only.

An optional backend, never a requirement: imported only when chosen. Document masking maps to
``flash_attn_varlen_func`` with one sequence per contiguous run of equal ids, so here a
document id that reappears later in the row starts a new document (our Triton and torch
backends would join the two runs); packed data never reuses an id within a row.
"""

import torch


def _import():
    try:
        import flash_attn
    except ImportError as exc:
        raise RuntimeError(
            "flash_attention: LLMCORE_KERNELS=flash_attn but the flash-attn package is not "
            "installed (pip install flash-attn)"
        ) from exc
    return flash_attn


def runs_to_cu_seqlens(doc_ids):
    """doc_ids [B, T] -> (cu_seqlens int32 [n_runs + 1], longest run) over the flattened rows."""
    b, t = doc_ids.shape
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    pos = starts.reshape(-1).nonzero().squeeze(1)
    cu = torch.cat([pos, pos.new_tensor([b * t])]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


def attention_flash_attn(q, k, v, causal=True, doc_ids=None, softmax_scale=None):
    """q [B,Tq,H,D], k/v [B,Tk,Hkv,D] (fp16/bf16, CUDA) -> [B,Tq,H,D]."""
    fa = _import()
    if doc_ids is None:
        return fa.flash_attn_func(q, k, v, causal=causal, softmax_scale=softmax_scale)
    b, t, h, d = q.shape
    if k.shape[1] != t:
        raise ValueError(
            f"flash_attention: flash_attn backend with doc_ids needs Tq == Tk, got {t} and "
            f"{k.shape[1]}"
        )
    cu, longest = runs_to_cu_seqlens(doc_ids)
    out = fa.flash_attn_varlen_func(
        q.reshape(b * t, h, d), k.reshape(b * t, k.shape[2], d), v.reshape(b * t, v.shape[2], d),
        cu, cu, longest, longest, causal=causal, softmax_scale=softmax_scale,
    )
    return out.reshape(b, t, h, d)
