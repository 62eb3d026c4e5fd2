"""The tokenizer: a byte-fallback SentencePiece BPE model plus a registry of special tokens.

Used by the CLI (`llmcore tokenizer train`), by ``llmcore.data.prepare`` (documents -> ids),
by recipes (``token_id("<pause>")``), generation and export. A tokenizer folder holds

- ``tokenizer.model``: the SentencePiece model;
- ``special_tokens.json``: ``{"unk": 0, "bos": 1, "eos": 2, "pad": 3, "<pause>": 4, ...,
  "<reserved_0>": k, ..., "vocab_size": V, "hash": "<sha256>"}`` -- every special token at the
  fixed id it was trained with, so data, checkpoints and recipes agree on them.

Encoding is lossless: identity normalisation, no dummy prefix, no whitespace folding and byte
fallback give ``decode(encode(text)) == text`` for any UTF-8 text.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm

from llmcore.errors import TokenizerError
from llmcore.fsutil import write_dir_atomically
from llmcore.reserved_slots import lend, special_id

MODEL_FILE = "tokenizer.model"
SPECIALS_FILE = "special_tokens.json"
CONTROL = {"unk": 0, "bos": 1, "eos": 2, "pad": 3}
_CONTROL_PIECES = {"unk": "<unk>", "bos": "<s>", "eos": "</s>", "pad": "<pad>"}
_META_KEYS = ("vocab_size", "hash")
# SentencePiece records num_threads inside tokenizer.model: a fixed count keeps the file (and
# so the hash) identical on every machine for a seed; the merges do not depend on it.
_TRAIN_THREADS = 16
# SentencePiece writes spaces as U+2581 and turns every U+2581 back into a space on decode;
# a literal U+2581 in the text is therefore encoded as its UTF-8 byte pieces instead.
_SPACE_MARK = "\u2581"


def _hash(model_bytes: bytes, ids: dict[str, int]) -> str:
    h = hashlib.sha256(model_bytes)
    h.update(json.dumps(ids, sort_keys=True).encode())
    return h.hexdigest()


class Tokenizer:
    """A loaded tokenizer. Build one with ``Tokenizer.train`` or ``Tokenizer.load``."""

    backend = "sentencepiece"

    def __init__(self, model_bytes: bytes, ids: dict[str, int], path: str | None = None):
        self._model_bytes = model_bytes
        self._sp = spm.SentencePieceProcessor(model_proto=model_bytes)
        self.path = path
        self._ids = dict(ids)  # control tokens + user specials, name -> id
        self.unk_id, self.bos_id = ids["unk"], ids["bos"]
        self.eos_id, self.pad_id = ids["eos"], ids["pad"]
        self.special_ids = {k: v for k, v in ids.items() if k not in CONTROL}
        self.vocab_size = self._sp.get_piece_size()
        self.hash = _hash(model_bytes, self._ids)
        self._aliases: dict[str, int] = {}  # run-time tokens in reserved slots (`reserve`)
        self._mark_bytes = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in _SPACE_MARK.encode()]

    # ------------------------------------------------------------------ training
    @classmethod
    def train(cls, files: list[str], out_dir: str, vocab_size: int,
              special_tokens: Sequence[str] = (), num_reserved: int = 16,
              max_sentence_length: int = 16384, input_sentence_size: int = 1_000_000,
              seed: int = 0, *, text_field: str = "text", sample_by: str = "paragraph",
              character_coverage: float = 0.9995, overwrite: bool = False,
              progress: bool = True) -> Tokenizer:
        """Train a BPE tokenizer on text/jsonl/parquet files (or directories) into ``out_dir``.

        Ids: unk=0, bos=1, eos=2, pad=3, then ``special_tokens`` in the given order from 4,
        then ``<reserved_0>..<reserved_{num_reserved-1}>`` (room for recipes added later), then
        the 256 byte pieces and the learned merges. Each text document (``sample_by``
        "paragraph" by default) is one training sentence, so newlines and indentation are
        learned; documents longer than ``max_sentence_length`` bytes are cut at line ends.
        ``input_sentence_size`` sentences are sampled (seeded) when there are more.
        Deterministic for a seed. Writes atomically; a non-empty ``out_dir`` is an error
        unless ``overwrite``.
        """
        from llmcore.data.files import iter_texts, resolve_inputs

        specials = list(special_tokens) + [f"<reserved_{i}>" for i in range(num_reserved)]
        _check_specials(specials)
        out_dir = os.path.abspath(out_dir)
        if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
            raise TokenizerError(f"tokenizer folder {out_dir} exists and is not empty; "
                                 "pass overwrite=True (--overwrite) to replace it")
        inputs = resolve_inputs(files)

        def sentences() -> Iterator[str]:
            for path, builder in inputs:
                for text in iter_texts(path, builder, text_field=text_field, sample_by=sample_by):
                    yield from _chunks(text, max_sentence_length)

        from tqdm.auto import tqdm

        # SentencePiece's own sampling ignores the seed, so sample here (seeded reservoir).
        sample = _reservoir(tqdm(sentences(), desc="tokenizer: read text", unit=" docs",
                                 disable=not progress), input_sentence_size, seed)
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sample), model_writer=model, model_type="bpe",
                vocab_size=vocab_size, unk_id=0, bos_id=1, eos_id=2, pad_id=3,
                user_defined_symbols=specials, normalization_rule_name="identity",
                byte_fallback=True, remove_extra_whitespaces=False, add_dummy_prefix=False,
                split_digits=True, allow_whitespace_only_pieces=True,
                character_coverage=character_coverage,
                max_sentence_length=max_sentence_length,
                input_sentence_size=0, shuffle_input_sentence=False,
                num_threads=_TRAIN_THREADS, minloglevel=2)
        except RuntimeError as e:  # e.g. "Vocabulary size is smaller than required_chars"
            raise TokenizerError(f"training a tokenizer of vocab_size={vocab_size} on "
                                 f"{[p for p, _ in inputs]} failed: {e}") from e
        ids = dict(CONTROL)
        ids.update({name: 4 + i for i, name in enumerate(specials)})
        tok = cls(model.getvalue(), ids)
        tok._check_ids(out_dir)
        tok.save(out_dir, overwrite=overwrite)
        return tok

    # ------------------------------------------------------------------ files
    @classmethod
    def load(cls, path: str) -> Tokenizer:
        """Load a tokenizer folder (``tokenizer.model`` + ``special_tokens.json``); a folder
        with a Hugging Face ``tokenizer.json`` instead loads as ``llmcore.tokenizer_hf.HFTokenizer``
        (same interface)."""
        path = os.path.abspath(path)
        if not os.path.isdir(path):
            raise TokenizerError(f"tokenizer folder {path} does not exist")
        from llmcore.tokenizer_hf import HFTokenizer, is_hf_folder

        if is_hf_folder(path):
            return HFTokenizer.load(path)  # type: ignore[return-value]
        files = {}
        for name in (MODEL_FILE, SPECIALS_FILE):
            f = os.path.join(path, name)
            if not os.path.isfile(f):
                raise TokenizerError(f"tokenizer folder {path} lacks {name} ({f} is missing)")
            with open(f, "rb") as fh:
                files[name] = fh.read()
        try:
            meta = json.loads(files[SPECIALS_FILE])
            ids = {k: int(v) for k, v in meta.items() if k not in _META_KEYS}
        except (ValueError, TypeError, AttributeError) as e:
            raise TokenizerError(f"{os.path.join(path, SPECIALS_FILE)} is not a name->id "
                                 f"JSON object: {e}") from e
        missing = [k for k in CONTROL if k not in ids]
        if missing:
            raise TokenizerError(f"{os.path.join(path, SPECIALS_FILE)} lacks {missing}")
        try:
            tok = cls(files[MODEL_FILE], ids, path)
        except RuntimeError as e:
            raise TokenizerError(f"{os.path.join(path, MODEL_FILE)} is not a SentencePiece "
                                 f"model: {e}") from e
        tok._check_ids(path)
        if "hash" in meta and meta["hash"] != tok.hash:
            raise TokenizerError(f"tokenizer folder {path}: files do not match their recorded "
                                 f"hash {meta['hash']} (now {tok.hash}); a file was changed")
        return tok

    def save(self, out_dir: str, overwrite: bool = False) -> str:
        """Write ``tokenizer.model`` and ``special_tokens.json`` into ``out_dir`` atomically."""
        out_dir = os.path.abspath(out_dir)
        if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
            raise TokenizerError(f"tokenizer folder {out_dir} exists and is not empty; "
                                 "pass overwrite=True to replace it")
        def write(tmp: Path) -> None:
            (tmp / MODEL_FILE).write_bytes(self._model_bytes)
            meta = dict(self._ids, vocab_size=self.vocab_size, hash=self.hash)
            (tmp / SPECIALS_FILE).write_text(json.dumps(meta, indent=1) + "\n")

        write_dir_atomically(Path(out_dir), write)
        if self.path is None:
            self.path = out_dir
        return out_dir

    def _check_ids(self, where: str) -> None:
        for name, i in self._ids.items():
            want = _CONTROL_PIECES.get(name, name)
            piece = self._sp.id_to_piece(i) if 0 <= i < self.vocab_size else None
            if piece != want:
                raise TokenizerError(f"tokenizer {where}: special token {name!r} is recorded at "
                                     f"id {i} but the model has {piece!r} there")

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict:
        # The SentencePiece processor itself cannot be pickled; datasets' multiprocess map
        # sends the tokenizer to its workers as the model bytes and rebuilds it there.
        return {"model": self._model_bytes, "ids": self._ids, "path": self.path, "aliases": self._aliases}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model"], state["ids"], state["path"])
        self._aliases = dict(state.get("aliases", {}))

    def __repr__(self) -> str:
        return (f"Tokenizer(path={self.path!r}, vocab_size={self.vocab_size}, "
                f"specials={len(self.special_ids)}, hash={self.hash[:12]})")

    # ------------------------------------------------------------------ encode / decode
    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Text -> ids; with ``bos``/``eos`` the ids of <s>/</s> around it."""
        if _SPACE_MARK in text:
            ids: list[int] = []
            for i, part in enumerate(text.split(_SPACE_MARK)):
                if i:
                    ids.extend(self._mark_bytes)
                if part:
                    ids.extend(self._sp.encode(part))
        else:
            ids = self._sp.encode(text)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def encode_batch(self, texts: Iterable[str], bos: bool = False,
                     eos: bool = False) -> list[list[int]]:
        """Several texts -> one id list each (SentencePiece's batched C++ path)."""
        texts = list(texts)
        plain = [i for i, t in enumerate(texts) if _SPACE_MARK not in t]
        out: list[list[int] | None] = [None] * len(texts)
        for i, ids in zip(plain, self._sp.encode([texts[i] for i in plain])):
            out[i] = ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])
        for i, t in enumerate(texts):
            if out[i] is None:
                out[i] = self.encode(t, bos=bos, eos=eos)
        return out  # type: ignore[return-value]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text. Special tokens come back as their names (``"<pause>"``);
        bos/eos/pad as ""."""
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise TokenizerError(f"cannot decode ids {bad[:5]}: outside the vocabulary "
                                 f"[0, {self.vocab_size})")
        return self._sp.decode(ids)

    def token_id(self, name: str) -> int:
        """The id of a special token by name ("<pause>", "eos", ...)."""
        return special_id(name, self._ids, self._aliases, self.path or "")

    def reserve(self, names: Sequence[str]) -> dict[str, int]:
        """Give each special token in ``names`` that this tokenizer lacks the next free
        ``<reserved_i>`` slot (lowest id first), so a recipe's config-dependent tokens
        (``<mode_0..C-1>``) need no retraining; tokens it has keep their ids. Returns name -> id.

        The slots are aliases held in memory (``token_id`` resolves them; ``decode`` still
        prints ``<reserved_i>``): the files, the encoding and ``hash`` are unchanged, and the
        assignment is a pure function of the tokenizer and the order of ``names`` (a run's
        recipes in config order), so training and decoding agree. Reserving the same names
        again changes nothing. A TokenizerError names the tokens when the free slots run out.
        """
        lent = set(self._aliases.values())
        free = [i for n, i in self._ids.items() if n.startswith("<reserved_") and i not in lent]
        lend(names, self._ids, self._aliases, free, self.path or "", check=_check_specials)
        return {n: self.token_id(n) for n in names}

    def id_to_piece(self, i: int) -> str:
        """The vocabulary entry of one id (for debugging and export)."""
        return self._sp.id_to_piece(int(i))

    @property
    def model_bytes(self) -> bytes:
        """The serialised SentencePiece model (what ``tokenizer.model`` holds)."""
        return self._model_bytes


def _check_specials(names: list[str]) -> None:
    seen = set()
    for n in names:
        if not isinstance(n, str) or not n or any(c.isspace() for c in n):
            raise TokenizerError(f"special token {n!r} must be a non-empty string without spaces")
        if n in CONTROL or n in _META_KEYS or n in _CONTROL_PIECES.values():
            raise TokenizerError(f"special token {n!r} clashes with a built-in name")
        if n in seen:
            raise TokenizerError(f"special token {n!r} is listed twice")
        seen.add(n)


def _chunks(text: str, limit: int) -> Iterator[str]:
    """Cut a document into pieces of at most ``limit`` UTF-8 bytes, at line ends when possible
    (SentencePiece silently drops longer training sentences)."""
    if not text:
        return
    if len(text.encode()) <= limit:
        yield text
        return
    buf, size = [], 0
    for line in text.splitlines(keepends=True):
        n = len(line.encode())
        if size + n > limit and buf:
            yield "".join(buf)
            buf, size = [], 0
        while n > limit:  # one line longer than the limit: cut by characters
            cut = limit // 4  # worst case 4 bytes per character
            yield line[:cut]
            line = line[cut:]
            n = len(line.encode())
        buf.append(line)
        size += n
    if buf:
        yield "".join(buf)


def _reservoir(items: Iterable[str], k: int, seed: int) -> list[str]:
    """A uniform seeded sample of ``k`` items (all of them when there are fewer; k <= 0: all)."""
    out: list[str] = []
    rng = np.random.default_rng([seed, 0x746F6B])  # "tok" stream
    u = np.empty(0)
    for i, item in enumerate(items):
        if k <= 0 or i < k:
            out.append(item)
            continue
        if not len(u):
            u = rng.random(4096)  # drawn in blocks: one numpy call per item is slow
        j, u = int(u[0] * (i + 1)), u[1:]
        if j < k:
            out[j] = item
    return out
