"""Tidy a run folder after a crash, before the trainer reads or writes it (rank 0, under the
run lock).

What a kill at any point of `checkpoint.save` or `checkpoint.prune` can leave, and what
happens to each:
- `ckpt-N.tmp/` (a save not finished), `ckpt-N.trash/` (a prune not finished), and
  `latest.tmp-<pid>` / `best.tmp-<pid>` (a pointer not yet renamed): deleted;
- `ckpt-N.old/` (a re-save of step N interrupted mid-swap): deleted when `ckpt-N` exists (the
  new copy is complete), else renamed back to `ckpt-N` (it is the only complete copy);
- `ckpt-M/` newer than the one `latest` names (a save interrupted after its rename, before
  `latest` moved): deleted, since the resumed run will write its own step M; keeping it would
  let pruning prefer it over the checkpoint the run resumed from.
Each removal is logged with the reason.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from llmcore.train import checkpoint
from llmcore.train.metrics import log

_DIR_JUNK = re.compile(r"^ckpt-\d+(\.tmp|\.trash)$")
_POINTER_TMP = re.compile(rf"^(latest|{checkpoint.BEST})\.tmp-\d+$")
_ASIDE = re.compile(rf"^(ckpt-\d+){re.escape(checkpoint.ASIDE)}$")


def tidy(out: Path) -> None:
    """Apply the rules of the module docstring to run folder `out` (absent: nothing to do)."""
    if not out.is_dir():
        return
    for p in sorted(out.iterdir()):
        if _DIR_JUNK.match(p.name) and p.is_dir():
            log.warning("%s: removing %s, left by an interrupted %s", out, p.name,
                        "save" if p.name.endswith(".tmp") else "prune")
            shutil.rmtree(p)
        elif _POINTER_TMP.match(p.name) and p.is_file():
            log.warning("%s: removing %s, left by an interrupted pointer update", out, p.name)
            p.unlink()
        elif (m := _ASIDE.match(p.name)) and p.is_dir():
            if (out / m.group(1)).is_dir():
                log.warning("%s: removing %s, the old copy of a completed re-save", out, p.name)
                shutil.rmtree(p)
            else:
                log.warning("%s: restoring %s from %s (a re-save of that step was interrupted)",
                            out, m.group(1), p.name)
                p.rename(out / m.group(1))
    name = checkpoint.pointed(out, "latest")
    m = checkpoint.CKPT_RE.match(name or "")
    newest = int(m.group(1)) if m else -1
    for step in checkpoint.complete_steps(out):
        if step > newest:
            log.warning("%s: removing orphan checkpoint %s, newer than the one `latest` names (%s): a save "
                        "interrupted before `latest` moved", out, checkpoint.ckpt_name(step), name or "none")
            checkpoint.remove(out, checkpoint.ckpt_name(step))
