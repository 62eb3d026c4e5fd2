"""File-system helpers shared by everything that writes a folder atomically (tokenizer,
prepared data, checkpoints saved without an engine, Hugging Face export)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable


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
