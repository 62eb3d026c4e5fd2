"""The Triton attention as an autograd.Function, its block configuration, document bounds.

Imported by ``kernels/attention/__init__.py`` on the first Triton call; the kernels live in
``triton_fwd.py`` and ``triton_bwd.py``.
"""

from typing import Optional

import torch
from torch import Tensor

from kernels._opaque import compile_opaque
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


def _forward_fake(q, k, v, causal, doc_ids, scale):
    b, t_q, h, _ = q.shape
    bounds = doc_ids.new_empty(doc_ids.shape, dtype=torch.int32) if doc_ids is not None \
        else q.new_empty(0, dtype=torch.int32)
    return (q.new_empty(q.shape), q.new_empty((b, h, t_q), dtype=torch.float32), bounds,
            torch.empty_like(bounds))


@compile_opaque("flash_attention_fwd", _forward_fake)
def _forward(q: Tensor, k: Tensor, v: Tensor, causal: bool, doc_ids: Optional[Tensor],
             scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """-> (o, lse2, first, last): the document bounds are computed here, inside the opaque op,
    because finding them syncs with the host (empty int32 tensors without documents)."""
    docs = None
    if doc_ids is not None:
        docs = (doc_ids.contiguous(), *doc_bounds(doc_ids))
    o, lse2 = attention_fwd(q, k, v, causal, docs, scale, block_config(q.shape[-1], q.dtype))
    if docs is None:
        return o, lse2, q.new_empty(0, dtype=torch.int32), q.new_empty(0, dtype=torch.int32)
    return o, lse2, docs[1], docs[2]


@compile_opaque("flash_attention_bwd", lambda q, k, v, o, lse2, do, causal, doc_ids, first, last,
                scale: (torch.empty_like(q), k.new_empty(k.shape), v.new_empty(k.shape)))
def _backward(q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse2: Tensor, do: Tensor, causal: bool,
              doc_ids: Optional[Tensor], first: Tensor, last: Tensor, scale: float
              ) -> tuple[Tensor, Tensor, Tensor]:
    """-> (dq, dk, dv)."""
    docs = None if doc_ids is None else (doc_ids.contiguous(), first, last)
    return attention_bwd(q, k, v, o, lse2, do, causal, docs, scale,
                         block_config(q.shape[-1], q.dtype))


class FlashAttentionFunction(torch.autograd.Function):
    """q [B,Tq,H,D], k/v [B,Tk,Hkv,D] -> o; saves q, k, v, o and the base-2 lse."""

    @staticmethod
    def forward(ctx, q, k, v, causal, doc_ids, scale):
        q, k, v = _unit_stride(q), _unit_stride(k), _unit_stride(v)
        o, lse2, first, last = _forward(q, k, v, causal, doc_ids, scale)
        ctx.save_for_backward(q, k, v, o, lse2, doc_ids, first, last)
        ctx.causal, ctx.scale = causal, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse2, doc_ids, first, last = ctx.saved_tensors
        dq, dk, dv = _backward(q, k, v, o, lse2, _unit_stride(do), ctx.causal, doc_ids, first,
                               last, ctx.scale)
        return dq, dk, dv, None, None, None


def attention_triton(q, k, v, causal=True, doc_ids=None, softmax_scale=None):
    """Triton path of ``kernels.flash_attention`` (inputs already checked by the public op)."""
    check_dtype("flash_attention", q, k, v)
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else float(softmax_scale)
    return FlashAttentionFunction.apply(q, k, v, bool(causal), doc_ids, scale)
