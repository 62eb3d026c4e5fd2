"""ModelArgs: the concrete architecture record every model is built from.

Used by the transformer, the presets, FLOP counting, the HF adapter and recipes' heads.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmcore.errors import ConfigError


@dataclass(frozen=True)
class ModelArgs:
    """Everything that fixes the parameter shapes of a Llama-style decoder, and its dropout."""

    vocab_size: int = 32000
    d_model: int = 256
    n_layers: int = 8
    n_heads: int = 8
    n_kv_heads: int = 8
    ffn_hidden: int = 688
    max_seq_len: int = 2048
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    doc_mask: bool = True
    # 0: pretraining at scale sees each token about once, so there is nothing to regularise;
    # fine-tuning phases (early exposure's stage 2) turn it on. Training mode only.
    dropout: float = 0.0

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def num_params(self) -> int:
        """Exact parameter count (no buffers), as the model builds it."""
        d, hd = self.d_model, self.head_dim
        attn = d * self.n_heads * hd * 2 + d * self.n_kv_heads * hd * 2  # q, o, k, v
        mlp = 3 * d * self.ffn_hidden
        per_layer = attn + mlp + 2 * d  # two RMSNorm weights
        embed = self.vocab_size * d
        head = 0 if self.tie_embeddings else self.vocab_size * d
        return embed + self.n_layers * per_layer + d + head

    def validate(self) -> "ModelArgs":
        if self.d_model % self.n_heads:
            raise ConfigError(f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"model.n_heads={self.n_heads} is not divisible by model.n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"head dim {self.head_dim} must be even for RoPE")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout={self.dropout} must be in [0, 1)")
        return self
