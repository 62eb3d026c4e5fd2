"""slurm/: the launcher's dry run (exact commands from SLURM_* variables), host lists, GPU
counts, the sbatch script's dry run, which stop signal requeues (SIGUSR1, the time-limit warning)
and which does not (SIGTERM: scancel, preemption), and a real run with a stand-in `scontrol`:
SIGUSR1 -> checkpoint -> requeue -> resume; SIGTERM -> checkpoint -> exit, no requeue.
tests/test_slurm_cluster.py runs the sbatch script on a real one-node slurm."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "slurm" / "launch.py"
SBATCH = ROOT / "slurm" / "train.sbatch"


def _load_launch():
    spec = importlib.util.spec_from_file_location("slurm_launch", LAUNCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


launch = _load_launch()

ALLOC = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "llm", "SLURM_JOB_NUM_NODES": "2",
         "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_GPUS_ON_NODE": "4", "SLURM_RESTART_COUNT": "1"}


def slurm_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "CUDA_VISIBLE"))}
    return {**env, **ALLOC, **extra}


def dry_run(env: dict, *args: str) -> list[str]:
    proc = subprocess.run([sys.executable, str(LAUNCH), "--dry-run", *args], env=env, capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_dry_run_prints_the_exact_node_commands():
    lines = dry_run(slurm_env(SLURM_NODEID="0"), "recipes/configs/tiny.yaml", "train.max_steps=5")
    assert lines[0] == ("# llmcore slurm launch: job 4242 (llm), attempt 1, node 0 of 2, 4 processes per node, "
                        "rendezvous gpu07:24242")
    assert lines[1:3] == ["mkdir -p logs/slurm/llm-4242/node0", "export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=600"]
    assert shlex.split(lines[3]) == [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=4", "--rdzv_backend=c10d",
        "--rdzv_endpoint=gpu07:24242", "--rdzv_id=4242", "--max_restarts=0",
        "--log_dir=logs/slurm/llm-4242/node0", "--tee=3",
        "-m", "llmcore.cli", "train", "--config", "recipes/configs/tiny.yaml", "train.max_steps=5"]
    assert lines[-3:] == [
        ("# on SIGTERM (scancel, preemption): forward it to the training processes (they checkpoint and exit); "
         "no requeue"),
        "# on SIGUSR1 (time-limit warning): forward it to the training processes (they checkpoint and exit), then:",
        "scontrol requeue 4242"]


def test_dry_run_on_another_node_and_with_explicit_settings():
    env = slurm_env(SLURM_NODEID="1", MASTER_PORT="31111", SLURM_GPUS_ON_NODE="")
    env["SLURM_GPUS_PER_NODE"] = "h100:8"
    lines = dry_run(env, "cfg.yaml", "--grace", "900", "--log-root", "/scratch/logs")
    cmd = shlex.split(lines[3])
    assert "--nproc_per_node=8" in cmd and "--rdzv_endpoint=gpu07:31111" in cmd
    assert "--log_dir=/scratch/logs/llm-4242/node1" in cmd
    assert lines[2] == "export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=900"
    assert not any(line.startswith("scontrol") for line in lines)  # node 0 requeues, not node 1
    assert lines[-1] == "# on SIGUSR1 (time-limit warning): forward it to the training processes; node 0 requeues the job"
    only_overrides = shlex.split(dry_run(slurm_env(SLURM_NODEID="0"), "data.path=d", "train.max_steps=3")[3])
    assert only_overrides[-4:] == ["llmcore.cli", "train", "data.path=d", "train.max_steps=3"]
    nproc = shlex.split(dry_run(slurm_env(SLURM_NODEID="0"), "c.yaml", "--nproc-per-node", "2")[3])
    assert "--nproc_per_node=2" in nproc


@pytest.mark.parametrize("nodelist, hosts", [
    ("node1", ["node1"]),
    ("gpu[07-09]", ["gpu07", "gpu08", "gpu09"]),
    ("gpu[1,3-4],cpu-a", ["gpu1", "gpu3", "gpu4", "cpu-a"]),
    ("r[1-2]-n[01-02]", ["r1-n01", "r1-n02", "r2-n01", "r2-n02"]),
    ("a[098-101]", ["a098", "a099", "a100", "a101"]),
])
def test_expand_nodelist(nodelist, hosts):
    assert launch.expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("bad", ["gpu[1-2", "gpu1-2]", "gpu[a-b]", ""])
def test_bad_nodelist_is_an_error(bad):
    with pytest.raises(launch.LaunchError):
        launch.expand_nodelist(bad)


@pytest.mark.parametrize("env, n", [
    ({"SLURM_GPUS_ON_NODE": "4"}, 4),
    ({"SLURM_GPUS_PER_NODE": "a100:2"}, 2),
    ({"SLURM_GPUS_PER_NODE": "8"}, 8),
    ({"CUDA_VISIBLE_DEVICES": "0,1,2"}, 3),
    ({}, 1),
])
def test_processes_per_node_follow_the_allocation(env, n):
    assert launch.gpus_per_node(env) == n


def test_missing_or_inconsistent_allocation_is_a_clear_error():
    env = {k: v for k, v in slurm_env().items() if k != "SLURM_JOB_ID"}
    proc = subprocess.run([sys.executable, str(LAUNCH), "--dry-run", "c.yaml"], env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "SLURM_JOB_ID is not set" in proc.stderr
    with pytest.raises(launch.LaunchError, match="inconsistent allocation: 3 nodes"):
        launch.plan({**ALLOC, "SLURM_JOB_NUM_NODES": "3"}, "c.yaml", [])
    with pytest.raises(launch.LaunchError, match="SLURM_NODEID=2"):
        launch.plan({**ALLOC, "SLURM_NODEID": "2"}, "c.yaml", [])


def test_sbatch_dry_run_prints_srun_and_the_node_commands(tmp_path):
    env = slurm_env(SLURM_NODEID="0", SLURM_SUBMIT_DIR=str(ROOT), LLMCORE_PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(SBATCH), "--dry-run", "cfg.yaml", "train.max_steps=7"], env=env,
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    srun = shlex.split(next(line for line in lines if line.startswith("srun")))
    assert srun == ["srun", "--nodes=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1", sys.executable,
                    "slurm/launch.py", "cfg.yaml", "train.max_steps=7"]
    torchrun = shlex.split(next(line for line in lines if "torch.distributed.run" in line))
    assert torchrun[-4:] == ["train", "--config", "cfg.yaml", "train.max_steps=7"]
    assert lines[-2:] == [
        "# on SIGUSR1 (time-limit warning): forward it to the training processes (they checkpoint and exit), then:",
        "scontrol requeue 4242"]
    text = SBATCH.read_text()
    for directive in ("--ntasks-per-node=1", "--signal=USR1@180", "--requeue", "--open-mode=append"):
        assert f"#SBATCH {directive}" in text
    usage = subprocess.run(["bash", str(SBATCH)], env=env, capture_output=True, text=True)
    assert usage.returncode == 2 and "usage: sbatch slurm/train.sbatch CONFIG.yaml" in usage.stderr


def _stand_in_scontrol(tmp_path: Path) -> tuple[Path, Path]:
    """A `scontrol` that only records its arguments: (its folder, the file of calls)."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.calls"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    return bin_dir, calls


