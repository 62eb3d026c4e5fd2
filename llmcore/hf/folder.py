"""`export-hf` and `import-hf`: checkpoint folder <-> Hugging Face LlamaForCausalLM folder.

Used by the CLI and by Python callers. The mappings themselves are in `llmcore.hf.convert`; this
module reads and writes the folders. Both directions check everything before writing, build
the output in a temporary folder beside the target and rename it into place at the end, so a
failure never leaves a half-written folder or touches an existing one.

A checkpoint's `model.safetensors` always holds the consolidated weights (the checkpoint
writer gathers ZeRO-3 shards before saving), so export reads the same file for every backend.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from llmcore.errors import CheckpointError, ConfigError, LlmcoreError
from llmcore.fsutil import check_output_dir, write_dir_atomically
from llmcore.hf import convert as hf
from llmcore.hf import model_card
from llmcore.model.transformer import Transformer
from llmcore.tokenizer import MODEL_FILE, SPECIALS_FILE, Tokenizer
from llmcore.tokenizer_hf import BACKEND as HF_BACKEND
from llmcore.tokenizer_hf import HF_FILE, HFTokenizer, is_hf_folder, is_llmcore_folder
from llmcore.train import checkpoint

log = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size: int | str) -> int:
    """Bytes from 123, "500MB", "2GB" (powers of 10, as Hugging Face counts) or "1GiB"."""
    if isinstance(size, int) and size > 0:
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(size))
    if not m or m.group(2).upper() not in _UNITS or float(m.group(1)) <= 0:
        raise ConfigError(f"max_shard_size={size!r} is not a size like 2GB, 500MB or 1GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


# --- export ----------------------------------------------------------------------------------

def export_hf(checkpoint_path: str, out_dir: str, *, max_shard_size: int | str = "2GB",
              dtype: str | torch.dtype | None = None, overwrite: bool = False) -> Path:
    """Write a LlamaForCausalLM folder from one of our checkpoints; returns its path.

    The folder holds config.json, generation_config.json, model.safetensors (or shards of at
    most `max_shard_size` plus model.safetensors.index.json), the tokenizer (tokenizer.json,
    tokenizer_config.json, special_tokens_map.json, tokenizer.model, special_tokens.json) and
    a README.md model card (`llmcore.hf.model_card`).
    `dtype` casts the weights (default: as stored). Recipe aux heads are dropped (logged).
    CheckpointError if the checkpoint is not a model LlamaForCausalLM can represent; an
    existing non-empty `out_dir` is refused unless `overwrite`.
    """
    ckpt = checkpoint.resolve(checkpoint_path)
    out = check_output_dir(out_dir, overwrite, CheckpointError)
    shard_bytes, cast = parse_size(max_shard_size), parse_dtype(dtype)
    tok_dir = ckpt / "tokenizer"
    if not (tok_dir / MODEL_FILE).is_file() and not is_hf_folder(str(tok_dir)):
        raise CheckpointError(f"{ckpt} has no tokenizer ({tok_dir / MODEL_FILE} or {tok_dir / HF_FILE} "
                              "is missing): an HF folder needs one")
    tokenizer = Tokenizer.load(str(tok_dir))
    args = checkpoint.model_args(ckpt, tokenizer.vocab_size)
    full = checkpoint.load_verified_weights(ckpt)
    trunk = {k[len("model."):]: v for k, v in full.items() if k.startswith("model.")}
    aux = sorted(k[len("aux."):] for k in full if k.startswith("aux."))
    weights = hf.to_hf(trunk, args, str(ckpt / "model.safetensors"))
    if tokenizer.vocab_size > args.vocab_size:
        raise CheckpointError(f"{ckpt}: tokenizer has {tokenizer.vocab_size} tokens but the "
                              f"model only {args.vocab_size} embeddings")
    if aux:
        log.warning("export-hf: dropping recipe aux weights %s (LlamaForCausalLM has no place for "
                    "them; generation does not use them)", aux[:5])
    if args.doc_mask:
        log.info("export-hf: doc_mask has no LlamaConfig field; it only masks attention across "
                 "documents of packed training windows, so single texts are unaffected")
    if cast is not None:
        weights = {k: v.to(cast) for k, v in weights.items()}
    stored = next(iter(weights.values())).dtype
    card = model_card.render(ckpt, args, checkpoint.read_state(ckpt), (ckpt / "config.yaml").read_text(),
                             tokenizer.vocab_size, str(stored).removeprefix("torch."))

    def write(tmp: Path) -> None:
        _write_weights(tmp, weights, shard_bytes)
        (tmp / model_card.FILE).write_text(card)
        _write_json(tmp / "config.json", hf.to_hf_config(args, tokenizer, stored))
        _write_json(tmp / "generation_config.json", hf.generation_config(tokenizer))
        if tokenizer.backend == HF_BACKEND:  # the HF tokenizer as trained with, recipe tokens placed
            tokenizer.save(str(tmp / "tokenizer"))
            for name in os.listdir(tmp / "tokenizer"):
                os.replace(tmp / "tokenizer" / name, tmp / name)
            os.rmdir(tmp / "tokenizer")
            config, names = tokenizer.hf_config(args.max_seq_len)
            _write_json(tmp / "tokenizer_config.json", config)
            return
        _write_json(tmp / "tokenizer.json", hf.tokenizer_json(tokenizer.model_bytes, tokenizer.special_ids))
        config, names = hf.tokenizer_config(tokenizer, args.max_seq_len)
        _write_json(tmp / "tokenizer_config.json", config)
        _write_json(tmp / "special_tokens_map.json", names)
        # our own tokenizer files too, so import-hf restores the exact tokenizer folder
        for name in (MODEL_FILE, SPECIALS_FILE):
            shutil.copyfile(tok_dir / name, tmp / name)

    write_dir_atomically(out, write)
    log.info("export-hf: %s -> %s (%s, %d tensors)", ckpt, out, stored, len(weights))
    return out


def _shards(weights: dict[str, torch.Tensor], limit: int) -> list[dict[str, torch.Tensor]]:
    """Consecutive groups of at most `limit` bytes (a larger tensor gets a shard of its own)."""
    groups: list[dict] = [{}]
    size = 0
    for name in sorted(weights, key=_natural):
        nbytes = weights[name].numel() * weights[name].element_size()
        if groups[-1] and size + nbytes > limit:
            groups.append({})
            size = 0
        groups[-1][name] = weights[name]
        size += nbytes
    return groups


def _natural(name: str) -> list:
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", name)]


def _write_weights(tmp: Path, weights: dict[str, torch.Tensor], limit: int) -> None:
    groups = _shards(weights, limit)
    meta = {"format": "pt"}  # transformers checks this metadata entry
    if len(groups) == 1:
        save_file({k: v.contiguous() for k, v in groups[0].items()}, str(tmp / "model.safetensors"), meta)
        return
    weight_map, total = {}, 0
    for i, group in enumerate(groups, start=1):
        name = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file({k: v.contiguous() for k, v in group.items()}, str(tmp / name), meta)
        for k, v in group.items():
            weight_map[k] = name
            total += v.numel() * v.element_size()
    _write_json(tmp / INDEX_FILE, {"metadata": {"total_size": total}, "weight_map": weight_map})


# --- import ----------------------------------------------------------------------------------

def import_hf(model_dir: str, out_dir: str, *, overwrite: bool = False) -> Path:
    """Write one of our checkpoint folders from a Llama-architecture HF folder; returns its path.

    The result (model.safetensors with our names, config.yaml whose `model` section sets the
    preset and every architecture field, tokenizer/ when the HF folder has a SentencePiece
    tokenizer.model our Tokenizer can load, state.json at step 0) works with `llmcore.load`
    and `train.init_from`. CheckpointError for a non-Llama or unsupported config, missing or
    unreadable weight files, or weights that do not match the config.
    """
    src = Path(model_dir)
    cfg_path = src / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{src} is not a Hugging Face model folder ({cfg_path} is missing)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{cfg_path} is unreadable: {e}") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path} is not a model config: expected a JSON object, got a JSON "
                              f"{type(cfg).__name__}")
    args = hf.from_hf_config(cfg, str(cfg_path))
    check_output_dir(out_dir, overwrite, CheckpointError)
    weights = hf.from_hf(_read_hf_weights(src), args, str(src))
    tokenizer = _hf_tokenizer(src)
    if tokenizer is not None and tokenizer.backend == HF_BACKEND and tokenizer.vocab_size > args.vocab_size:
        weights, args = _grow_vocab(weights, args, tokenizer, src)
    if tokenizer is not None and tokenizer.vocab_size > args.vocab_size:
        raise CheckpointError(f"{src}: tokenizer.model has {tokenizer.vocab_size} tokens but "
                              f"config.json vocab_size is {args.vocab_size}")
    with torch.device("meta"):  # no random init of weights about to be replaced (8B on a CPU)
        model = Transformer(args)
    model.load_state_dict(weights, assign=True)  # keeps the folder's dtype
    out = checkpoint.save_model(model, tokenizer, out_dir, overwrite=overwrite,
                                extra_state={"imported_from": str(src.resolve())})
    log.info("import-hf: %s -> %s (%d tensors%s)", src, out, len(weights),
             "" if tokenizer is not None else ", no tokenizer")
    return out


def _read_hf_weights(src: Path) -> dict[str, torch.Tensor]:
    index = src / INDEX_FILE
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise CheckpointError(f"{index} is unreadable: {e}") from None
    elif (src / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        other = [p.name for p in src.glob("*.bin")]
        hint = f" (found {other}: only safetensors weights are read)" if other else ""
        raise CheckpointError(f"{src} has no model.safetensors or {INDEX_FILE}{hint}")
    weights = {}
    for name in files:
        path = src / name
        if not path.is_file():
            raise CheckpointError(f"weight shard {path} listed in {index} is missing")
        try:
            with safe_open(str(path), framework="pt") as f:
                weights.update({k: f.get_tensor(k) for k in f.keys()})
        except Exception as e:  # safetensors raises its own types for corrupt headers
            raise CheckpointError(f"{path}: cannot read weights ({e})") from None
    return weights


def _grow_vocab(weights: dict[str, torch.Tensor], args, tokenizer, src: Path):
    """Embedding (and untied lm_head) rows for the special tokens appended to the vocabulary:
    each new row is the mean of the existing ones (a neutral start that training moves)."""
    import dataclasses

    old, new = args.vocab_size, tokenizer.vocab_size
    grown = dict(weights)
    for name in ("embed_tokens.weight", "lm_head.weight"):
        if name in grown:
            w = grown[name]
            grown[name] = torch.cat([w, w.float().mean(0, keepdim=True).to(w.dtype).expand(new - old, -1)])
    added = [t for t, i in tokenizer.special_ids.items() if i >= old]
    log.warning("import-hf: resized the embedding%s of %s from %d to %d rows for the special tokens %s "
                "(no reserved token was free for them; new rows = the mean embedding)",
                "" if args.tie_embeddings else " and lm_head", src, old, new, added)
    return grown, dataclasses.replace(args, vocab_size=new)


def _hf_tokenizer(src: Path) -> Tokenizer | HFTokenizer | None:
    """Our Tokenizer from an HF folder's tokenizer.model (+ our special_tokens.json when the
    folder came from export-hf), or its tokenizer.json (the HF tokenizers backend, with the
    recipes' special tokens placed); None, with a warning, when there is none we can represent."""
    model = src / MODEL_FILE
    if not model.is_file() and (src / HF_FILE).is_file():
        if is_llmcore_folder(str(src)):
            return HFTokenizer.load(str(src))  # exported by llmcore: exactly as trained
        from llmcore.recipe.registry import all_special_tokens

        return HFTokenizer.from_hf_folder(str(src), all_special_tokens())
    if not model.is_file():
        log.warning("import-hf: %s has no SentencePiece %s; the checkpoint gets no tokenizer/ "
                    "(add one before llmcore.load)", src, MODEL_FILE)
        return None
    if (src / SPECIALS_FILE).is_file():
        return Tokenizer.load(str(src))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            # saving and loading back runs the Tokenizer's own checks of the control pieces
            Tokenizer(model.read_bytes(), _control_ids(model.read_bytes())).save(tmp, overwrite=True)
            return Tokenizer.load(tmp)
    except (LlmcoreError, RuntimeError, KeyError) as e:
        log.warning("import-hf: %s cannot be used as an llmcore tokenizer (%s); the checkpoint "
                    "gets no tokenizer/", model, e)
        return None


def _control_ids(model_bytes: bytes) -> dict[str, int]:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    ids = {"unk": sp.unk_id(), "bos": sp.bos_id(), "eos": sp.eos_id(), "pad": sp.pad_id()}
    return {k: v for k, v in ids.items() if v >= 0}


# --- folders ---------------------------------------------------------------------------------

def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
