"""PyTorch paths of attention: the SDPA backend used on CPU, and a naive reference for tests.

``attention_torch`` is the production PyTorch backend (``scaled_dot_product_attention`` with
the right mask); ``attention_naive`` spells the maths out with an explicit [T, T] score matrix
and is what the tests compare every backend against (in float64). ``build_mask`` is shared by
both. Used by ``kernels/attention/__init__.py`` and ``tests/kernels/``.
"""

import torch
import torch.nn.functional as F


def build_mask(t_q, t_k, causal, doc_ids, device):
    """Boolean keep-mask [B or 1, 1, Tq, Tk], or None when every key is visible.

    Causal masking is aligned bottom-right (query i sits at key position Tk - Tq + i), so a
    decode step with a KV cache sees the whole cache. ``doc_ids`` [B, Tk] gives the document of
    every key; queries take the last Tq entries.
    """
    keep = None
    if causal:
        q_pos = torch.arange(t_q, device=device) + (t_k - t_q)
        keep = (q_pos[:, None] >= torch.arange(t_k, device=device)[None, :])[None, None]
    if doc_ids is not None:
        same = doc_ids[:, t_k - t_q:, None] == doc_ids[:, None, :]  # (B, Tq, Tk)
        same = same[:, None]
        keep = same if keep is None else keep & same
    return keep


def _repeat_kv(x, rep):
    # (B, Hkv, T, D) -> (B, Hkv*rep, T, D); query head h reads kv head h // rep (Llama order)
    return x if rep == 1 else x.repeat_interleave(rep, dim=1)


def attention_torch(q, k, v, causal=True, doc_ids=None, softmax_scale=None):
    """SDPA backend. q [B,Tq,H,D], k/v [B,Tk,Hkv,D], doc_ids [B,Tk] or None -> [B,Tq,H,D]."""
    t_q, t_k = q.shape[1], k.shape[1]
    rep = q.shape[2] // k.shape[2]
    qt = q.transpose(1, 2)  # (B, H, Tq, D)
    kt = _repeat_kv(k.transpose(1, 2), rep)  # (B, H, Tk, D)
    vt = _repeat_kv(v.transpose(1, 2), rep)
    if doc_ids is None and (not causal or t_q == t_k):
        # is_causal lets SDPA take its fused kernels instead of a dense mask
        out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, scale=softmax_scale)
    else:
        mask = build_mask(t_q, t_k, causal, doc_ids, q.device)
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=softmax_scale)
    return out.transpose(1, 2).contiguous()


def attention_naive(q, k, v, causal=True, doc_ids=None, softmax_scale=None):
    """Explicit softmax(q k^T * scale + mask) v in the inputs' dtype; the test reference."""
    t_q, t_k, d = q.shape[1], k.shape[1], q.shape[3]
    rep = q.shape[2] // k.shape[2]
    scale = d ** -0.5 if softmax_scale is None else softmax_scale
    kt = _repeat_kv(k.transpose(1, 2), rep)
    vt = _repeat_kv(v.transpose(1, 2), rep)
    scores = torch.matmul(q.transpose(1, 2), kt.transpose(-1, -2)) * scale  # (B, H, Tq, Tk)
    mask = build_mask(t_q, t_k, causal, doc_ids, q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, vt).transpose(1, 2)
