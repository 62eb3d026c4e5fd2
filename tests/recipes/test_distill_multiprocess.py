"""`distill` under `torchrun --nproc_per_node 2` (gloo, CPU): DeepSpeed ZeRO-2 and ZeRO-3 with an
online teacher (top-k and dense targets) and with a cached one follow the single-process run
(loss, gradient norm, KD term) within 1e-5 relative. Under ZeRO-3 every parameter is sharded,
so a loss reading the student's output weight before it is gathered would differ (or fail).

Routing stays on: its quantile is per window, so splitting the global batch over ranks and
micro-batches routes the same positions.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from llmcore.config.load import load_run_config
from llmcore.train.loop import Trainer
from recipes.distill.cache import write_cache

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "tests" / "multiprocess" / "driver.py"
CACHED = ("distill.cache=kd", "distill.top_k=8", "data.sidecars=[kd_ids,kd_logp,kd_lse,kd_entropy]")


def overrides(data, out_dir, *extra) -> list[str]:
    # micro 2 x 2 ranks = global 4: one process accumulates the same 4 windows in 2 micro-batches
    return [f"data.path={data}", f"train.out_dir={out_dir}", "model.preset=tiny", "model.n_layers=2",
            "data.seq_len=32", "train.max_steps=3", "train.micro_batch_size=2", "train.global_batch_size=4",
            "train.log_every=1", "train.progress=false", "train.eval_batches=1", "optim.lr=1e-2",
            "schedule.kind=constant", "schedule.warmup_steps=0", *extra]


def student(data, out_dir, *extra) -> list[str]:
    return overrides(data, out_dir, "recipes=[distill]", "distill.alpha=0.5", "distill.temperature=2.0", *extra)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str]) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(_free_port()), str(DRIVER), *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]


def rows(out_dir) -> list[dict]:
    return [json.loads(line) for line in open(Path(out_dir) / "metrics.jsonl") if '"loss"' in line]


@pytest.fixture(scope="module")
def setup(prepared, tmp_path_factory):
    root = tmp_path_factory.mktemp("distill_mp")
    teacher = root / "teacher"
    Trainer(load_run_config(None, overrides(prepared, teacher, "train.seed=5"))).fit()
    data = root / "data"
    shutil.copytree(prepared, data)
    write_cache(str(teacher), str(data), "kd", top_k=8, seq_len=32, progress=False)
    return teacher, data, root


@pytest.mark.parametrize("stage,mode", [(2, "online"), (3, "online_dense"), (2, "cached"), (3, "cached")])
def test_zero_follows_single_process(setup, tmp_path, stage, mode):
    teacher, data, root = setup
    extra = {"online": (f"distill.teacher={teacher}",),
             "online_dense": (f"distill.teacher={teacher}", "distill.targets=dense"),
             "cached": CACHED}[mode]
    ref = root / f"single_{mode}"
    if not ref.exists():
        Trainer(load_run_config(None, student(data, ref, *extra))).fit()
    ds_json = tmp_path / "zero.json"
    ds_json.write_text(json.dumps({"zero_optimization": {"stage3_param_persistence_threshold": 0}}))
    zero = [f"engine.deepspeed_config={ds_json}"] if stage == 3 else []
    torchrun(student(data, tmp_path / "z", "engine.backend=deepspeed", f"engine.zero_stage={stage}", *zero, *extra))
    want, got = rows(ref), rows(tmp_path / "z")
    assert len(got) == len(want) == 3
    for key in ("loss", "grad_norm", "distill/soft", "distill/hard", "distill/routed"):
        assert [r[key] for r in got] == pytest.approx([r[key] for r in want], rel=1e-5), key
