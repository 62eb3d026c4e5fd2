"""Side-car arrays beside token shards: their layout, manifest and reader.

A side-car is an array aligned with a prepared split, written after ``prepare`` by whoever
computes it (``llmcore.data.sidecar_writer``: a teacher's top-k cache, a harm classifier's
scores) and read by the loaders for exactly the window they serve. Two kinds:

- ``token``: one row per token of the shard, ``[num_tokens, *shape]`` (e.g. [n, 50] uint16 ids);
- ``doc``: one row per document of the shard, ``[num_docs, *shape]`` (e.g. [d] float16 score);
  the loader exposes it per token (each token gets its document's row).

A ``token`` side-car is ``dense`` (the above) or ``ragged``: row j holds ``lengths[j] <=
width`` values (``shape: [width]``), stored flat per shard (``[sum of lengths]``), the row
lengths being another token side-car of unsigned integers named by ``lengths`` (so several
ragged side-cars -- a cache's ids and their counts -- share one). Offsets are not stored: the
reader recomputes a coarse index (every ``RAGGED_BLOCK`` rows) by cumsum over the lengths of
each shard on open, and reads a row back padded to ``[width]`` with ``fill``, so a loader, a
transform or a batch sees a ragged side-car exactly as a dense one of that width.

Layout, one folder per side-car so that side-cars written by different commands never touch
each other's files or manifest::

    <data>/sidecars/<name>/sidecar.json            manifest (below)
    <data>/sidecars/<name>/<split>/shard_00000.npy  one .npy per shard (header: dtype, shape)

``sidecar.json``: ``format``, ``name``, ``kind``, ``dtype``, ``shape`` (trailing dims),
``fill`` (what a slot inserted by a transform gets: a number or ``"previous"``),
``tokenizer_hash``, ``made_from`` (the writer's identity of its inputs, e.g. the teacher),
and per split ``shards``: one entry per token shard -- ``file``, ``rows``, ``bytes``,
``sha256`` of the .npy, and ``shard`` / ``shard_sha256``: the token shard it aligns with and
that shard's sha256 from the data manifest -- or null while not yet written. A ragged side-car
adds ``layout: "ragged"`` and ``lengths`` (the lengths side-car's name) at the top, and
``values`` (its flat length) and ``lengths_sha256`` (the lengths file it was written
against) per shard; a manifest without ``layout`` is dense.

Every mismatch is a ``DataError`` naming the side-car, the shard and what is wrong: unknown
name (listing those present), incomplete, made from other shards, truncated, wrong length,
checksum (``verify="full"``).
"""

from __future__ import annotations

import json
import os

import numpy as np

from llmcore.data.collate import check_extra_names
from llmcore.data.shards import TokenShards, read_format_json, sha256_file
from llmcore.errors import DataError
from llmcore.fsutil import write_text_atomically

SIDECAR_FORMAT = "llmcore-sidecar-v1"
SIDECAR_DIR = "sidecars"
SIDECAR_MANIFEST = "sidecar.json"
KINDS = ("token", "doc")
LAYOUTS = ("dense", "ragged")
RAGGED_BLOCK = 4096
"""Rows per entry of a ragged side-car's in-memory offset index (8 bytes per 4096 rows; a
read sums at most this many lengths before the rows it serves)."""


def sidecar_dir(data_path: str, name: str) -> str:
    return os.path.join(os.path.abspath(data_path), SIDECAR_DIR, name)


def available_sidecars(data_path: str) -> list[str]:
    """Names of the side-cars of a prepared folder (those with a manifest), sorted."""
    root = os.path.join(os.path.abspath(data_path), SIDECAR_DIR)
    if not os.path.isdir(root):
        return []
    return sorted(n for n in os.listdir(root) if os.path.isfile(os.path.join(root, n, SIDECAR_MANIFEST)))


def read_sidecar_manifest(data_path: str, name: str) -> dict:
    """The parsed ``sidecar.json`` of side-car ``name`` (DataError if absent or wrong)."""
    path = os.path.join(sidecar_dir(data_path, name), SIDECAR_MANIFEST)
    if not os.path.isfile(path):
        raise DataError(f"side-car {name!r} does not exist in {os.path.abspath(data_path)} (available: "
                        f"{available_sidecars(data_path) or 'none'})")
    return read_format_json(path, SIDECAR_FORMAT, f"side-car {name!r}")


def write_json_atomic(path: str, obj: dict) -> None:
    """Write JSON so a reader sees the old file or the new one, never half of one."""
    write_text_atomically(path, json.dumps(obj, indent=1) + "\n")


