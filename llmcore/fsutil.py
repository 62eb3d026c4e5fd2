"""File-system helpers shared by everything that writes a folder or a small file atomically
(tokenizer, prepared data, checkpoints and their pointers, run results, Hugging Face export),
and the fsyncs that make such a write durable."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def replace_dir(tmp: str, out_dir: str) -> None:
    """Move the finished `tmp` folder to `out_dir`; an old `out_dir` is removed only after the
    new one is in place, so a crash leaves one complete folder, never none or half of one."""
    old = None
    if os.path.exists(out_dir):
        old = f"{out_dir}.old-{os.getpid()}"
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def check_output_dir(out_dir: str | os.PathLike, overwrite: bool, error: type[Exception]) -> Path:
    """`out_dir` as a Path if it may be written: absent, empty, or `overwrite`; else `error`
    naming the folder. Nothing is touched here."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise error(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise error(f"output folder {out} exists and is not empty; pass overwrite=True "
                    "(--overwrite) to replace it")
    return out


def write_dir_atomically(out: Path, write: Callable[[Path], None]) -> None:
    """Run `write(tmp)` on a fresh folder beside `out`, then move it to `out`; an existing
    `out` is removed only after the new folder is complete, and a failed write leaves `out`
    as it was."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        replace_dir(str(tmp), str(out))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a written file's data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new entry in `path` durable (POSIX: a directory is synced by its fd)."""
    if os.name != "posix":
        return
    fsync_file(path)


def write_text_atomically(path: str | os.PathLike, text: str, durable: bool = False) -> None:
    """Write `text` to `path` through `<path>.tmp-<pid>` and a rename, so a reader (or a crash)
    sees the old file or the new one, never half of one; `durable` also fsyncs the file and its
    folder (for what says a write finished: checkpoint pointers, run results)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
