"""The Triton attention as an autograd.Function, its block configuration, document bounds.

Imported by ``kernels/attention/__init__.py`` on the first Triton call; the kernels live in
``triton_fwd.py`` and ``triton_bwd.py``.
"""

import torch

from kernels._triton_utils import check_dtype, dot_dtype, interpreting, next_pow2
from kernels.attention.triton_bwd import attention_bwd
from kernels.attention.triton_fwd import attention_fwd


def tile_config(block_m, block_n, num_warps, num_stages):
    """One kernel's tiles and launch options, as ``block_config`` hands them out."""
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": num_warps,
            "num_stages": num_stages}


# Half-precision tiles per kernel, by padded head dim. "fwd" and "bwd_q" walk key blocks of
# BLOCK_N for BLOCK_M queries; "bwd_kv" walks query steps of BLOCK_M for BLOCK_N keys.
HALF_TILES = {
    64: {"fwd": tile_config(128, 64, 4, 3), "bwd_kv": tile_config(32, 128, 4, 3),
         "bwd_q": tile_config(128, 32, 4, 3)},
    128: {"fwd": tile_config(128, 128, 8, 3), "bwd_kv": tile_config(64, 128, 8, 3),
          "bwd_q": tile_config(128, 64, 8, 3)},
}


def half_tiles_key(head_dim):
    """The ``HALF_TILES`` entry a head dim uses (its padded width: up to 64, else 128)."""
    return 64 if next_pow2(head_dim) <= 64 else 128


def block_config(head_dim, dtype):
    """Tile sizes and launch options of the three kernels for one head dim and dtype."""
    block_d = max(16, next_pow2(head_dim))
    if interpreting():
        # the interpreter pays per operation, not per element: small tiles still cover
        # several blocks (and a ragged tail) of a short test sequence, and unequal query and
        # key tiles exercise the tile-grid arithmetic of the split loops
        tiles = {"fwd": tile_config(32, 16, 4, 1), "bwd_kv": tile_config(16, 32, 4, 1),
                 "bwd_q": tile_config(32, 16, 4, 1)}
    elif dtype == torch.float32:
        # fp32 tiles take twice the shared memory; 32x32 fits every GPU's per-block budget
        tiles = {name: tile_config(32, 32, 4, 2) for name in ("fwd", "bwd_kv", "bwd_q")}
    else:
        tiles = HALF_TILES[half_tiles_key(head_dim)]
    return {
        "BLOCK_D": block_d, **tiles,
        "DOT_DTYPE": dot_dtype(dtype),
        # fp32 inputs stay exact fp32 (no tf32) so they match the reference to rounding
        "PRECISION": "ieee" if dtype == torch.float32 else "tf32",
    }


def doc_bounds(doc_ids):
    """For doc_ids [B, T]: (first, last) int32 [B, T], the first and last position of each
    token's document id in its row. They bound the key (query) blocks a block must visit;
    masking itself compares ids, so documents need not be contiguous."""
    b, t = doc_ids.shape
    _, inv = torch.unique(doc_ids, return_inverse=True)  # (B, T) ranks of the ids
    n_ids = int(inv.max()) + 1 if inv.numel() else 1
    slot = (inv + torch.arange(b, device=inv.device)[:, None] * n_ids).reshape(-1)
    pos = torch.arange(t, device=inv.device).expand(b, t).reshape(-1)
    first = torch.full((b * n_ids,), t, dtype=torch.long, device=inv.device)
    last = torch.full((b * n_ids,), -1, dtype=torch.long, device=inv.device)
    first.scatter_reduce_(0, slot, pos, reduce="amin")
    last.scatter_reduce_(0, slot, pos, reduce="amax")
    return (first[slot].view(b, t).to(torch.int32).contiguous(),
            last[slot].view(b, t).to(torch.int32).contiguous())


def _unit_stride(x):
    return x if x.stride(-1) == 1 else x.contiguous()


class FlashAttentionFunction(torch.autograd.Function):
    """q [B,Tq,H,D], k/v [B,Tk,Hkv,D] -> o; saves q, k, v, o and the base-2 lse."""

    @staticmethod
    def forward(ctx, q, k, v, causal, doc_ids, scale):
        q, k, v = _unit_stride(q), _unit_stride(k), _unit_stride(v)
        docs = None
        if doc_ids is not None:
            docs = (doc_ids.contiguous(), *doc_bounds(doc_ids))
        cfg = block_config(q.shape[-1], q.dtype)
        o, lse2 = attention_fwd(q, k, v, causal, docs, scale, cfg)
        ctx.save_for_backward(q, k, v, o, lse2, *(docs or ()))
        ctx.causal, ctx.scale, ctx.cfg = causal, scale, cfg
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse2, *docs = ctx.saved_tensors
        dq, dk, dv = attention_bwd(q, k, v, o, lse2, _unit_stride(do), ctx.causal,
                                   tuple(docs) or None, ctx.scale, ctx.cfg)
        return dq, dk, dv, None, None, None


def attention_triton(q, k, v, causal=True, doc_ids=None, softmax_scale=None):
    """Triton path of ``kernels.flash_attention`` (inputs already checked by the public op)."""
    check_dtype("flash_attention", q, k, v)
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else float(softmax_scale)
    return FlashAttentionFunction.apply(q, k, v, bool(causal), doc_ids, scale)
