"""Read-only access to one split of a prepared data folder (what ``prepare`` wrote).

Used by the packed loader (``llmcore.data.loader``) and evaluation. A split is a list of
raw token shards (``.bin``, uint16 or uint32, memory-mapped) with a document index each
(``.docs.npy``: start offset of every document in its shard); shards are addressed as one
stream of ``num_tokens`` tokens. Every way a folder can be wrong -- missing, truncated,
corrupt, made with another tokenizer -- is a ``DataError`` naming the file. Side-cars
(``llmcore.data.sidecar``) are read against an open ``TokenShards``: ``pieces`` maps a
window to shard files for both, so tokens and side-car rows can never disagree on it.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from llmcore.errors import DataError

FORMAT = "llmcore-tokens-v1"
MANIFEST = "manifest.json"
_DTYPES = ("uint16", "uint32")


def read_manifest(path: str) -> dict:
    """The parsed ``manifest.json`` of a prepared data folder (DataError if absent or wrong)."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise DataError(f"data folder {path} does not exist (make it with `llmcore data prepare`)")
    mpath = os.path.join(path, MANIFEST)
    if not os.path.isfile(mpath):
        raise DataError(f"{mpath} is missing: {path} is not a prepared data folder "
                        "(make it with `llmcore data prepare`)")
    manifest = read_format_json(mpath, FORMAT)
    check_manifest_keys(manifest, mpath)
    return manifest


_SHARD_KEYS = {"file": str, "docs_file": str, "num_tokens": int, "num_docs": int}


def check_manifest_keys(manifest: dict, mpath: str) -> None:
    """DataError naming the first missing or mistyped key of a data manifest (dotted, e.g.
    `splits.train.shards[0].num_docs`), so a hand-edited or truncated manifest is refused
    before any shard is opened."""
    def need(obj: dict, key: str, tp: type, where: str):
        if key not in obj:
            raise DataError(f"{mpath}: key {where + key!r} is missing (has {sorted(obj)}); "
                            "re-run `llmcore data prepare`")
        value = obj[key]
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise DataError(f"{mpath}: {where + key} must be {tp.__name__}, got {value!r}; "
                            "re-run `llmcore data prepare`")
        return value

    need(need(manifest, "tokenizer", dict, ""), "vocab_size", int, "tokenizer.")
    need(manifest, "dtype", str, "")
    for split, entry in need(manifest, "splits", dict, "").items():
        where = f"splits.{split}."
        if not isinstance(entry, dict):
            raise DataError(f"{mpath}: {where[:-1]} must be dict, got {entry!r}; re-run `llmcore data prepare`")
        need(entry, "num_tokens", int, where)
        for i, shard in enumerate(need(entry, "shards", list, where)):
            at = f"{where}shards[{i}]"
            if not isinstance(shard, dict):
                raise DataError(f"{mpath}: {at} must be dict, got {shard!r}; re-run `llmcore data prepare`")
            for key, tp in _SHARD_KEYS.items():
                need(shard, key, tp, at + ".")


