"""Writing a side-car shard by shard, resumably (layout and manifest: ``llmcore.data.sidecar``).

Used by commands that compute per-token or per-document arrays over a prepared folder (a
distillation teacher's top-k cache, a safety classifier's document scores) and by tests.
Computing a side-car can take hours, so the unit of work is one shard: each shard's file is
written beside its final name and renamed into place, hashed, and only then recorded in
``sidecar.json`` (itself replaced atomically). An interrupted write leaves a manifest listing
exactly the shards that are complete; running the same write again skips them and, as long as
``compute`` is deterministic, ends with the same files as an uninterrupted run.

Rerunning with other settings (kind, layout, lengths, dtype, shape, fill, made_from), or after
the data folder's shards changed, is a DataError naming the difference -- never a side-car half
of one thing and half of another; ``overwrite=True`` starts afresh.

A ragged side-car (``layout="ragged"``, ``lengths=`` a dense token side-car of row lengths)
takes each shard as its flat values and is written after that shard's lengths: its entry
records the lengths file's sha256, and a shard whose lengths were rewritten since is pending.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable, Sequence

import numpy as np

from llmcore.data.collate import check_extra_names
from llmcore.data.sample import FILL_PREVIOUS
from llmcore.data.shards import TokenShards, read_manifest, sha256_file
from llmcore.data.sidecar import (
    KINDS,
    LAYOUTS,
    SIDECAR_FORMAT,
    SIDECAR_MANIFEST,
    read_sidecar_manifest,
    sidecar_dir,
    write_json_atomic,
)
from llmcore.errors import DataError

_SETTINGS = ("kind", "layout", "lengths", "dtype", "shape", "fill", "tokenizer_hash", "made_from")


class SidecarWriter:
    """One side-car of a prepared folder, written one shard at a time.

    ``kind``: ``"token"`` (rows = the shard's tokens) or ``"doc"`` (rows = its documents);
    ``dtype`` / ``shape``: each file is ``[rows, *shape]`` of ``dtype``; ``fill``: what a slot a
    transform inserts gets (default 0 for ``token``, ``"previous"`` for ``doc``: an inserted
    token belongs to the document of the token before it); ``made_from``: JSON identity of the
    inputs (teacher checkpoint, classifier, k), recorded and compared on resume; ``layout``:
    ``"dense"`` or ``"ragged"`` (``shape`` = [width], row lengths in side-car ``lengths``).
    """

    def __init__(self, data_path: str, name: str, *, kind: str, dtype, shape: Sequence[int] = (),
                 fill: Any = None, made_from: dict | None = None, splits: Sequence[str] | None = None,
                 overwrite: bool = False, layout: str = "dense", lengths: str | None = None):
        check_extra_names([name], "side-car name")
        if kind not in KINDS:
            raise ValueError(f"side-car kind must be one of {KINDS}, not {kind!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"side-car layout must be one of {LAYOUTS}, not {layout!r}")
        if (layout == "ragged") != (lengths is not None):
            raise ValueError(f"side-car {name!r}: a ragged layout needs lengths=<side-car name>, a dense one none")
        if layout == "ragged" and (kind != "token" or len(shape) != 1 or lengths == name
                                   or not isinstance(fill, (int, float))):
            raise ValueError(f"side-car {name!r}: a ragged side-car is kind 'token' with shape [width], a numeric "
                             f"fill and another side-car's lengths (got kind {kind!r}, shape {list(shape)}, fill "
                             f"{fill!r}, lengths {lengths!r})")
        if fill is None:
            fill = FILL_PREVIOUS if kind == "doc" else 0
        if not (fill == FILL_PREVIOUS or isinstance(fill, (int, float)) and not isinstance(fill, bool)):
            raise ValueError(f"side-car fill must be a number or {FILL_PREVIOUS!r}, not {fill!r}")
        self.path, self.name = os.path.abspath(data_path), name
        self.data = read_manifest(self.path)
        self.dir = sidecar_dir(self.path, name)
        data_splits = self.data["splits"]
        self.splits = list(splits) if splits is not None else list(data_splits)
        unknown = [s for s in self.splits if s not in data_splits]
        if unknown:
            raise DataError(f"side-car {name!r}: {self.path} has no split(s) {unknown} (has {sorted(data_splits)})")
        self.dtype = np.dtype(dtype)
        if fill != FILL_PREVIOUS and not np.isnan(fill) and np.asarray(fill).astype(self.dtype) != fill:
            raise ValueError(f"side-car {name!r}: fill {fill!r} does not fit dtype {self.dtype.name}")
        want = {"format": SIDECAR_FORMAT, "name": name, "kind": kind, "dtype": self.dtype.name,
                "shape": [int(d) for d in shape], "fill": fill,
                "tokenizer_hash": self.data["tokenizer"].get("hash"), "made_from": made_from or {},
                "splits": {}}
        if layout == "ragged":  # a dense manifest stays as it always was (no layout key)
            want.update(layout=layout, lengths=lengths)
        old = None
        if os.path.isfile(os.path.join(self.dir, SIDECAR_MANIFEST)):
            if overwrite:
                shutil.rmtree(self.dir)
            else:
                old = read_sidecar_manifest(self.path, name)
                self._check_resumable(old, want)
        self.meta = old or want
        for split in self.splits:
            n = len(data_splits[split]["shards"])
            self.meta["splits"].setdefault(split, {"shards": [None] * n})
        os.makedirs(self.dir, exist_ok=True)
        self._save()

    def _check_resumable(self, old: dict, want: dict) -> None:
        # compared as JSON: that is how they are stored (tuples read back as lists, NaN == NaN)
        diff = {k: (old.get(k), want.get(k)) for k in _SETTINGS
                if json.dumps(old.get(k), sort_keys=True) != json.dumps(want.get(k), sort_keys=True)}
        if diff:
            raise DataError(f"side-car {self.name!r} in {self.path} exists with other settings "
                            + ", ".join(f"{k}: {a!r} there, {b!r} asked" for k, (a, b) in diff.items())
                            + "; pass overwrite=True to rewrite it")
        for split, entry in old["splits"].items():
            shards = self.data["splits"].get(split, {}).get("shards", [])
            for k, e in enumerate(entry["shards"]):
                if e is None:
                    continue
                if k >= len(shards) or e["shard_sha256"] != shards[k]["sha256"]:
                    raise DataError(f"side-car {self.name!r}, shard {e['shard']}: made from different shards "
                                    f"than {self.path} now holds; pass overwrite=True to recompute it")

    def _save(self) -> None:
        write_json_atomic(os.path.join(self.dir, SIDECAR_MANIFEST), self.meta)

    def pending(self, split: str) -> list[int]:
        """Indices of the shards of ``split`` not yet written (or whose file went missing or
        changed size since: they are rewritten rather than trusted)."""
        out = []
        lengths = self._lengths_entries(split) if self.meta.get("layout") == "ragged" else None
        for k, e in enumerate(self.meta["splits"][split]["shards"]):
            file = e and os.path.join(self.dir, e["file"])
            stale = lengths is not None and e is not None and (lengths[k] or {}).get("sha256") != e.get("lengths_sha256")
            if e is None or not os.path.isfile(file) or os.path.getsize(file) != e["bytes"] or stale:
                out.append(k)
        return out

    def _lengths_entries(self, split: str) -> list:
        """The lengths side-car's shard entries of ``split`` as on disk now (None: not written)."""
        try:
            meta = read_sidecar_manifest(self.path, self.meta["lengths"])
        except DataError:
            return [None] * len(self.meta["splits"][split]["shards"])
        return meta.get("splits", {}).get(split, {}).get("shards") or [None] * len(self.meta["splits"][split]["shards"])

    @property
    def complete(self) -> bool:
        return not any(self.pending(s) for s in self.splits)

    def write(self, split: str, k: int, array: np.ndarray) -> dict:
        """Store shard ``k`` of ``split``: ``array`` [rows, *shape] (ragged: the flat values
        [sum of the shard's lengths]); returns its manifest entry.

        DataError naming the side-car and shard when the length is not the shard's token (or
        document) count, the trailing shape differs, or an integer value does not fit ``dtype``.
        """
        shard = self.data["splits"][split]["shards"][k]
        kind, shape = self.meta["kind"], tuple(self.meta["shape"])
        rows = int(shard["num_tokens"] if kind == "token" else shard["num_docs"])
        what = f"side-car {self.name!r}, shard {shard['file']}"
        array = np.asarray(array)
        extra = {}
        if self.meta.get("layout") == "ragged":
            extra = self._check_ragged(split, k, array, what)
        elif array.shape != (rows, *shape):
            unit = "tokens" if kind == "token" else "documents"
            raise DataError(f"{what}: array of shape {list(array.shape)}, expected [{rows}, "
                            f"{', '.join(map(str, shape))}] ({rows} {unit}): length mismatch")
        out = array.astype(self.dtype, copy=False)  # already of the dtype: no copy and nothing to compare
        if self.dtype.kind in "iub" and array.dtype != self.dtype and not np.array_equal(out, array):
            raise DataError(f"{what}: values do not fit {self.dtype.name} (range "
                            f"{array.min()}..{array.max()})")
        stem = os.path.splitext(shard["file"])[0]
        rel = f"{stem}.npy"
        file = os.path.join(self.dir, rel)
        os.makedirs(os.path.dirname(file), exist_ok=True)
        tmp = f"{file}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(out), allow_pickle=False)
        os.replace(tmp, file)
        entry = {"file": rel, "rows": rows, "bytes": os.path.getsize(file), "sha256": sha256_file(file),
                 "shard": shard["file"], "shard_sha256": shard["sha256"], **extra}
        self.meta["splits"][split]["shards"][k] = entry
        self._save()  # only now is the shard complete: a crash before this rewrites it
        return entry


    def _check_ragged(self, split: str, k: int, values: np.ndarray, what: str) -> dict:
        """Flat values of shard ``k`` against its lengths shard (written first): their entry keys."""
        name = self.meta["lengths"]
        entry = self._lengths_entries(split)[k]
        if entry is None:
            raise DataError(f"{what}: its lengths side-car {name!r} has no shard {k} of split {split!r} yet; "
                            "write the lengths first")
        lens = np.load(os.path.join(sidecar_dir(self.path, name), entry["file"]), mmap_mode="r")
        total, width = int(lens.sum(dtype=np.int64)), int(self.meta["shape"][0])
        if values.shape != (total,):
            raise DataError(f"{what}: flat values of shape {list(values.shape)}, its lengths {name!r} add up to "
                            f"[{total}]: length mismatch")
        if lens.size and int(lens.max()) > width:
            raise DataError(f"{what}: its lengths {name!r} hold a row of {int(lens.max())} values, the width is {width}")
        return {"values": total, "lengths_sha256": entry["sha256"]}


def write_sidecar(data_path: str, name: str, compute: Callable[[TokenShards, int], np.ndarray], *,
                  kind: str, dtype, shape: Sequence[int] = (), fill: Any = None, made_from: dict | None = None,
                  splits: Sequence[str] | None = None, overwrite: bool = False, layout: str = "dense",
                  lengths: str | None = None) -> dict:
    """Compute and store every pending shard of side-car ``name``; return its manifest.

    ``compute(shards, k)`` returns shard ``k``'s array for the split ``shards`` holds; read the
    shard with ``shards.shard_span(k)`` (first token, tokens, first document, documents) and
    ``shards.read`` / ``shards.doc_index``. Already written shards are skipped, so the same
    call after an interruption finishes the job. Other arguments: ``SidecarWriter``.
    """
    writer = SidecarWriter(data_path, name, kind=kind, dtype=dtype, shape=shape, fill=fill,
                           made_from=made_from, splits=splits, overwrite=overwrite, layout=layout, lengths=lengths)
    for split in writer.splits:
        todo = writer.pending(split)
        if todo:
            shards = TokenShards(data_path, split)
            for k in todo:
                writer.write(split, k, compute(shards, k))
    return writer.meta