def _calls(calls: Path) -> list[str]:
    return calls.read_text().splitlines() if calls.exists() else []


# A stand-in torchrun (it only waits for its one worker) and worker: the worker notes each stop
# signal it gets (where the trainer would checkpoint) and exits, with the code the test asks
# for, once the test writes the `go` file.
_TORCHRUN = "import subprocess, sys; sys.exit(subprocess.call([sys.executable, '-c', *sys.argv[1:]]))"
_WORKER = """
import signal, sys, time
from pathlib import Path
seen, go = Path(sys.argv[1]), Path(sys.argv[2])
def on(signum, frame):
    with seen.open("a") as f:
        f.write(signal.Signals(signum).name + "\\n")
for s in (signal.SIGTERM, signal.SIGUSR1):
    signal.signal(s, on)
seen.touch()
while not go.exists():
    time.sleep(0.01)
for s in (signal.SIGTERM, signal.SIGUSR1):  # the launcher resends: do not die of one while exiting
    signal.signal(s, signal.SIG_IGN)
sys.exit(int(go.read_text()))
"""


def _run_stand_in(tmp_path, monkeypatch, signals, node_rank=0, worker_rc=0):
    """`launch.run` in this process on the stand-ins; `signals` go to the launcher one at a time,
    each once the worker has got the one before. -> (rc, signals the worker got, scontrol calls, log)."""
    bin_dir, calls = _stand_in_scontrol(tmp_path)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    seen, go = tmp_path / "seen", tmp_path / "go"
    p = launch.plan({**ALLOC, "SLURM_NODEID": str(node_rank)}, "c.yaml", [], log_root=str(tmp_path / "logs"))
    p.torchrun = [sys.executable, "-c", _TORCHRUN, _WORKER, str(seen), str(go)]

    def got() -> list[str]:
        return list(dict.fromkeys(seen.read_text().split())) if seen.exists() else []

    failed: list[str] = []

    def drive():
        deadline = time.time() + 60
        for sig in [None, *signals]:
            if sig is not None:
                os.kill(os.getpid(), sig)
            while not (seen.exists() if sig is None else sig.name in got()):
                if time.time() > deadline:
                    failed.append(f"the worker never got {sig.name if sig else 'started'}")
                    break
                time.sleep(0.01)
        (tmp_path / "go.tmp").write_text(str(worker_rc))
        (tmp_path / "go.tmp").rename(go)

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    log: list[str] = []
    rc = launch.run(p, log=log.append, resend_every=0.05)
    driver.join(10)
    assert not failed, failed
    return rc, got(), _calls(calls), "\n".join(log)


