"""Writing a prepared data folder: token shards, document indexes and ``manifest.json``.

Used by ``llmcore.data.prepare`` (documents tokenized from text files) and directly by tests
or tools that already have token ids (``write_token_folder``: a tiny synthetic corpus for a
trainer test needs no ``datasets`` run). The format is what ``TokenShards`` reads:

    <out>/manifest.json
    <out>/<split>/shard_00000.bin        raw uint16 (vocab < 65536) or uint32 tokens
    <out>/<split>/shard_00000.docs.npy   int64 start offset of each document in the shard

Side-cars are added later, beside these, by ``llmcore.data.sidecar_writer`` (``<out>/sidecars/``);
rewriting a folder drops them, as it must: they were made from the old shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Iterable, Sequence

import numpy as np

from llmcore.data.shards import FORMAT, MANIFEST
from llmcore.errors import DataError
from llmcore.fsutil import replace_dir


def dtype_for(vocab_size: int) -> np.dtype:
    """The narrowest shard dtype that holds every id of the vocabulary."""
    return np.dtype(np.uint16 if vocab_size < 2**16 else np.uint32)


def tokenizer_info(tok) -> dict:
    """What a manifest records of the tokenizer (``tok``: a ``llmcore.tokenizer.Tokenizer``)."""
    return {"hash": tok.hash, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id,
            "bos_id": tok.bos_id, "pad_id": tok.pad_id, "unk_id": tok.unk_id,
            "special_ids": tok.special_ids, "path": tok.path}


class ShardWriter:
    """Appends documents to ``<root>/<split>/shard_NNNNN.bin`` files of at most
    ``shard_tokens`` tokens each; a document never spans two shards (a longer one gets a
    shard of its own)."""

    def __init__(self, root: str, split: str, dtype: np.dtype, shard_tokens: int):
        self.root, self.split, self.dtype, self.limit = root, split, np.dtype(dtype), shard_tokens
        os.makedirs(os.path.join(root, split), exist_ok=True)
        self.shards: list[dict] = []
        self._f = None

    def _open(self) -> None:
        stem = f"{self.split}/shard_{len(self.shards):05d}"
        self._entry = {"file": f"{stem}.bin", "docs_file": f"{stem}.docs.npy"}
        self._f = open(os.path.join(self.root, self._entry["file"]), "wb")
        self._sha, self._docs, self._n = hashlib.sha256(), [], 0

    def _finish(self) -> None:
        self._f.close()
        self._f = None
        np.save(os.path.join(self.root, self._entry["docs_file"]),
                np.asarray(self._docs, dtype=np.int64))
        self.shards.append(dict(self._entry, num_tokens=self._n, num_docs=len(self._docs),
                                sha256=self._sha.hexdigest()))

    def add(self, ids: np.ndarray | Sequence[int]) -> None:
        """Append one non-empty document (its token ids)."""
        ids = np.asarray(ids)
        if not len(ids):
            raise ValueError("documents must not be empty")
        if self._f is not None and self._n + len(ids) > self.limit:
            self._finish()
        if self._f is None:
            self._open()
        data = ids.astype(self.dtype).tobytes()
        self._f.write(data)
        self._sha.update(data)
        self._docs.append(self._n)
        self._n += len(ids)

    def close(self) -> dict:
        """Finish the last shard; the split's manifest entry."""
        if self._f is not None:
            self._finish()
        return {"num_tokens": sum(s["num_tokens"] for s in self.shards),
                "num_docs": sum(s["num_docs"] for s in self.shards), "shards": self.shards}


def make_manifest(tokenizer: dict, dtype: np.dtype, splits: dict, **extra) -> dict:
    """The manifest dict: format, tokenizer info, dtype, splits, then ``extra`` keys."""
    return {"format": FORMAT, "tokenizer": tokenizer, "dtype": np.dtype(dtype).name,
            "splits": splits, **extra}


def start_folder(out_dir: str, overwrite: bool) -> tuple[str, str]:
    """(absolute out_dir, empty temp folder beside it to build in). DataError if out_dir
    exists and not ``overwrite``."""
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not overwrite:
        raise DataError(f"output folder {out_dir} exists; pass overwrite=True (--overwrite) "
                        "to replace it")
    tmp = f"{out_dir}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)  # beside out_dir: the final rename stays on one file system
    return out_dir, tmp


def finish_folder(tmp: str, out_dir: str, manifest: dict) -> None:
    """Write the manifest into ``tmp`` and move it to ``out_dir`` (an old one goes last)."""
    with open(os.path.join(tmp, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    replace_dir(tmp, out_dir)


def write_token_folder(out_dir: str, splits: dict[str, Iterable[Sequence[int]]], *,
                       tokenizer: dict, shard_tokens: int = 2**27,
                       overwrite: bool = False) -> dict:
    """Write documents that are already token ids as a prepared data folder; return the
    manifest. ``splits``: ``{"train": [doc ids, ...], "val": [...]}``; ``tokenizer``: at least
    ``{"hash", "vocab_size"}`` (``tokenizer_info(tok)`` for a real one)."""
    out_dir, tmp = start_folder(out_dir, overwrite)
    try:
        dtype = dtype_for(int(tokenizer["vocab_size"]))
        entries = {}
        for split, docs in splits.items():
            writer = ShardWriter(tmp, split, dtype, shard_tokens)
            for doc in docs:
                writer.add(doc)
            entries[split] = writer.close()
        manifest = make_manifest(dict(tokenizer), dtype, entries)
        finish_folder(tmp, out_dir, manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
