"""A checkpoint's manifest: the size and two digests of every file in it, written at save time
and checked before anything is loaded.

Used by `llmcore.train.checkpoint` (save writes it, the trainer verifies it on resume). Some
files of a checkpoint are pickles we do not control (DeepSpeed's partition files, loaded by
DeepSpeed with `torch.load(weights_only=False)`); checking them against the manifest first
means a file modified or corrupted after the save is refused by name before any unpickling.

What the manifest is for, and what it is not: it detects corruption (bit rot, a truncated
copy, a half-synced file system) and accidental modification. It is no defence against an
attacker: whoever can write the folder can rewrite `manifest.json` to match. Safety from code
execution comes from never unpickling our own files (safetensors, JSON, `weights_only=True`);
DeepSpeed's pickles make a DeepSpeed checkpoint folder trusted input (README, Checkpoints).

Two digests per 16 MiB chunk of every file:
- `xxh3_128` (non-cryptographic, ~10 GB/s a core, hashed straight from an mmap of the page
  cache) is what every load checks: for random corruption a 128-bit check is as good as a
  cryptographic one, and it is cheap enough to hide behind the load (sha256 at ~1.4 GB/s a
  core cost more than the load itself, `benchmarks/RESULTS.md`).
- `sha256` is kept for `verify(full=True)` (`llmcore checkpoint-verify --full`): a digest
  that cannot be forged, for a manifest whose own copy is trusted (kept apart from the
  folder, or compared against a published one).
Chunks rather than one digest per file so that a file spreads over threads (both hashes
release the GIL). Manifests of format v1 (sha256 only) still verify, with sha256.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import xxhash

from llmcore.errors import CheckpointError
from llmcore.fsutil import fsync_dir, fsync_file

MANIFEST = "manifest.json"
FORMAT = "llmcore-checkpoint-v2"
FORMAT_V1 = "llmcore-checkpoint-v1"
"""sha256 chunks only (checkpoints saved before the fast digest): still verified, with sha256."""
CHUNK = 16 << 20  # 16 MiB: small enough to spread a 600 MB file over every core, large enough for few jobs
FAST, STRONG = "xxh3_128", "sha256"
_HASHERS = {FAST: lambda b: xxhash.xxh3_128(b).hexdigest(), STRONG: lambda b: hashlib.sha256(b).hexdigest()}


def _threads() -> int:
    return max(1, min(16, os.cpu_count() or 1))


def _files(ckpt: Path) -> list[str]:
    """Every file under `ckpt` except the manifest, as sorted POSIX relative paths."""
    return sorted(p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*")
                  if p.is_file() and p.relative_to(ckpt).as_posix() != MANIFEST)


def _hash_chunk(path: Path, index: int, size: int, kinds: tuple[str, ...]) -> tuple[str, ...]:
    """The `kinds` digests of chunk `index` of the file at `path` (`size` bytes), read through
    an mmap: the hash reads the page cache directly, with no copy into a Python buffer."""
    length = min(CHUNK, size - index * CHUNK)
    if length <= 0:  # an empty file: one chunk, the digest of nothing
        return tuple(_HASHERS[k](b"") for k in kinds)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), length, access=mmap.ACCESS_READ,
                                          offset=index * CHUNK) as m, memoryview(m) as view:
        return tuple(_HASHERS[k](view) for k in kinds)


def _digests(ckpt: Path, sizes: dict[str, int], kinds: tuple[str, ...],
             threads: int | None = None) -> dict[str, dict[str, list[str]]]:
    """For each file, each of `kinds`' digest of every CHUNK: {name: {kind: [hex, ...]}}."""
    jobs = [(name, i) for name, size in sizes.items() for i in range(max(1, -(-size // CHUNK)))]
    with ThreadPoolExecutor(threads or _threads()) as pool:
        hashes = list(pool.map(lambda job: _hash_chunk(ckpt / job[0], job[1], sizes[job[0]], kinds), jobs))
    out: dict[str, dict[str, list[str]]] = {name: {k: [] for k in kinds} for name in sizes}
    for (name, _), hs in zip(jobs, hashes):
        for k, h in zip(kinds, hs):
            out[name][k].append(h)
    return out


def write(ckpt: Path) -> None:
    """Hash (both digests, one read of each chunk) and fsync every file of the finished
    checkpoint folder `ckpt`, then write its manifest (fsynced, as is every folder), so that
    after the rename that publishes `ckpt` the data is on disk even across a power loss."""
    names = _files(ckpt)
    sizes = {n: (ckpt / n).stat().st_size for n in names}
    digests = _digests(ckpt, sizes, (FAST, STRONG))
    for n in names:
        fsync_file(ckpt / n)
    body = {"format": FORMAT, "chunk_bytes": CHUNK,
            "files": {n: {"bytes": sizes[n], **digests[n]} for n in names}}
    (ckpt / MANIFEST).write_text(json.dumps(body, indent=1))
    fsync_file(ckpt / MANIFEST)
    for d in sorted({(ckpt / n).parent for n in names} | {ckpt}, key=lambda p: -len(p.parts)):
        fsync_dir(d)


def _kinds_of(body: dict) -> tuple[str, ...]:
    return (STRONG,) if body["format"] == FORMAT_V1 else (FAST, STRONG)


def read(ckpt: Path) -> dict | None:
    """The parsed manifest of `ckpt` (format v2, or v1 with sha256 only), None when it has none
    (made before manifests existed)."""
    path = ckpt / MANIFEST
    if not path.is_file():
        return None
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is unreadable: {e}") from None
    if (not isinstance(body, dict) or body.get("format") not in (FORMAT, FORMAT_V1)
            or not isinstance(body.get("files"), dict) or body.get("chunk_bytes") != CHUNK):
        raise CheckpointError(f"{path} is not an {FORMAT} (or {FORMAT_V1}) manifest with chunk_bytes {CHUNK} "
                              "and a `files` table")
    kinds = _kinds_of(body)
    for name, entry in body["files"].items():
        if not (isinstance(entry, dict) and isinstance(entry.get("bytes"), int)
                and all(isinstance(entry.get(k), list) for k in kinds)):
            raise CheckpointError(f"{path}: entry {name!r} lacks `bytes` or a chunk list of "
                                  + " and ".join(f"`{k}`" for k in kinds))
    return body


def verify(ckpt: Path, only: tuple[str, ...] | None = None, *, full: bool = False,
           threads: int | None = None) -> bool:
    """Check every file of `ckpt` against its manifest: none missing, none added, every size
    and chunk digest equal. CheckpointError naming the files that differ (nothing is loaded
    or changed); False when `ckpt` has no manifest, True when it verified. `only` limits the
    check to those files (what an inference load reads: the weights, not the optimizer).

    The digest checked is `xxh3_128` (fast; a v1 manifest has only `sha256`, which is then
    checked); `full` checks `sha256` as well. `threads` hash in parallel (default: the CPUs, at
    most 16)."""
    body = read(ckpt)
    if body is None:
        return False
    kinds = _kinds_of(body) if full else _kinds_of(body)[:1]
    listed = body["files"]
    present = set(_files(ckpt))
    if only is not None:
        listed = {n: e for n, e in listed.items() if n in only}
        present &= set(only)
    problems = [f"{n} is missing" for n in sorted(set(listed) - present)]
    problems += [f"{n} is not in the manifest (added after the save)" for n in sorted(present - set(listed))]
    sizes = {}
    for n in sorted(present & set(listed)):
        size = (ckpt / n).stat().st_size
        if size != listed[n]["bytes"]:
            problems.append(f"{n} has {size} bytes, the manifest says {listed[n]['bytes']} (truncated or modified)")
        else:
            sizes[n] = size
    digests = _digests(ckpt, sizes, kinds, threads)
    problems += [f"{n} fails its {k} check (corrupt or modified)" for n in sorted(sizes) for k in kinds
                 if digests[n][k] != listed[n][k]]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise CheckpointError(f"{ckpt} does not match its {MANIFEST}: {shown}. Nothing was trained or written, "
                              "and no pickle was read; resume from "
                              "another checkpoint (point `latest` at it) or restore this one from a backup")
    return True


def verify_in_background(ckpt: Path, threads: int = 1) -> Future:
    """`verify(ckpt)` started on a thread: the hashing (which releases the GIL) overlaps the
    loading of our own files, which are never pickles; the caller waits on `.result()` before
    reading anything that could run code (DeepSpeed's partition files) and before training.

    One hash thread by default: xxh3 on one core (~10 GB/s) outruns the loader's sequential
    read (~5 GB/s), so more threads only take cores from the load and from other ranks (on 2
    CPUs, 2 threads made the resume 17% slower, 1 thread cost nothing measurable)."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmcore-verify")
    future = pool.submit(verify, ckpt, threads=threads)
    pool.shutdown(wait=False)
    return future
