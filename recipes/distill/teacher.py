"""The distillation teacher: load it (an llmcore checkpoint or a Hugging Face Llama folder),
check its vocabulary against the student's, and name it.

Used by the `distill` recipe (its frozen module) and by `llmcore distill cache`. An HF folder
goes through `llmcore.hf.folder.import_hf` into a temporary checkpoint (the same conversion as
`llmcore import-hf`), so both kinds load through `llmcore.load`.

Vocabularies are compared through the tokenizers, never guessed: the teacher must carry the
student's tokenizer (same sha256 of the SentencePiece model and special-token ids). Model
output widths may still differ by padding (e.g. 32000 real ids padded to 32128): then both
output weights are sliced to the tokenizer's real vocabulary for the KD term (`kd_vocab`),
and the CE term keeps the student's full width when they agree.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import torch

import llmcore
from llmcore.data.shards import sha256_file
from llmcore.errors import CheckpointError, ConfigError
from llmcore.hf.folder import import_hf
from llmcore.train import checkpoint


def is_hf_folder(path: str) -> bool:
    p = Path(path)
    return (p / "config.json").is_file() and not (p / "state.json").is_file() and not (p / "latest").is_file()


def load_teacher(path: str, key: str = "distill.teacher"):
    """(model in eval mode on the CPU, frozen; its tokenizer or None) of checkpoint, run dir or
    HF Llama folder `path`. ConfigError naming `key` when there is nothing loadable there."""
    if not path:
        raise ConfigError(f"{key} is empty: name a checkpoint, a run dir or a Hugging Face Llama folder")
    # Loading builds a randomly initialised model first: keep the run's RNG stream untouched,
    # so a run with a teacher draws exactly what the same run without one draws.
    with torch.random.fork_rng(devices=[]):
        try:
            if is_hf_folder(path):
                with tempfile.TemporaryDirectory(prefix="llmcore-teacher-") as tmp:
                    out = import_hf(path, str(Path(tmp) / "ckpt"))
                    model, tok = llmcore.load(str(out), device="cpu")
            else:
                model, tok = llmcore.load(str(checkpoint.resolve(path)), device="cpu")
        except CheckpointError as e:
            raise ConfigError(f"{key}={path}: {e}") from None
    model.requires_grad_(False)
    return model.eval(), tok


def teacher_identity(path: str) -> dict:
    """JSON identity of a teacher, recorded in a cache and compared on use: its resolved path
    and the sha256 of its checksum manifest (or of its weight files when it has none)."""
    if is_hf_folder(path):
        root, files = Path(path).resolve(), sorted(Path(path).glob("*.safetensors")) + [Path(path) / "config.json"]
    else:
        root = checkpoint.resolve(path).resolve()
        files = [root / "manifest.json"] if (root / "manifest.json").is_file() else sorted(root.glob("*.safetensors"))
    h = hashlib.sha256()
    for f in files:  # file by file in chunks: a teacher's weights need not fit in memory
        h.update(f.name.encode())
        h.update(sha256_file(str(f)).encode())
    return {"path": str(root), "sha256": h.hexdigest()}


def check_vocab(student_tok, teacher_tok, student_vocab: int, teacher_vocab: int, key: str) -> int:
    """The vocabulary width the KD term compares (student and teacher output rows [:V]).

    ConfigError, before any step, when the teacher has no tokenizer, another tokenizer, or an
    output narrower than the real vocabulary. Equal widths: that width (padding rows included
    in both softmaxes alike); different widths (different padding): the real vocabulary.
    """
    if teacher_tok is None:
        raise ConfigError(f"{key}: the teacher has no tokenizer, so its vocabulary cannot be checked against "
                          "the student's (give the HF folder its tokenizer.model)")
    if teacher_tok.vocab_size != student_tok.vocab_size or teacher_tok.hash != student_tok.hash:
        raise ConfigError(f"{key}: tokenizer mismatch: the teacher's has {teacher_tok.vocab_size} tokens (sha256 "
                          f"{teacher_tok.hash[:12]}), the student's {student_tok.vocab_size} ({student_tok.hash[:12]}); "
                          "distillation compares distributions over the same token ids")
    real = student_tok.vocab_size
    for who, v in (("teacher", teacher_vocab), ("student", student_vocab)):
        if v < real:
            raise ConfigError(f"{key}: the {who}'s output has {v} rows, fewer than the tokenizer's {real} tokens")
    return student_vocab if student_vocab == teacher_vocab else real