def test_time_limit_warning_is_forwarded_then_node0_requeues(tmp_path, monkeypatch):
    rc, got, calls, log = _run_stand_in(tmp_path, monkeypatch, [signal.SIGUSR1])
    assert (rc, got, calls) == (0, ["SIGUSR1"], ["requeue 4242"])
    assert "got SIGUSR1; forwarding it to the training processes (they checkpoint and exit); node 0 requeues" in log
    assert "[launch] scontrol requeue 4242" in log


@pytest.mark.parametrize("signals", [[signal.SIGTERM], [signal.SIGUSR1, signal.SIGTERM], [signal.SIGTERM, signal.SIGUSR1]],
                         ids=["TERM", "USR1-then-TERM", "TERM-then-USR1"])
def test_scancel_sigterm_is_forwarded_and_nothing_requeues(tmp_path, monkeypatch, signals):
    """scancel (and preemption) send SIGTERM: the workers checkpoint and exit and the job is not
    requeued, also when the time-limit warning came before or after it."""
    rc, got, calls, log = _run_stand_in(tmp_path, monkeypatch, signals)
    assert (rc, got, calls) == (0, [s.name for s in signals], [])
    assert "stopped by SIGTERM (scancel or preemption): not requeueing" in log
    assert "scontrol requeue" not in log


def test_after_sigterm_the_launcher_exits_with_the_training_exit_code(tmp_path, monkeypatch):
    rc, got, calls, _ = _run_stand_in(tmp_path, monkeypatch, [signal.SIGTERM], worker_rc=3)
    assert (rc, got, calls) == (3, ["SIGTERM"], [])