def read_format_json(path: str, fmt: str, what: str = "") -> dict:
    """A JSON manifest whose `format` must be `fmt` (the data manifest, a side-car's);
    DataError naming `what` and the file when it is not valid JSON or of another format."""
    prefix = f"{what}: " if what else ""
    try:
        with open(path) as f:
            manifest = json.load(f)
    except ValueError as e:
        raise DataError(f"{prefix}{path} is not valid JSON: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != fmt:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise DataError(f"{prefix}{path} has format {got!r}, expected {fmt!r}")
    return manifest


def sha256_file(path: str, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class TokenShards:
    """One split of a prepared data folder, as a single token stream.

    ``verify="size"`` checks every shard's byte size and document index on open (cheap);
    ``"lazy"`` also checks each shard's sha256 once, the first time a read touches it (the
    cost of one extra pass over the data, spread over the first epoch, and only for shards
    the run reads; corruption that keeps ids in the vocabulary is caught only this way);
    ``"full"`` checks sha256 and that every token id is below ``vocab_size`` at open.
    ``expected_tokenizer_hash`` (the run's ``Tokenizer.hash``) rejects data made with another
    tokenizer.
    """

    def __init__(self, path: str, split: str = "train", *,
                 expected_tokenizer_hash: str | None = None, verify: str = "size"):
        if verify not in ("size", "lazy", "full"):
            raise ValueError(f"verify must be 'size', 'lazy' or 'full', not {verify!r}")
        self.path = os.path.abspath(path)
        self.split, self.verify = split, verify  # side-cars opened on these shards check as much
        self.manifest = read_manifest(self.path)
        mpath = os.path.join(self.path, MANIFEST)
        tok = self.manifest.get("tokenizer", {})
        self.tokenizer_hash = tok.get("hash")
        if expected_tokenizer_hash is not None and self.tokenizer_hash != expected_tokenizer_hash:
            raise DataError(f"{self.path} was made with tokenizer {self.tokenizer_hash}, run uses "
                            f"{expected_tokenizer_hash}: re-run `llmcore data prepare` with the "
                            "run's tokenizer")
        self.vocab_size = int(tok["vocab_size"])
        if self.manifest.get("dtype") not in _DTYPES:
            raise DataError(f"{mpath}: dtype {self.manifest.get('dtype')!r} is not one of "
                            f"{_DTYPES}")
        self.dtype = np.dtype(self.manifest["dtype"])
        splits = self.manifest.get("splits", {})
        if split not in splits:
            raise DataError(f"{mpath} has no split {split!r} (has {sorted(splits)})")
        self.entries: list[dict] = list(splits[split]["shards"])  # manifest entry of each shard
        self._files: list[str] = []
        self._maps: list[np.memmap] = []
        self._unchecked: set[int] = set(range(len(self.entries))) if verify == "lazy" else set()
        sizes, doc_starts = [0], []
        for entry in self.entries:
            file = os.path.join(self.path, entry["file"])
            n, ndocs = int(entry["num_tokens"]), int(entry["num_docs"])
            self._check_file(file, n, entry, verify)
            docs = self._load_docs(os.path.join(self.path, entry["docs_file"]), n, ndocs)
            self._files.append(file)
            self._maps.append(np.memmap(file, dtype=self.dtype, mode="r", shape=(n,)))
            doc_starts.append(docs + sizes[-1])
            sizes.append(sizes[-1] + n)
        self._starts = np.asarray(sizes, dtype=np.int64)  # global offset of each shard
        self._doc_starts = (np.concatenate(doc_starts) if doc_starts
                            else np.zeros(0, dtype=np.int64))
        # global ordinal of each shard's first document (documents never span shards)
        self._doc_base = np.cumsum([0] + [int(e["num_docs"]) for e in self.entries])
        self.num_tokens = int(self._starts[-1])
        self.num_docs = len(self._doc_starts)
        if self.num_tokens != int(splits[split]["num_tokens"]):
            raise DataError(f"{mpath}: split {split!r} says {splits[split]['num_tokens']} tokens "
                            f"but its shards hold {self.num_tokens}")
        if verify == "full":
            self.check_window(0, self.num_tokens)

    def _check_file(self, file: str, n: int, entry: dict, verify: str) -> None:
        if not os.path.isfile(file):
            raise DataError(f"shard {file} is missing (listed in {self.path}/{MANIFEST})")
        size, want = os.path.getsize(file), n * self.dtype.itemsize
        if size != want:
            raise DataError(f"shard {file} has {size} bytes, expected {want} ({n} tokens of "
                            f"{self.dtype.name}): truncated or corrupt; re-run `llmcore data "
                            "prepare`")
        if n == 0:
            raise DataError(f"shard {file} is empty")
        if verify == "full":
            self._check_sha256(file, entry)

    @staticmethod
    def _check_sha256(file: str, entry: dict) -> None:
        if sha256_file(file) != entry.get("sha256"):
            raise DataError(f"shard {file} fails its sha256 check (corrupt); re-run "
                            "`llmcore data prepare`")

    @staticmethod
    def _load_docs(file: str, n: int, ndocs: int) -> np.ndarray:
        if not os.path.isfile(file):
            raise DataError(f"document index {file} is missing")
        try:
            docs = np.load(file, allow_pickle=False).astype(np.int64)
        except ValueError as e:
            raise DataError(f"document index {file} is unreadable: {e}") from e
        if (docs.ndim != 1 or len(docs) != ndocs or ndocs == 0 or docs[0] != 0
                or docs[-1] >= n or np.any(np.diff(docs) <= 0)):
            raise DataError(f"document index {file} is corrupt: expected {ndocs} increasing "
                            f"offsets from 0 below {n}")
        return docs

    def __len__(self) -> int:
        return self.num_tokens

    def __repr__(self) -> str:
        return (f"TokenShards({self.path!r}, split={self.split!r}, tokens={self.num_tokens}, "
                f"docs={self.num_docs}, shards={len(self._files)})")

    @property
    def files(self) -> list[str]:
        """Absolute paths of the split's shard files, in stream order."""
        return list(self._files)

    def _bounds(self, start: int, length: int) -> None:
        if start < 0 or length < 0 or start + length > self.num_tokens:
            raise IndexError(f"window [{start}, {start + length}) is outside the "
                             f"{self.num_tokens} tokens of {self.path} split {self.split!r}")

    def pieces(self, start: int, length: int) -> list[tuple[int, int, int, int]]:
        """How ``[start, start + length)`` lies on the shards: ``(shard k, offset in shard k,
        count, offset in the window)`` per shard touched, in order. The one place that maps
        stream positions to shard files; side-car readers use it too."""
        self._bounds(start, length)
        out = []
        pos, k = start, int(np.searchsorted(self._starts, start, side="right")) - 1
        while pos < start + length:
            lo = pos - int(self._starts[k])
            take = min(start + length - pos, int(self._starts[k + 1]) - pos)
            out.append((k, lo, take, pos - start))
            pos += take
            k += 1
        return out

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens ``[start, start + length)`` of the stream -> int64 [length].

        May cross shard boundaries. DataError when a token id is outside the vocabulary
        (a corrupt shard), naming the shard and the offset in it.
        """
        pieces = self.pieces(start, length)
        out = np.empty(length, dtype=np.int64)
        for k, lo, take, off in pieces:
            if k in self._unchecked:
                self._check_sha256(self._files[k], self.entries[k])
                self._unchecked.discard(k)
            piece = self._maps[k][lo:lo + take]
            out[off:off + take] = piece
            if take and int(piece.max()) >= self.vocab_size:
                bad = lo + int(np.argmax(piece >= self.vocab_size))
                raise DataError(f"shard {self._files[k]} is corrupt: token {int(piece[bad - lo])} "
                                f"at offset {bad} is >= vocab_size {self.vocab_size}")
        return out

    def check_window(self, start: int, length: int, chunk: int = 1 << 24) -> None:
        """Raise DataError if any token of ``[start, start + length)`` is outside the vocabulary
        (scans in chunks, so a whole split can be checked without loading it)."""
        for s in range(start, start + length, chunk):
            self.read(s, min(chunk, start + length - s))

    def doc_index(self, start: int, length: int) -> np.ndarray:
        """Document ordinal within the split of every token of ``[start, start + length)``
        -> int64 [length] (not renumbered: the same document has the same ordinal anywhere)."""
        self._bounds(start, length)
        pos = np.arange(start, start + length, dtype=np.int64)
        return np.searchsorted(self._doc_starts, pos, side="right") - 1

    def locate(self, pos: int) -> tuple[int, int]:
        """(document ordinal within the split, offset within that document) of token ``pos``."""
        self._bounds(pos, 1)
        doc = int(np.searchsorted(self._doc_starts, pos, side="right")) - 1
        return doc, pos - int(self._doc_starts[doc])

    def shard_span(self, k: int) -> tuple[int, int, int, int]:
        """Shard ``k`` in the stream: (first token, tokens, first document ordinal, documents)."""
        return (int(self._starts[k]), int(self._starts[k + 1] - self._starts[k]),
                int(self._doc_base[k]), int(self._doc_base[k + 1] - self._doc_base[k]))

    def doc_ids(self, start: int, length: int) -> np.ndarray:
        """Document ordinal of every token of ``[start, start + length)`` -> int64 [length],
        renumbered so the window's first document is 0 (tokens of one document share an id)."""
        ids = self.doc_index(start, length)
        return ids - ids[0] if length else ids
