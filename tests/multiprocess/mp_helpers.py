"""Helpers of the multi-process tests: the shared run settings, a torchrun launcher, loss curves.

Imported by the test modules here (`from mp_helpers import ...`) and by this folder's conftest.

Every multi-process run is `torchrun --standalone --nproc_per_node N tests/multiprocess/driver.py
key=value ...` in a subprocess (gloo on CPU); single-process references run in the pytest
process with the same settings, so the only difference is how the global batch is split.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("driver.py")

# Global batch 8 = 2 processes x micro-batch 2 x 2 accumulation steps (4 steps in one process),
# so accumulation and the cross-rank reduction are both exercised.
BASE = ["model.preset=tiny", "data.seq_len=32", "train.micro_batch_size=2", "train.global_batch_size=8",
        "train.log_every=1", "train.progress=false", "train.eval_batches=2", "optim.lr=3e-3",
        "schedule.warmup_steps=2"]

# ZeRO-3 keeps parameters below this many elements gathered; the tiny model's are all below
# the default (1e5), so the tests set 0 to make every parameter really sharded.
ZERO3_JSON = {"zero_optimization": {"stage3_param_persistence_threshold": 0}}


def overrides(prepared: Path, out_dir: Path, *extra: str) -> list[str]:
    return [f"data.path={prepared}", f"train.out_dir={out_dir}", *BASE, *extra]


def torchrun(nproc: int, args: list[str], check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the driver under torchrun; on failure (when `check`) show the tail of its output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions"))  # DeepSpeed's JIT op, built once
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(DRIVER), *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
                             f"\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def curve(out_dir: Path, key: str = "loss") -> dict[int, float]:
    """step -> metric of a run's metrics.jsonl (`loss`, `grad_norm`, ...)."""
    rows = [json.loads(line) for line in open(Path(out_dir) / "metrics.jsonl")]
    return {r["step"]: r[key] for r in rows if key in r and "val_loss" not in r}


def losses(out_dir: Path) -> dict[int, float]:
    return curve(out_dir, "loss")


def assert_curves_close(ref_dir: Path, got_dir: Path, rel: float, keys=("loss", "grad_norm")) -> None:
    """Per-step loss and pre-clip gradient norm of two runs agree to `rel`. The norm is what
    catches a wrong gradient scale: Adam's update (and so the loss) hardly sees one."""
    for key in keys:
        ref, got = curve(ref_dir, key), curve(got_dir, key)
        assert ref and sorted(got) == sorted(ref), (key, sorted(ref), sorted(got))
        worst = max(abs(got[s] - ref[s]) / abs(ref[s]) for s in ref)
        assert worst <= rel, f"{key} curves differ by {worst:.2e} relative (> {rel:.0e}):\n{ref}\n{got}"


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` (relative path -> digest): 'nothing was modified'."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}
