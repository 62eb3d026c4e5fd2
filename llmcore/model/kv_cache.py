"""The per-layer key/value cache of incremental decoding (prefill once, then one token a step).

Used by the transformer's attention and by `llmcore.generate`.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class KVCache(nn.Module):
    """Keys and values of one layer for incremental decoding; `doc` marks real (1) vs pad (0)."""

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
