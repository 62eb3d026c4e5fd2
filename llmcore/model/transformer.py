"""The Llama-style decoder: RMSNorm, RoPE, SwiGLU, grouped-query attention, document masking.

Single-device code; data/model parallelism is applied from outside by `llmcore.engine`.
Parameter names follow Hugging Face's LlamaForCausalLM (`layers.0.self_attn.q_proj.weight`)
so export is a prefix change, not a permutation. Training calls `model(ids, doc_ids)` and gets
hidden states; the loss multiplies them with `output_weight` inside the fused cross-entropy,
so [B, T, vocab] logits exist only in generation (`model.logits`).

`args.dropout` > 0 drops attention probabilities and each residual branch's output in
training mode only; at 0 no dropout op runs (so no random numbers are drawn and the forward
is exactly the dropout-free one). `return_layers` hands back residual-stream states of chosen
layers (abliteration's refusal direction, steering).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

import kernels
from llmcore.model.args import ModelArgs
from llmcore.model.kv_cache import KVCache

INIT_STD = 0.02
"""GPT-2's init std for the embedding and the block matrices (see Transformer.init_std)."""


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.rms_norm(x, self.weight, self.eps)


def _dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    # Not F.dropout(x, 0.0): skipping the call keeps p = 0 free of any random draw, so a run
    # without dropout keeps the RNG stream (and hence every later sample) of a model without it.
    return F.dropout(x, p, training=True) if training and p > 0.0 else x


def _sdpa(q, k, v, mask=None, is_causal=False, dropout_p=0.0) -> torch.Tensor:
    """PyTorch attention over (B, T, H, D) queries and (B, S, Hkv, D) keys/values -> (B, T, H, D).

    mask: bool (B or 1, 1, T, S), True where a query may see a key. Grouped kv heads are
    repeated (query head h reads kv head h // (H // Hkv), the Llama order).
    """
    rep = q.shape[2] // k.shape[2]
    k = k.repeat_interleave(rep, dim=2)
    v = v.repeat_interleave(rep, dim=2)
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p)
    return y.transpose(1, 2)  # (B, T, H, D)


def dropout_attention(q, k, v, doc_ids: torch.Tensor | None, dropout_p: float) -> torch.Tensor:
    """Causal (and document-masked) attention with dropout on the probabilities, for training.

    q (B, T, H, D), k/v (B, T, Hkv, D), doc_ids (B, T) or None -> (B, T, H, D); the same masks
    as `kernels.flash_attention(q, k, v, causal=True, doc_ids=doc_ids)`. The fused kernel has
    no dropout, so this is PyTorch's SDPA with a dense (B, 1, T, T) mask when documents are
    masked: slower and O(T^2) memory, the price of attention dropout.
    """
    if doc_ids is None:
        return _sdpa(q, k, v, is_causal=True, dropout_p=dropout_p)
    T = q.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    mask = (doc_ids[:, :, None] == doc_ids[:, None, :]) & causal  # (B, T, T)
    return _sdpa(q, k, v, mask=mask[:, None], dropout_p=dropout_p)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.dropout = args.dropout
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
        if cache is not None:
            y = self._cached_attention(q, k, v, cache, key_mask)
        elif self.training and self.dropout > 0.0:
            y = dropout_attention(q, k, v, doc_ids, self.dropout)
        else:
            y = kernels.flash_attention(q, k, v, causal=True, doc_ids=doc_ids)
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
        return _sdpa(q, k, v, mask=mask)


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
        self.dropout = args.dropout

    def forward(self, x, cos, sin, doc_ids=None, cache=None, key_mask=None):
        a = self.self_attn(self.input_layernorm(x), cos, sin, doc_ids, cache, key_mask)
        x = x + _dropout(a, self.dropout, self.training)
        return x + _dropout(self.mlp(self.post_attention_layernorm(x)), self.dropout, self.training)


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
        """GPT-2 / OLMo style init (see `init_std`); the norm gains start at 1."""
        for name, p in self.named_parameters():
            std = self.init_std(name)
            if std is None:
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, 0.0, std)

    def init_std(self, name: str) -> float | None:
        """The std `reset_parameters` draws parameter `name` from: 0.02, and 0.02 / sqrt(2L) for
        the residual output projections (o_proj, down_proj) so the residual stream's variance
        does not grow with depth; None for the norm gains (ones, not drawn). One owner of the
        rule: weight-noise laws relative to the init std read it here."""
        if name.endswith("layernorm.weight") or name == "norm.weight":
            return None
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            return INIT_STD / math.sqrt(2 * self.args.n_layers)
        return INIT_STD

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
                key_mask: torch.Tensor | None = None, return_layers: Sequence[int] | None = None):
        """input_ids (B, T) -> hidden states (B, T, d_model).

        doc_ids (B, T): tokens attend only within their document (when args.doc_mask).
        positions (T,) or (B, T): RoPE positions; default 0..T-1 (decoding passes its own).
        caches / key_mask: incremental decoding (see llmcore.generate).
        return_layers: indices into the n_layers + 1 residual-stream states, 0 the embedding
            output and i the state after block i (before the final norm, which only the
            returned `h` gets); negative indices count from the end as in Python (-1: after the
            last block). Given, the return is `(h, {i: (B, T, d_model) for i in return_layers})`
            keyed by the indices as passed. The states are the residual stream because that is
            what abliteration projects out and steering adds to; a copy is not taken, so they
            carry gradients like `h` does.
        """
        B, T = input_ids.shape
        if positions is None:
            positions = torch.arange(T, device=input_ids.device)
        cos, sin = self.rope(positions)
        if not self.args.doc_mask:
            doc_ids = None
        wanted = self._layer_indices(return_layers) if return_layers is not None else {}
        keep = set(wanted.values())  # hold only the asked-for states, not all L + 1
        x = self.embed_tokens(input_ids)  # (B, T, d)
        states = {0: x} if 0 in keep else {}
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, doc_ids, caches[i] if caches is not None else None, key_mask)
            if i + 1 in keep:
                states[i + 1] = x
        h = self.norm(x)
        if return_layers is None:
            return h
        return h, {i: states[j] for i, j in wanted.items()}

    def _layer_indices(self, return_layers: Sequence[int]) -> dict[int, int]:
        """Requested index -> position in [embedding, block 1, ..., block L]; ValueError if out of range."""
        n = self.args.n_layers + 1
        out = {}
        for i in return_layers:
            if not isinstance(i, int) or not -n <= i < n:
                raise ValueError(f"return_layers: {i!r} is not a layer index in [{-n}, {n - 1}] "
                                 f"(0 = embedding output, {n - 1} = after the last block)")
            out[i] = i % n
        return out

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states (..., d_model) -> logits (..., vocab), in fp32."""
        return F.linear(h, self.output_weight).float()

    def new_caches(self, batch: int, max_len: int) -> list[KVCache]:
        p = self.embed_tokens.weight
        return [KVCache(batch, max_len, self.args.n_kv_heads, self.args.head_dim, p.dtype, p.device)
                for _ in range(self.args.n_layers)]
