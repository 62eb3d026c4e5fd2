"""Auxiliary heads of the future-summary recipe, built on llmcore's own transformer layer.

Used by `recipes.future_summary` through the `modules` hook (trained, saved to
`aux.safetensors` and sharded with the model; never part of the exported trunk).

- `HeadLayer`: one `llmcore.model.transformer.Block` plus its own final RMSNorm, reading the trunk's
  final hidden states: an MTP head (Gloeckle et al.), the FSP head.
- `FutureHeads`: K parallel head layers (MTP, FSP), or D sequential DeepSeek-V3 MTP modules
  (merge [RMSNorm(h); RMSNorm(Emb(x_{t+k}))] with a 2d -> d projection, then a layer), plus
  the FSP-RevLM projection to the reverse LM's width. Every head unembeds through the
  trunk's shared output weight, so no head owns a vocabulary matrix.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from llmcore.model.args import ModelArgs
from llmcore.model.transformer import Block, RMSNorm


class HeadLayer(nn.Module):
    """One transformer layer and a final RMSNorm: (B, T, d) -> (B, T, d)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.block = Block(args)
        self.norm = RMSNorm(args.d_model, args.norm_eps)

    def forward(self, x, cos, sin, doc_ids=None):
        return self.norm(self.block(x, cos, sin, doc_ids))


class FutureHeads(nn.Module):
    """The aux heads of one run. `kind` is mtp | ds_mtp | fsp_bce | fsp_revlm; `n` the number
    of heads (mtp) or sequential depth (ds_mtp), 1 otherwise; `out_dim` the reverse LM width."""

    def __init__(self, args: ModelArgs, kind: str, n: int = 1, out_dim: int | None = None):
        super().__init__()
        self.kind = kind
        d = args.d_model
        self.heads = nn.ModuleList(HeadLayer(args) for _ in range(n))
        if kind == "ds_mtp":
            self.merge = nn.ModuleList(nn.Linear(2 * d, d, bias=False) for _ in range(n))
            self.norm_h = nn.ModuleList(RMSNorm(d, args.norm_eps) for _ in range(n))
            self.norm_e = nn.ModuleList(RMSNorm(d, args.norm_eps) for _ in range(n))
        if kind == "fsp_revlm":
            self.proj = nn.Linear(d, out_dim, bias=False)
        self.reset_parameters(args.n_layers)

    def reset_parameters(self, trunk_layers: int) -> None:
        """The trunk's init (llmcore.model.transformer.Transformer.reset_parameters): N(0, 0.02), norms
        at 1, residual output projections scaled by 1/sqrt(2L) with L the trunk's depth."""
        std = 0.02
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)  # every 1-D parameter here is an RMSNorm gain
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * trunk_layers))
            else:
                nn.init.normal_(p, 0.0, std)

    def parallel(self, h, cos, sin, doc_ids=None) -> torch.Tensor:
        """Every head on the trunk's hidden states h (B, T, d) -> (K, B, T, d)."""
        return torch.stack([head(h, cos, sin, doc_ids) for head in self.heads])

    def sequential(self, h, input_ids, embed: nn.Embedding, cos, sin, doc_ids=None) -> torch.Tensor:
        """DeepSeek-V3 MTP: depth k (1-based) at t reads depth k-1's state and Emb(x_{t+k})
        and feeds the unembedding that predicts x_{t+k+1}. (B, T, d) -> (D, B, T, d).

        Positions t + k >= T have no x_{t+k} in the window: they read token 0 and take no loss
        (their target is past the window too); causal attention keeps them from earlier t.
        """
        B, T = input_ids.shape
        outs, prev = [], h
        for k, head in enumerate(self.heads, start=1):
            ahead = torch.zeros_like(input_ids)
            ahead[:, :max(T - k, 0)] = input_ids[:, k:]
            e = embed(ahead)  # (B, T, d), the trunk's embedding (shared, as in DeepSeek-V3)
            u = self.merge[k - 1](torch.cat([self.norm_h[k - 1](prev), self.norm_e[k - 1](e)], dim=-1))
            prev = head.block(u, cos, sin, doc_ids)
            outs.append(head.norm(prev))
        return torch.stack(outs)
