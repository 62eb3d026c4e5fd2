"""File-system helpers shared by everything that writes a folder atomically (tokenizer,
prepared data)."""

from __future__ import annotations

import os
import shutil


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
