"""The Hugging Face adapter: our weights, architecture and tokenizer <-> a LlamaForCausalLM folder.

Pure mappings (`to_hf` / `from_hf` for weights and config, the tokenizer files); the folder
handling (reading checkpoints, sharding, atomic writes) is in `llmcore.hf.folder`, which the CLI's
`export-hf` / `import-hf` call. Parameter names already follow Llama's, so weights only gain
or lose the `model.` prefix; RoPE uses the same rotate-half convention, so nothing is permuted.

The tokenizer is written as a `tokenizer.json` built here from the SentencePiece model (no
`transformers` or `protobuf` needed): a BPE with byte fallback whose merge ranks follow the
SentencePiece piece scores, a normalizer that only turns " " into "\u2581" (our identity
normalisation without a dummy prefix), and the special tokens at their ids, so `AutoTokenizer`
encodes and decodes text exactly as `llmcore.tokenizer.Tokenizer` does. One known difference:
a literal "\u2581" in the text, which our tokenizer encodes as its UTF-8 bytes and HF as a space.
"""

from __future__ import annotations

from typing import Mapping

import sentencepiece as spm
import torch

from llmcore.errors import CheckpointError, ConfigError
from llmcore.model.args import ModelArgs

HF_PREFIX = "model."
SPACE = "\u2581"


# --- weights ---------------------------------------------------------------------------------

def weight_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    """Our parameter names (no `model.` prefix; `lm_head.weight` when untied) -> shapes."""
    d, hd, f = args.d_model, args.head_dim, args.ffn_hidden
    shapes = {"embed_tokens.weight": (args.vocab_size, d), "norm.weight": (d,)}
    for i in range(args.n_layers):
        p = f"layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (args.n_heads * hd, d),
            p + "self_attn.k_proj.weight": (args.n_kv_heads * hd, d),
            p + "self_attn.v_proj.weight": (args.n_kv_heads * hd, d),
            p + "self_attn.o_proj.weight": (d, args.n_heads * hd),
            p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d),
            p + "mlp.down_proj.weight": (d, f),
        })
    if not args.tie_embeddings:
        shapes["lm_head.weight"] = (args.vocab_size, d)
    return shapes


def check_weights(weights: Mapping[str, torch.Tensor], args: ModelArgs, where: str) -> None:
    """CheckpointError naming every unknown key, missing key or wrong shape (first few of each)."""
    want = weight_shapes(args)
    unknown = sorted(set(weights) - set(want))
    missing = sorted(set(want) - set(weights))
    wrong = [f"{k} {tuple(weights[k].shape)} (config says {want[k]})"
             for k in want if k in weights and tuple(weights[k].shape) != want[k]]
    problems = []
    if unknown:
        problems.append(f"unknown keys {unknown[:5]}" + (" (lm_head.weight with tied embeddings?)"
                                                         if "lm_head.weight" in unknown else ""))
    if missing:
        problems.append(f"missing keys {missing[:5]}")
    if wrong:
        problems.append(f"shape mismatch {wrong[:3]} (head_dim {args.head_dim} = d_model "
                        f"{args.d_model} / n_heads {args.n_heads})")
    if problems:
        raise CheckpointError(f"{where}: weights do not match a LlamaForCausalLM of this config: "
                              + "; ".join(problems))


def to_hf(weights: Mapping[str, torch.Tensor], args: ModelArgs, where: str = "checkpoint") -> dict:
    """Our trunk weights -> LlamaForCausalLM names (checked against `args` first)."""
    check_weights(weights, args, where)
    return {(k if k == "lm_head.weight" else HF_PREFIX + k): v for k, v in weights.items()}


def from_hf(weights: Mapping[str, torch.Tensor], args: ModelArgs, where: str = "HF folder") -> dict:
    """LlamaForCausalLM weights -> our names. A tied model's stored `lm_head.weight` copy and
    old `rotary_emb.inv_freq` buffers are dropped; anything else unknown is an error."""
    out = {}
    for k, v in weights.items():
        if k.endswith("rotary_emb.inv_freq") or (k == "lm_head.weight" and args.tie_embeddings):
            continue
        out[k[len(HF_PREFIX):] if k.startswith(HF_PREFIX) else k] = v
    check_weights(out, args, where)
    return out


