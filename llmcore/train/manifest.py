"""A checkpoint's manifest: the size and sha256 of every file in it, written at save time and
checked before anything is loaded.

Used by `llmcore.train.checkpoint` (save writes it, the trainer verifies it on resume). Some
files of a checkpoint are pickles we do not control (DeepSpeed's partition files, loaded by
DeepSpeed with `torch.load(weights_only=False)`); checking them against the manifest first
means a file modified or corrupted after the save is refused by name before any unpickling.
The manifest cannot stop someone who rewrites it too: a checkpoint folder is trusted input
(see the README's Checkpoints section).

Why sha256 per 16 MiB chunk rather than one sha256 per file: one sha256 is a sequential pass
(~1.4 GB/s a core), while chunks hash in parallel threads (hashlib releases the GIL), so
verifying a 150m checkpoint (~1.8 GB with AdamW state) costs a fraction of loading it. A chunk
list is as strong a check as one digest of the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from llmcore.errors import CheckpointError

MANIFEST = "manifest.json"
FORMAT = "llmcore-checkpoint-v1"
CHUNK = 16 << 20  # 16 MiB: small enough to spread a 600 MB file over every core, large enough for few jobs


def _threads() -> int:
    return max(1, min(16, os.cpu_count() or 1))


def _files(ckpt: Path) -> list[str]:
    """Every file under `ckpt` except the manifest, as sorted POSIX relative paths."""
    return sorted(p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*")
                  if p.is_file() and p.relative_to(ckpt).as_posix() != MANIFEST)


def _hash_chunk(path: Path, index: int) -> str:
    with open(path, "rb") as f:
        f.seek(index * CHUNK)
        return hashlib.sha256(f.read(CHUNK)).hexdigest()


def _digests(ckpt: Path, sizes: dict[str, int]) -> dict[str, list[str]]:
    """sha256 of every CHUNK of every file (an empty file has one chunk: the empty digest)."""
    jobs = [(name, i) for name, size in sizes.items() for i in range(max(1, -(-size // CHUNK)))]
    with ThreadPoolExecutor(_threads()) as pool:
        hashes = list(pool.map(lambda job: _hash_chunk(ckpt / job[0], job[1]), jobs))
    out: dict[str, list[str]] = {name: [] for name in sizes}
    for (name, _), h in zip(jobs, hashes):
        out[name].append(h)
    return out


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable (POSIX: a directory is synced by its fd)."""
    if os.name != "posix":
        return
    fsync_file(path)


def write(ckpt: Path) -> None:
    """Hash and fsync every file of the finished checkpoint folder `ckpt`, then write its
    manifest (fsynced, as is every folder), so that after the rename that publishes `ckpt`
    the data is on disk even across a power loss."""
    names = _files(ckpt)
    sizes = {n: (ckpt / n).stat().st_size for n in names}
    digests = _digests(ckpt, sizes)
    for n in names:
        fsync_file(ckpt / n)
    body = {"format": FORMAT, "chunk_bytes": CHUNK,
            "files": {n: {"bytes": sizes[n], "sha256": digests[n]} for n in names}}
    (ckpt / MANIFEST).write_text(json.dumps(body, indent=1))
    fsync_file(ckpt / MANIFEST)
    for d in sorted({(ckpt / n).parent for n in names} | {ckpt}, key=lambda p: -len(p.parts)):
        fsync_dir(d)


def read(ckpt: Path) -> dict | None:
    """The parsed manifest of `ckpt`, None when it has none (made before manifests existed)."""
    path = ckpt / MANIFEST
    if not path.is_file():
        return None
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is unreadable: {e}") from None
    if (not isinstance(body, dict) or body.get("format") != FORMAT or not isinstance(body.get("files"), dict)
            or body.get("chunk_bytes") != CHUNK):
        raise CheckpointError(f"{path} is not an {FORMAT} manifest with chunk_bytes {CHUNK} and a `files` table")
    for name, entry in body["files"].items():
        if not (isinstance(entry, dict) and isinstance(entry.get("bytes"), int)
                and isinstance(entry.get("sha256"), list)):
            raise CheckpointError(f"{path}: entry {name!r} lacks `bytes` or a `sha256` chunk list")
    return body


def verify(ckpt: Path, only: tuple[str, ...] | None = None) -> bool:
    """Check every file of `ckpt` against its manifest: none missing, none added, every size
    and chunk digest equal. CheckpointError naming the files that differ (nothing is loaded
    or changed); False when `ckpt` has no manifest, True when it verified. `only` limits the
    check to those files (what an inference load reads: the weights, not the optimizer)."""
    body = read(ckpt)
    if body is None:
        return False
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
    digests = _digests(ckpt, sizes)
    problems += [f"{n} fails its sha256 check (corrupt or modified)" for n in sorted(sizes)
                 if digests[n] != listed[n]["sha256"]]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise CheckpointError(f"{ckpt} does not match its {MANIFEST}: {shown}. Nothing was trained or written, "
                              "and no pickle was read; resume from "
                              "another checkpoint (point `latest` at it) or restore this one from a backup")
    return True


def verify_in_background(ckpt: Path) -> Future:
    """`verify(ckpt)` started on a thread: the hashing (which releases the GIL) overlaps the
    loading of our own files, which are never pickles; the caller waits on `.result()` before
    reading anything that could run code (DeepSpeed's partition files) and before training."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmcore-verify")
    future = pool.submit(verify, ckpt)
    pool.shutdown(wait=False)
    return future
