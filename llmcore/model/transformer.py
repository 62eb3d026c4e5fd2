"""The Llama-style decoder: RMSNorm, RoPE, SwiGLU, grouped-query attention, document masking.

Single-device code; data/model parallelism is applied from outside by `llmcore.engine`.
Parameter names follow Hugging Face's LlamaForCausalLM (`layers.0.self_attn.q_proj.weight`)
so export is a prefix change, not a permutation. Training calls `model(ids, doc_ids)` and gets
hidden states; the loss multiplies them with `output_weight` inside the fused cross-entropy,
so [B, T, vocab] logits exist only in generation (`model.logits`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import kernels
from llmcore.model.args import ModelArgs
from llmcore.model.kv_cache import KVCache


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.rms_norm(x, self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.q_proj = nn.Linear(args.d_model, args.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(args.d_model, args.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(args.d_model, args.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(args.n_heads * self.head_dim, args.d_model, bias=False)

    def forward(self, x, cos, sin, doc_ids=None, cache: KVCache | None = None, key_mask=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)  # (B, T, H, D)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, Hkv, D)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        q, k = kernels.apply_rope(q, k, cos, sin, inplace=True)  # fresh projections: no copy
        if cache is None:
            y = kernels.flash_attention(q, k, v, causal=True, doc_ids=doc_ids)
        else:
            y = self._cached_attention(q, k, v, cache, key_mask)
        return self.o_proj(y.reshape(B, T, -1))

    def _cached_attention(self, q, k, v, cache: KVCache, key_mask):
        # Decoding only (not the training hot path): an explicit mask over the cache covers
        # causality and left padding of batched prompts of different lengths.
        start = cache.length
        k, v = cache.append(k, v)  # (B, S, Hkv, D)
        T, S = q.shape[1], k.shape[1]
        qpos = torch.arange(start, start + T, device=q.device)[:, None]
        kpos = torch.arange(S, device=q.device)[None, :]
        # A pad query still sees itself: a row with no visible key gives NaN on some GPU
        # backends, and NaN leaks into real tokens through 0 * NaN in the values.
        mask = (qpos >= kpos)[None, None] & (key_mask[:, None, None, :S] | (qpos == kpos)[None, None])  # (B, 1, T, S)
        rep = self.n_heads // self.n_kv_heads
        k = k.repeat_interleave(rep, dim=2)
        v = v.repeat_interleave(rep, dim=2)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        return y.transpose(1, 2)  # (B, T, H, D)


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.gate_proj = nn.Linear(args.d_model, args.ffn_hidden, bias=False)
        self.up_proj = nn.Linear(args.d_model, args.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(args.ffn_hidden, args.d_model, bias=False)

    def forward(self, x):
        return self.down_proj(kernels.swiglu(self.gate_proj(x), self.up_proj(x)))


class Block(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.input_layernorm = RMSNorm(args.d_model, args.norm_eps)
        self.self_attn = Attention(args)
        self.post_attention_layernorm = RMSNorm(args.d_model, args.norm_eps)
        self.mlp = MLP(args)

    def forward(self, x, cos, sin, doc_ids=None, cache=None, key_mask=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, doc_ids, cache, key_mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    """Decoder-only LM. `forward` returns final-norm hidden states (B, T, d_model)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.d_model)
        self.layers = nn.ModuleList(Block(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.d_model, args.norm_eps)
        self.lm_head = None if args.tie_embeddings else nn.Linear(args.d_model, args.vocab_size, bias=False)
        inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, args.head_dim, 2, dtype=torch.float64) / args.head_dim))
        # Not persistent: derived from args, so checkpoints carry weights only.
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 / OLMo style init: N(0, 0.02), residual output projections scaled by 1/sqrt(2L)
        so the residual stream's variance does not grow with depth."""
        std = 0.02
        for name, p in self.named_parameters():
            if name.endswith("layernorm.weight") or name == "norm.weight":
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.args.n_layers))
            else:
                nn.init.normal_(p, 0.0, std)

    @property
    def output_weight(self) -> torch.Tensor:
        """The unembedding matrix (vocab, d_model): tied to the embedding or lm_head's."""
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def compile_blocks(self, fullgraph: bool = True) -> None:
        """torch.compile every block in place (torchtitan's granularity): one graph serves
        every layer, and the parameter names, hence checkpoints, stay those of the plain
        model. The kernels are opaque custom ops to the compiler, so a block is one graph
        (``fullgraph``) unless hooks around it (DeepSpeed ZeRO-3) must stay outside."""
        for layer in self.layers:
            layer.compile(fullgraph=fullgraph)

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (*positions.shape, head_dim // 2), computed in fp32."""
        angles = positions.float()[..., None] * self.inv_freq
        return angles.cos(), angles.sin()

    def forward(self, input_ids: torch.Tensor, doc_ids: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, caches: list[KVCache] | None = None,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T) -> hidden states (B, T, d_model).

        doc_ids (B, T): tokens attend only within their document (when args.doc_mask).
        positions (T,) or (B, T): RoPE positions; default 0..T-1 (decoding passes its own).
        caches / key_mask: incremental decoding (see llmcore.generate).
        """
        B, T = input_ids.shape
        if positions is None:
            positions = torch.arange(T, device=input_ids.device)
        cos, sin = self.rope(positions)
        if not self.args.doc_mask:
            doc_ids = None
        x = self.embed_tokens(input_ids)  # (B, T, d)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, doc_ids, caches[i] if caches is not None else None, key_mask)
        return self.norm(x)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states (..., d_model) -> logits (..., vocab), in fp32."""
        return F.linear(h, self.output_weight).float()

    def new_caches(self, batch: int, max_len: int) -> list[KVCache]:
        p = self.embed_tokens.weight
        return [KVCache(batch, max_len, self.args.n_kv_heads, self.args.head_dim, p.dtype, p.device)
                for _ in range(self.args.n_layers)]
