"""One run per `train.out_dir`: an exclusive lock file `out_dir/.lock` naming its holder.

Taken by the trainer's rank 0 before it reads or writes anything in the folder, released when
`fit()` ends (or the Trainer fails to build). Without it a second job on the same folder
silently resumes from the first one's in-flight checkpoints and both exit 0.

How: `flock` on the file (released by the kernel when the holder dies, so a crashed run never
blocks the next one on the same host), and the holder's host and pid written in it for the
error message. A file naming a dead pid on this host is a stale lock and is taken over with a
log line. A file naming another host whose lock we could still take (a file system without
cross-host `flock`) cannot be judged alive or dead from here: refused, saying how to clear it.
"""

from __future__ import annotations

import fcntl
import gc
import json
import os
import socket
import time
from pathlib import Path

from llmcore.errors import CheckpointError
from llmcore.train.metrics import log

LOCK = ".lock"


class RunLockError(CheckpointError):
    """The out_dir is in use by another run."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class RunLock:
    """The lock on one out_dir; `acquire()` raises RunLockError naming the holder."""

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _holder(self, fd: int) -> dict:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 4096)
        try:
            holder = json.loads(raw) if raw.strip() else {}
        except ValueError:
            holder = {"raw": raw[:200].decode(errors="replace")}
        return holder if isinstance(holder, dict) else {}

    def _refuse(self, holder: dict, why: str) -> None:
        who = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
        since = f" since {holder['since']}" if "since" in holder else ""
        raise RunLockError(f"{self.out_dir} is in use by another run ({who}{since}, {why}); two runs must not "
                           f"share a train.out_dir. Give this run another out_dir, or if that run is gone, "
                           f"delete {self.path}")

    def acquire(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        host, pid = socket.gethostname(), os.getpid()
        collected = False
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder(fd)
                os.close(fd)
                if holder.get("pid") == pid and holder.get("host") == host and not collected:
                    # held in this process: maybe by a Trainer already dropped but not yet
                    # collected (its lock goes with it); a live one still holds it after this
                    collected = True
                    gc.collect()
                    continue
                self._refuse(holder, "it holds the lock" + (" (in this very process)" if holder.get("pid") == pid
                                                             else ""))
            # the holder may have unlinked the file between our open and our flock: retry on the new one
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        holder = self._holder(fd)
        if holder.get("pid") is not None:
            if holder.get("host") == host and not _alive(int(holder["pid"])):
                log.warning("%s: taking over the stale lock of pid %s on %s (that process is gone)",
                            self.path, holder["pid"], host)
            elif holder.get("host") != host:
                os.close(fd)
                self._refuse(holder, "the file system gave us its flock, so its liveness cannot be checked "
                                     "from this host")
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps({"host": host, "pid": pid, "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Remove the file, then unlock (a waiter that opened the old file sees it unlinked and retries)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(fd)

    def __del__(self):  # a Trainer dropped without fit() must not keep its folder locked
        self.release()