def test_time_limit_warning_on_another_node_is_forwarded_without_requeue(tmp_path, monkeypatch):
    rc, got, calls, log = _run_stand_in(tmp_path, monkeypatch, [signal.SIGUSR1], node_rank=1)
    assert (rc, got, calls) == (0, ["SIGUSR1"], [])
    assert "scontrol requeue" not in log


def _losses(out: Path) -> dict[int, float]:
    rows = []
    for line in (out / "metrics.jsonl").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written while we poll
            pass
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _wait_for_steps(proc, out: Path, n: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not ((out / "metrics.jsonl").is_file() and len(_losses(out)) >= n):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else "timeout"
        time.sleep(0.5)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_preemption_signal_checkpoints_requeues_and_the_requeued_job_resumes(prepared, tmp_path):
    """A real launch on this machine as a 1-node slurm job with 2 CPU processes (DDP, gloo):
    SIGUSR1 to the launcher -> the workers checkpoint and exit -> `scontrol requeue <job>`;
    the same launch again (the requeued job) resumes from `latest`; SIGTERM to it (scancel) ->
    the workers checkpoint and exit, no second requeue; a third launch resumes and finishes."""
    bin_dir, calls = _stand_in_scontrol(tmp_path)
    out = tmp_path / "run"
    env = slurm_env(SLURM_NODEID="0", SLURM_JOB_NUM_NODES="1", SLURM_JOB_NODELIST="localhost",
                    SLURM_JOB_ID="777", SLURM_RESTART_COUNT="0", SLURM_GPUS_ON_NODE="",
                    PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1",
                    PYTHONPATH=str(ROOT), LLMCORE_LOG_ROOT=str(tmp_path / "logs"))
    args = [sys.executable, str(LAUNCH), "--nproc-per-node", "2", "--port", str(_free_port()),
            f"data.path={prepared}", f"train.out_dir={out}", "model.preset=tiny", "data.seq_len=32",
            "train.micro_batch_size=2", "train.global_batch_size=4", "train.log_every=1", "train.progress=false",
            "train.eval_batches=2", "engine.backend=ddp", "train.max_steps=100000"]
    proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_steps(proc, out, 3)
    proc.send_signal(signal.SIGUSR1)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log[-5000:]
    assert calls.read_text().split() == ["requeue", "777"]
    from llmcore.train import checkpoint

    first = checkpoint.resolve(out)
    stopped_at = checkpoint.read_state(first)["step"]
    assert 3 <= stopped_at < 100000 and first.name == checkpoint.ckpt_name(stopped_at)
    assert (tmp_path / "logs" / "llm-777" / "node0").is_dir()  # per-job, per-node rank logs

    env["SLURM_RESTART_COUNT"] = "1"
    proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_steps(proc, out, stopped_at + 2)
    proc.send_signal(signal.SIGTERM)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log[-5000:]
    assert f"resumed from {first} at step {stopped_at}" in log
    assert "stopped by SIGTERM (scancel or preemption): not requeueing" in log
    assert calls.read_text().split() == ["requeue", "777"]  # SIGTERM: no second requeue
    second = checkpoint.resolve(out)
    cancelled_at = checkpoint.read_state(second)["step"]
    assert stopped_at + 2 <= cancelled_at < 100000 and second.name == checkpoint.ckpt_name(cancelled_at)

    resume = args[:-1] + [f"train.max_steps={cancelled_at + 2}"]
    env["SLURM_RESTART_COUNT"] = "2"
    again = subprocess.run(resume, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, (again.stdout + again.stderr)[-5000:]
    assert f"resumed from {second} at step {cancelled_at}" in again.stdout + again.stderr
    assert sorted(_losses(out))[-2:] == [cancelled_at + 1, cancelled_at + 2]
    assert checkpoint.read_state(checkpoint.resolve(out))["step"] == cancelled_at + 2
    assert calls.read_text().split() == ["requeue", "777"]  # no stop signal, no second requeue


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