# --- config ----------------------------------------------------------------------------------

def to_hf_config(args: ModelArgs, tokenizer, dtype: torch.dtype) -> dict:
    """config.json of a LlamaForCausalLM with our architecture (doc_mask has no HF field: it
    only changes attention inside packed training windows, never for a single text)."""
    theta = float(args.rope_theta)
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": args.vocab_size, "hidden_size": args.d_model,
        "intermediate_size": args.ffn_hidden, "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads, "num_key_value_heads": args.n_kv_heads,
        "head_dim": args.head_dim, "hidden_act": "silu",
        "max_position_embeddings": args.max_seq_len, "rms_norm_eps": args.norm_eps,
        # rope_theta for transformers 4.x, rope_parameters for 5.x
        "rope_theta": theta, "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": theta},
        "tie_word_embeddings": args.tie_embeddings, "attention_bias": False,
        "attention_dropout": 0.0, "mlp_bias": False, "initializer_range": 0.02,
        "use_cache": True, "bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id, "torch_dtype": str(dtype).removeprefix("torch."),
    }


def generation_config(tokenizer) -> dict:
    return {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
            "pad_token_id": tokenizer.pad_id, "do_sample": False}


def from_hf_config(cfg: dict, where: str) -> ModelArgs:
    """ModelArgs of a Llama config.json; CheckpointError for other architectures or for Llama
    options our model does not have (biases, rope scaling, another activation, head_dim)."""
    archs = cfg.get("architectures") or []
    if cfg.get("model_type") != "llama" and "LlamaForCausalLM" not in archs:
        raise CheckpointError(f"{where}: model_type {cfg.get('model_type')!r} (architectures {archs}) "
                              "is not a Llama model; import-hf reads LlamaForCausalLM folders only")
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if not isinstance(cfg.get(key), int):
            raise CheckpointError(f"{where}: {key} is missing or not an integer ({cfg.get(key)!r})")
    rope = _rope(cfg, where)
    unsupported = {
        "hidden_act": (cfg.get("hidden_act", "silu"), ("silu", "swish")),
        "attention_bias": (cfg.get("attention_bias", False), (False,)),
        "mlp_bias": (cfg.get("mlp_bias", False), (False,)),
    }
    for key, (value, ok) in unsupported.items():
        if value not in ok:
            raise CheckpointError(f"{where}: {key}={value!r} is not supported by llmcore's model "
                                  f"(supported: {list(ok)})")
    d, h = cfg["hidden_size"], cfg["num_attention_heads"]
    if d % h or cfg.get("head_dim") not in (None, d // h):
        raise CheckpointError(f"{where}: head_dim {cfg.get('head_dim')} with hidden_size {d} and "
                              f"{h} heads: llmcore's model needs head_dim = hidden_size / heads")
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    try:
        return _args_from_hf(cfg, theta)
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: {e}") from None


def _rope(cfg: dict, where: str) -> dict:
    """The RoPE dict transformers applies, refused unless it is plain (unscaled) RoPE.

    transformers 5 reads `rope_scaling` when it is set and non-empty, else `rope_parameters`
    (its `rope_theta` defaulting to the top-level one); 4.x reads `rope_scaling` only. So a
    scaled type in either key (linear, dynamic, yarn, llama3, longrope, ...) changes what
    some transformers computes, and llmcore's model has plain RoPE only: every rope type but
    `default` is refused, from either key, naming the key."""
    found = {}
    for key in ("rope_scaling", "rope_parameters"):
        value = cfg.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise CheckpointError(f"{where}: {key} must be an object or null, got {value!r}")
        rope_type = value.get("rope_type", value.get("type", "default"))
        if rope_type != "default":
            raise CheckpointError(f"{where}: rope type={rope_type!r} is not supported by llmcore's model "
                                  f"(supported: ['default']): {key} asks for scaled RoPE, which transformers "
                                  "applies to this folder")
        found[key] = value
    return found.get("rope_scaling") or found.get("rope_parameters") or {}


def _args_from_hf(cfg: dict, theta) -> ModelArgs:
    d, h = cfg["hidden_size"], cfg["num_attention_heads"]
    return ModelArgs(
        vocab_size=cfg["vocab_size"], d_model=d, n_layers=cfg["num_hidden_layers"], n_heads=h,
        n_kv_heads=cfg.get("num_key_value_heads") or h, ffn_hidden=cfg["intermediate_size"],
        max_seq_len=cfg.get("max_position_embeddings", 2048), rope_theta=float(theta),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),  # LlamaConfig's default
        doc_mask=True).validate()  # only matters for packed training windows


