"""Per-example side-cars of an SFT jsonl: one array row per example, written beside the file.

The SFT counterpart of ``llmcore.data.sidecar`` (which aligns arrays with token shards): an
array computed after the data was written (mode conditioning's gradient-cluster assignment of
each example, a per-example score) that training reads as a per-sample value, exactly as an
extra jsonl field (`data.sft_fields`) would arrive: `data.format: sft` with `data.sidecars:
[name]` gives `sample.values[name]` and `batch[name]` [B, ...].

Layout, beside ``<dir>/<stem>.jsonl``::

    <dir>/<stem>.sidecars/<name>/sidecar.json   manifest
    <dir>/<stem>.sidecars/<name>/values.npy     [examples, *shape]

``sidecar.json``: ``format``, ``name``, ``dtype``, ``shape`` (trailing dims), ``rows``,
``sha256`` of values.npy, ``data_file`` and ``data_sha256`` (the jsonl it was made from) and
``made_from`` (the writer's identity of its inputs: checkpoint, seed, settings). A side-car
made from another version of the jsonl, of the wrong length, or corrupt is a DataError naming
it; an unknown name lists those available. Writes are atomic (a temporary folder renamed), so
a reader sees the old side-car or the new one, never half of one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from llmcore.data.collate import check_extra_names
from llmcore.data.shards import read_format_json, sha256_file
from llmcore.errors import DataError
from llmcore.fsutil import write_dir_atomically

FORMAT = "llmcore-example-sidecar-v1"
MANIFEST = "sidecar.json"
VALUES = "values.npy"


def example_sidecar_dir(jsonl_path: str, name: str) -> Path:
    """`<dir>/<stem>.sidecars/<name>` for the jsonl at `jsonl_path`."""
    p = Path(jsonl_path).absolute()
    return p.parent / f"{p.stem}.sidecars" / name


def available_example_sidecars(jsonl_path: str) -> list[str]:
    """Names of the per-example side-cars beside `jsonl_path` (those with a manifest), sorted."""
    root = example_sidecar_dir(jsonl_path, "x").parent
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if (d / MANIFEST).is_file())


def write_example_sidecar(jsonl_path: str, name: str, values: np.ndarray, *, made_from: dict | None = None,
                          overwrite: bool = False) -> Path:
    """Write `values` [examples, ...] as side-car `name` of `jsonl_path`; returns its folder.

    The row count must equal the file's examples (non-blank lines). An existing side-car of
    that name is refused unless `overwrite` (then replaced atomically).
    """
    check_extra_names([name], "side-car name")
    src = Path(jsonl_path)
    if not src.is_file():
        raise DataError(f"side-car {name!r}: data file {src} does not exist")
    values = np.ascontiguousarray(values)
    if values.dtype.hasobject or values.ndim < 1:
        raise DataError(f"side-car {name!r}: values must be a numeric array [examples, ...], got "
                        f"{values.dtype}{list(values.shape)}")
    rows = _count_examples(src)
    if values.shape[0] != rows:
        raise DataError(f"side-car {name!r}: {values.shape[0]} rows for {rows} examples of {src}")
    out = example_sidecar_dir(jsonl_path, name)
    if out.exists() and not overwrite:
        raise DataError(f"side-car {name!r} of {src} exists ({out}); pass overwrite to replace it")
    def write(tmp: Path) -> None:
        np.save(tmp / VALUES, values)
        meta = {"format": FORMAT, "name": name, "dtype": values.dtype.name, "shape": list(values.shape[1:]),
                "rows": rows, "sha256": sha256_file(str(tmp / VALUES)), "data_file": src.name,
                "data_sha256": sha256_file(str(src)), "made_from": made_from or {}}
        (tmp / MANIFEST).write_text(json.dumps(meta, indent=1) + "\n")

    write_dir_atomically(out, write)
    return out


def read_example_sidecar(jsonl_path: str, name: str, rows: int, verify: str = "lazy") -> np.ndarray:
    """Side-car `name` of `jsonl_path` as an array [rows, ...], checked against the file.

    Always checked: the manifest, the jsonl's sha256 (made from this version of the file), the
    row count and the .npy header; `verify="full"` also hashes values.npy.
    """
    check_extra_names([name], "data.sidecars")
    folder = example_sidecar_dir(jsonl_path, name)
    where = f"side-car {name!r} of {jsonl_path}"
    if not (folder / MANIFEST).is_file():
        raise DataError(f"{where} does not exist (available: {available_example_sidecars(jsonl_path) or 'none'})")
    meta = read_format_json(str(folder / MANIFEST), FORMAT, where)
    for key in ("dtype", "shape", "rows", "sha256", "data_sha256"):
        if key not in meta:
            raise DataError(f"{where}: {folder / MANIFEST} lacks key {key!r}; rewrite the side-car")
    if meta["data_sha256"] != sha256_file(str(jsonl_path)):
        raise DataError(f"{where} was made from another version of {jsonl_path} (sha256 differs); recompute it")
    if int(meta["rows"]) != rows:
        raise DataError(f"{where} has {meta['rows']} rows, the file has {rows} examples: length mismatch")
    file = folder / VALUES
    if not file.is_file():
        raise DataError(f"{where}: {file} is missing")
    if verify == "full" and sha256_file(str(file)) != meta["sha256"]:
        raise DataError(f"{where}: {file} fails its sha256 check (corrupt); recompute the side-car")
    try:
        arr = np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{where}: {file} is not a readable .npy array (truncated or corrupt): {e}") from None
    want = (rows, *map(int, meta["shape"]))
    if arr.shape != want or arr.dtype.name != meta["dtype"]:
        raise DataError(f"{where}: {file} holds {arr.dtype.name}{list(arr.shape)}, the manifest says "
                        f"{meta['dtype']}{list(want)}")
    return arr


def _count_examples(path: Path) -> int:
    with path.open(encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())