def open_npy(file: str, what: str) -> np.memmap:
    """Memory-map a .npy file after checking its header against its size (``what`` names it
    in errors). A short file is reported as truncated, not left to fail on some later read."""
    if not os.path.isfile(file):
        raise DataError(f"{what}: {file} is missing")
    try:
        with open(file, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read(f)
            offset = f.tell()
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{what}: {file} has no readable .npy header (truncated or corrupt): {e}") from e
    if fortran or dtype.hasobject:
        raise DataError(f"{what}: {file} is not a C-ordered plain array")
    want = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = os.path.getsize(file)
    if size != want:
        raise DataError(f"{what}: {file} has {size} bytes, its header {dtype.name}{list(shape)} needs {want}: "
                        f"{'truncated' if size < want else 'trailing bytes'}; rewrite the side-car")
    if want == offset:  # np.memmap refuses empty maps
        return np.zeros(shape, dtype=dtype)
    return np.memmap(file, dtype=dtype, mode="r", offset=offset, shape=tuple(shape))


def _check_keys(meta: dict, split: str, folder: str) -> None:
    """DataError naming the first key of a side-car manifest the reader needs that is missing."""
    path = os.path.join(folder, SIDECAR_MANIFEST)
    where = [("dtype", meta)]
    part = meta.get("splits", {}).get(split) if isinstance(meta.get("splits"), dict) else None
    if isinstance(part, dict):
        where.append((f"splits.{split}.shards", part))
        entries = part.get("shards")
        if isinstance(entries, list):
            where += [(f"splits.{split}.shards[{i}].file", e) for i, e in enumerate(entries) if isinstance(e, dict)]
    for dotted, obj in where:
        key = dotted.rsplit(".", 1)[-1]
        if key not in obj:
            raise DataError(f"{path}: key {dotted!r} is missing (has {sorted(obj)}); rewrite the side-car")


class Sidecar:
    """Side-car ``name`` of the split ``shards`` holds, checked against those shards on open.

    ``verify`` defaults to the shards' own level: ``"size"`` checks headers, lengths and the
    shard identity; ``"full"`` also the sha256 of every file. ``read(start, length)`` returns
    the rows of ``[start, start + length)`` as ``[length, *shape]`` of ``dtype``, one row per
    token (a ``doc`` side-car repeats its document's row on each of its tokens).
    """

    def __init__(self, shards: TokenShards, name: str, verify: str | None = None):
        check_extra_names([name], "side-car name")
        self.shards, self.name = shards, name
        verify = verify or shards.verify
        meta = read_sidecar_manifest(shards.path, name)
        where = f"side-car {name!r} of {shards.path}"
        if meta.get("kind") not in KINDS:
            raise DataError(f"{where}: kind {meta.get('kind')!r} is not one of {KINDS}")
        _check_keys(meta, shards.split, sidecar_dir(shards.path, name))
        self.kind, self.fill, self.made_from = meta["kind"], meta.get("fill", 0), meta.get("made_from")
        self.dtype, self.shape = np.dtype(meta["dtype"]), tuple(int(d) for d in meta.get("shape", ()))
        self.layout = meta.get("layout", "dense")
        if self.layout not in LAYOUTS:
            raise DataError(f"{where}: layout {self.layout!r} is not one of {LAYOUTS}")
        self.lengths = None
        if self.layout == "ragged":
            self.lengths = self._open_lengths(meta, where, verify)
        if meta.get("tokenizer_hash") != shards.tokenizer_hash:
            raise DataError(f"{where} was made from data of tokenizer {meta.get('tokenizer_hash')}, these "
                            f"shards are of {shards.tokenizer_hash}: recompute it for this folder")
        split = meta.get("splits", {}).get(shards.split)
        if split is None:
            raise DataError(f"{where} has no split {shards.split!r} (has {sorted(meta.get('splits', {}))})")
        entries = split["shards"]
        if len(entries) != len(shards.entries):
            raise DataError(f"{where} split {shards.split!r} was made from {len(entries)} shards, the folder "
                            f"has {len(shards.entries)}: made from different shards; recompute it")
        missing = [k for k, e in enumerate(entries) if e is None]
        if missing:
            raise DataError(f"{where} split {shards.split!r} is incomplete: shards {missing} of "
                            f"{len(entries)} not written (rerun its writer: it resumes)")
        self._maps, self._entries = [], entries
        for e, shard in zip(entries, shards.entries):
            what = f"{where}, shard {shard['file']}"
            if e.get("shard") != shard["file"] or e.get("shard_sha256") != shard.get("sha256"):
                raise DataError(f"{what}: made from different shards (side-car aligned with {e.get('shard')} "
                                f"sha256 {e.get('shard_sha256')}, the data manifest has sha256 "
                                f"{shard.get('sha256')}); recompute the side-car")
            file = os.path.join(sidecar_dir(shards.path, name), e["file"])
            arr = open_npy(file, what)
            rows = int(shard["num_tokens"] if self.kind == "token" else shard["num_docs"])
            unit = "tokens" if self.kind == "token" else "documents"
            if self.lengths is not None:
                self._check_ragged(arr, e, len(self._maps), file, what)
            elif arr.shape[:1] != (rows,):
                raise DataError(f"{what}: {file} has {arr.shape[0] if arr.ndim else 0} rows, the shard has "
                                f"{rows} {unit}: length mismatch; recompute the side-car")
            elif arr.shape[1:] != self.shape or arr.dtype != self.dtype:
                raise DataError(f"{what}: {file} holds {arr.dtype.name}{list(arr.shape)}, the manifest says "
                                f"{self.dtype.name}[{rows}, {', '.join(map(str, self.shape))}]")
            if verify == "full" and sha256_file(file) != e.get("sha256"):
                raise DataError(f"{what}: {file} fails its sha256 check (corrupt); recompute the side-car")
            self._maps.append(arr)

    def _open_lengths(self, meta: dict, where: str, verify: str) -> Sidecar:
        """The dense token side-car of row lengths a ragged one names (checked on open)."""
        name = meta.get("lengths")
        if self.kind != "token" or len(self.shape) != 1 or not isinstance(name, str):
            raise DataError(f"{where}: a ragged side-car needs kind 'token', shape [width] and a 'lengths' side-car "
                            f"(has kind {self.kind!r}, shape {list(self.shape)}, lengths {name!r})")
        if name == self.name:
            raise DataError(f"{where}: names itself as its lengths side-car")
        lengths = Sidecar(self.shards, name, verify)
        if lengths.layout != "dense" or lengths.shape != () or lengths.dtype.kind != "u":
            raise DataError(f"{where}: its lengths side-car {name!r} must be dense, one unsigned integer per "
                            f"token (is {lengths.layout} {lengths.dtype.name}{list(lengths.shape)})")
        self._starts = []  # per shard: flat offset of every RAGGED_BLOCK-th row, int64
        return lengths

    def _check_ragged(self, arr: np.ndarray, e: dict, k: int, file: str, what: str) -> None:
        """A ragged shard's flat values against its lengths shard; builds its offset index."""
        lengths, entry = self.lengths, self.lengths._entries[k]
        if e.get("lengths_sha256") != entry.get("sha256"):
            raise DataError(f"{what}: written against lengths {self.lengths.name!r} of sha256 "
                            f"{e.get('lengths_sha256')}, that side-car's shard now has sha256 {entry.get('sha256')}: "
                            "made from other lengths; recompute both")
        lens = lengths._maps[k]
        if lens.size and int(lens.max()) > self.shape[0]:
            raise DataError(f"{what}: a row of {int(lens.max())} values exceeds the width {self.shape[0]}")
        sums = np.add.reduceat(lens, np.arange(0, lens.size, RAGGED_BLOCK), dtype=np.int64) if lens.size else \
            np.zeros(0, np.int64)
        starts = np.concatenate([[0], np.cumsum(sums)])
        if arr.ndim != 1 or arr.dtype != self.dtype or arr.shape[0] != starts[-1]:
            raise DataError(f"{what}: {file} holds {arr.dtype.name}{list(arr.shape)}, its lengths add up to "
                            f"{self.dtype.name}[{int(starts[-1])}]: length mismatch; recompute the side-car")
        self._starts.append(starts)

    def __repr__(self) -> str:
        return (f"Sidecar({self.name!r}, kind={self.kind!r}, {self.layout} {self.dtype.name}{list(self.shape)}, "
                f"split={self.shards.split!r})")

    def read(self, start: int, length: int) -> np.ndarray:
        """Rows of tokens ``[start, start + length)`` -> [length, *shape] (reads only them); a
        ragged row comes back padded to [width] with ``fill``."""
        if self.lengths is not None:
            return self._read_ragged(start, length)
        out = np.empty((length, *self.shape), dtype=self.dtype)
        for k, lo, take, off in self.shards.pieces(start, length):
            if self.kind == "token":
                out[off:off + take] = self._maps[k][lo:lo + take]
            else:
                first_token, _, first_doc, _ = self.shards.shard_span(k)
                local = self.shards.doc_index(first_token + lo, take) - first_doc
                out[off:off + take] = self._maps[k][local]
        return out

    def _read_ragged(self, start: int, length: int) -> np.ndarray:
        width = self.shape[0]
        out = np.full((length, width), self.fill, dtype=self.dtype)
        for k, lo, take, off in self.shards.pieces(start, length):
            lens = self.lengths._maps[k]
            block = lo // RAGGED_BLOCK
            base = int(self._starts[k][block]) + int(lens[block * RAGGED_BLOCK:lo].sum(dtype=np.int64))
            n = lens[lo:lo + take].astype(np.int64)
            used = np.arange(width) < n[:, None]  # (take, width): row-major, as the values are stored
            out[off:off + take][used] = self._maps[k][base:base + int(n.sum())]
        return out


def open_sidecars(shards: TokenShards, names, where: str = "data.sidecars") -> list[Sidecar]:
    """The named side-cars of ``shards`` (checked on open); names must be unique."""
    names = list(names)
    check_extra_names(names, where)
    if len(set(names)) != len(names):
        raise DataError(f"{where} names a side-car twice: {names}")
    return [Sidecar(shards, n) for n in names]