# --- tokenizer -------------------------------------------------------------------------------

def _added(i: int, piece: str, special: bool) -> dict:
    return {"id": i, "content": piece, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": special}


def tokenizer_json(model_bytes: bytes, user_ids: Mapping[str, int]) -> dict:
    """tokenizer.json equivalent to our SentencePiece BPE model.

    SentencePiece BPE merges, at each step, the adjacent pair whose joined piece has the best
    score; HF BPE merges the pair of lowest rank. Ranking every split (a, b) of a piece by that
    piece's score therefore reproduces the same merges. Control, byte and user-defined pieces
    (`user_ids`: our special tokens) never merge: byte pieces serve the byte fallback;
    user-defined pieces are added tokens matched in the text before BPE, as SentencePiece
    matches them; control pieces are (special) added tokens that text never produces.
    """
    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    n = sp.get_piece_size()
    pieces = [sp.id_to_piece(i) for i in range(n)]
    user = set(user_ids.values())
    control = {i for i in range(n) if sp.is_control(i) or sp.is_unknown(i)}
    mergeable = {pieces[i] for i in range(n)
                 if not (i in control or i in user or sp.is_byte(i) or sp.is_unused(i))}
    vocab = {p: i for i, p in enumerate(pieces)}
    ranked = sorted((i for i in range(n) if pieces[i] in mergeable and len(pieces[i]) > 1),
                    key=lambda i: (-sp.get_score(i), i))
    merges = []
    for i in ranked:
        p = pieces[i]
        merges += [[p[:k], p[k:]] for k in range(1, len(p)) if p[:k] in mergeable and p[k:] in mergeable]
    if not any(" " in a or " " in b for a, b in merges):
        merges = [f"{a} {b}" for a, b in merges]  # the older string form every tokenizers reads
    added = [_added(i, pieces[i], True) for i in sorted(control)]
    added += [_added(i, pieces[i], False) for i in sorted(user)]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": SPACE},
        "pre_tokenizer": None, "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": pieces[sp.unk_id()],
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }


def tokenizer_config(tokenizer, max_len: int) -> tuple[dict, dict]:
    """(tokenizer_config.json, special_tokens_map.json).

    `PreTrainedTokenizerFast` loads tokenizer.json as written under transformers 4 and 5
    (`LlamaTokenizer` would rebuild it and, in 4.x, needs protobuf to do so). No bos is added,
    matching how our data is tokenized (documents end with eos), and `split_special_tokens`
    makes "<s>" typed in text encode as characters, as SentencePiece does.
    """
    piece = tokenizer.id_to_piece
    names = {"bos_token": piece(tokenizer.bos_id), "eos_token": piece(tokenizer.eos_id),
             "unk_token": piece(tokenizer.unk_id), "pad_token": piece(tokenizer.pad_id)}
    control = sorted({tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id})
    decoder = {str(i): {k: v for k, v in _added(i, piece(i), True).items() if k != "id"} for i in control}
    decoder.update({str(i): {k: v for k, v in _added(i, piece(i), False).items() if k != "id"}
                    for i in sorted(tokenizer.special_ids.values())})
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **names,
              "add_bos_token": False, "add_eos_token": False, "add_prefix_space": False,
              "legacy": False, "clean_up_tokenization_spaces": False,
              "split_special_tokens": True, "model_max_length": max_len,
              "padding_side": "left", "added_tokens_decoder": decoder}
    return config, names
