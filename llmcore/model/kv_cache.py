"""The per-layer key/value cache of incremental decoding (prefill once, then one token a step).

Used by the transformer's attention and by `llmcore.generate` (sampling appends; beam search
also reorders rows by parent beam and copies rows for its one-token lookahead).
"""

from __future__ import annotations

import torch
import torch.nn as nn


class KVCache(nn.Module):
    """Keys and values of one layer for incremental decoding: k, v (B, max_len, Hkv, D), the
    first `length` positions filled."""

    def __init__(self, batch: int, max_len: int, n_kv_heads: int, head_dim: int, dtype, device):
        super().__init__()
        self.register_buffer("k", torch.zeros(batch, max_len, n_kv_heads, head_dim, dtype=dtype, device=device))
        self.register_buffer("v", torch.zeros(batch, max_len, n_kv_heads, head_dim, dtype=dtype, device=device))
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = k.shape[1]
        self.k[:, self.length:self.length + t] = k
        self.v[:, self.length:self.length + t] = v
        self.length += t
        return self.k[:, :self.length], self.v[:, :self.length]

    def select(self, index: torch.Tensor) -> "KVCache":
        """A new cache whose row r is a copy of row index[r] of this one; index (B',) long, any
        B' (rows may repeat: one prompt's prefill fans out to every beam). Only the filled
        `length` positions are copied."""
        _, S, H, D = self.k.shape
        out = KVCache(len(index), S, H, D, self.k.dtype, self.k.device)
        n = out.length = self.length
        out.k[:, :n] = self.k[index, :n]
        out.v[:, :n] = self.v[index, :n]
        return out

    def reorder(self, index: torch.Tensor) -> None:
        """In place: row r becomes old row index[r] (beam search's step: each kept beam takes
        its parent's keys and values, nothing is recomputed). index (B',) long."""
        picked = self.select(index)
        self.k, self.v = picked.k, picked.v
