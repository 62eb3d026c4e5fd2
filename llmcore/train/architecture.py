"""Does a checkpoint hold weights of this run's architecture? Checked before any weight is loaded.

Used by the Trainer on resume (`train.out_dir/latest`) and on `train.init_from`, so another
preset (or another size override) is refused by name instead of surfacing as PyTorch's
size-mismatch traceback. Only the fields that size a weight are compared: a run may change
`max_seq_len`, `rope_theta`, `norm_eps`, `dropout` or `doc_mask` on purpose (longer context,
dropout for a fine-tune); whether a resume may change them is the resume's own config check.
"""

from __future__ import annotations

from pathlib import Path

from llmcore.errors import CheckpointError
from llmcore.model.args import ModelArgs
from llmcore.tokenizer import Tokenizer
from llmcore.train import checkpoint

SHAPE_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden", "tie_embeddings")
"""The ModelArgs fields that determine the trunk's weight names and shapes."""


def saved_model_args(ckpt: Path, default_vocab: int) -> ModelArgs:
    """The architecture in `ckpt/config.yaml`; a `vocab_size` left to the tokenizer is the
    checkpoint's own tokenizer's (`default_vocab` when it has none)."""
    tok = ckpt / "tokenizer"
    vocab = Tokenizer.load(str(tok)).vocab_size if tok.is_dir() else default_vocab
    return checkpoint.model_args(ckpt, vocab)


def check_architecture(ckpt: Path, run: ModelArgs, run_preset: str, *, action: str = "resume") -> None:
    """CheckpointError naming the checkpoint's preset, this run's preset and every differing
    shape field (`d_model 128 -> 192`) when `ckpt` cannot be loaded into a model of `run`."""
    saved = saved_model_args(ckpt, run.vocab_size)
    diff = [f"{f} {getattr(saved, f)} -> {getattr(run, f)}" for f in SHAPE_FIELDS
            if getattr(saved, f) != getattr(run, f)]
    if not diff:
        return
    saved_preset = (checkpoint.saved_config(ckpt).get("model") or {}).get("preset", "tiny")
    raise CheckpointError(
        f"cannot {action} from {ckpt}: it holds model preset {saved_preset!r}, this run builds preset "
        f"{run_preset!r} and the shapes differ ({', '.join(diff)}, checkpoint -> run); set the run's "
        f"model section to the checkpoint's (model.preset={saved_preset} and its overrides, in "
        f"{ckpt / 'config.yaml'})" + (" or use a new train.out_dir" if action == "resume" else ""))
