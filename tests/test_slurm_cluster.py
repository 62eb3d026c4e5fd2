"""slurm/train.sbatch on a real one-node slurm started by slurm/local_cluster.sh (Debian's slurm
and munge): the time-limit warning (SIGUSR1) checkpoints, the job requeues itself and the requeued
job resumes and finishes; `scancel` checkpoints and the job ends CANCELLED, not requeued.

No accounting database, so no `sacct`: job states come from `scontrol show job` (finished jobs
stay there for MinJobAge) and from the cluster's jobcomp log. Skipped, with the reason, where the
cluster cannot be installed or started. One training process per job (tiny preset, seq_len 32).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "slurm" / "local_cluster.sh"
SBATCH = ROOT / "slurm" / "train.sbatch"

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


@pytest.fixture(scope="module")
def cluster():
    """The environment for slurm commands; stops the daemons afterwards only if it started them."""
    try:
        proc = subprocess.run(["bash", str(CLUSTER), "start"], capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"no local slurm: slurm/local_cluster.sh start: {e}")
    said = proc.stdout + proc.stderr
    conf = re.search(r"^export SLURM_CONF=(\S+)$", proc.stdout, re.MULTILINE)
    if proc.returncode != 0 or not conf:
        pytest.skip(f"no local slurm: slurm/local_cluster.sh start exited {proc.returncode}: {said[-1500:]}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_"))}
    env["SLURM_CONF"] = conf.group(1)
    yield env, Path(conf.group(1)).parent
    if "slurmctld: started" in said:
        subprocess.run(["bash", str(CLUSTER), "stop"], capture_output=True, timeout=120)


def _job(env, job_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict (JobState, Restarts, ExitCode, ...)."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout))


def _losses(out: Path) -> dict[int, float]:
    import json

    rows = []
    for line in (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written while we poll
            pass
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _wait(what: str, ready, timeout: float, job_log: Path) -> None:
    deadline = time.time() + timeout
    while not ready():
        if time.time() > deadline:
            text = job_log.read_text() if job_log.is_file() else "(no job output yet)"
            pytest.fail(f"timed out waiting for {what}; job output:\n{text[-4000:]}")
        time.sleep(0.2)


def _submit(env, tmp_path: Path, prepared: Path, name: str, max_steps: int) -> tuple[str, Path, Path]:
    """sbatch slurm/train.sbatch on the tiny preset, this worktree's code -> (job id, out_dir, job output)."""
    out = tmp_path / name
    job_env = {**env, "LLMCORE_PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
               "LLMCORE_LOG_ROOT": str(tmp_path / "logs")}
    cmd = ["sbatch", "--parsable", f"--job-name={name}", f"--output={tmp_path}/slurm-%x-%j.out",
           "--gpus-per-node=0", "--cpus-per-task=1", "--time=10", str(SBATCH),
           f"data.path={prepared}", f"train.out_dir={out}", "model.preset=tiny", "data.seq_len=32",
           "train.micro_batch_size=2", "train.global_batch_size=2", "train.log_every=1", "train.progress=false",
           "train.eval_batches=2", f"train.max_steps={max_steps}"]
    sub = subprocess.run(cmd, env=job_env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip().split(";")[0]
    return job_id, out, tmp_path / f"slurm-{name}-{job_id}.out"


def _finished(env, job_id: str) -> bool:
    return _job(env, job_id).get("JobState") not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING",
                                                     "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED")


def _cancel(env, job_id: str) -> None:
    """Leave nothing behind on the cluster, also under a launcher that requeues on scancel."""
    for _ in range(30):
        state = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=env, capture_output=True, text=True)
        if state.returncode != 0 or _finished(env, job_id):
            return
        subprocess.run(["scancel", job_id], env=env, capture_output=True)
        time.sleep(1)


def _jobcomp(cluster_dir: Path, job_id: str) -> list[str]:
    """Final states the cluster's jobcomp log recorded for the job, oldest first."""
    log = cluster_dir / "log" / "jobcomp.log"
    lines = log.read_text().splitlines() if log.is_file() else []
    return [m.group(1) for line in lines if (m := re.search(rf"^JobId={job_id} .*JobState=(\S+)", line))]


def test_time_limit_warning_checkpoints_requeues_and_the_job_resumes_to_the_end(cluster, prepared, tmp_path):
    """The warning is delivered by `scancel --signal=USR1 JOB`: to the job's steps and not the batch
    shell, as slurmctld sends `--signal=USR1@<s>` before the time limit, at a moment the test picks."""
    env, cluster_dir = cluster
    max_steps = 600
    job_id, out, job_log = _submit(env, tmp_path, prepared, "llmcore-requeue", max_steps)
    try:
        _wait("3 training steps", lambda: len(_losses(out)) >= 3, 300, job_log)
        sig = subprocess.run(["scancel", "--signal=USR1", job_id], env=env, capture_output=True, text=True)
        assert sig.returncode == 0, sig.stderr
        _wait("the requeue", lambda: int(_job(env, job_id).get("Restarts", 0)) >= 1, 300, job_log)
        _wait("the requeued job to finish", lambda: _finished(env, job_id), 600, job_log)
    finally:
        _cancel(env, job_id)
    text = job_log.read_text()
    job = _job(env, job_id)
    assert (job["JobState"], job["Restarts"], job["ExitCode"]) == ("COMPLETED", "1", "0:0"), text[-4000:]
    assert f"[llmcore] job {job_id} attempt 0 " in text and f"[llmcore] job {job_id} attempt 1 " in text
    assert "got SIGUSR1; forwarding it to the training processes" in text
    assert text.count(f"[launch] scontrol requeue {job_id}") == 1
    from llmcore.train import checkpoint

    resumed = re.findall(r"resumed from (\S+) at step (\d+)", text)
    assert len(resumed) == 1, text[-4000:]
    stopped_at = int(resumed[0][1])
    assert 3 <= stopped_at < max_steps and Path(resumed[0][0]).name == checkpoint.ckpt_name(stopped_at)
    final = checkpoint.resolve(out)
    assert checkpoint.read_state(final)["step"] == max_steps and final.name == checkpoint.ckpt_name(max_steps)
    assert max(_losses(out)) == max_steps
    assert _jobcomp(cluster_dir, job_id)[-1] == "COMPLETED"


def test_scancel_checkpoints_and_the_job_ends_cancelled(cluster, prepared, tmp_path):
    env, cluster_dir = cluster
    job_id, out, job_log = _submit(env, tmp_path, prepared, "llmcore-cancel", 100000)
    try:
        _wait("3 training steps", lambda: len(_losses(out)) >= 3, 300, job_log)
        cancel = subprocess.run(["scancel", job_id], env=env, capture_output=True, text=True)
        assert cancel.returncode == 0, cancel.stderr
        _wait("the job to end", lambda: _finished(env, job_id), 120, job_log)
        _wait("the batch shell's last line", lambda: "[llmcore] srun exited" in job_log.read_text(), 120, job_log)
        time.sleep(3)  # a requeue would show now (the launcher asks for it before exiting)
        job = _job(env, job_id)
    finally:
        _cancel(env, job_id)
    text = job_log.read_text()
    assert (job["JobState"], job["Restarts"]) == ("CANCELLED", "0"), text[-4000:]
    assert "got SIGTERM; forwarding it to the training processes (they checkpoint and exit); no requeue" in text
    assert "stopped by SIGTERM (scancel or preemption): not requeueing" in text
    assert "[launch] scontrol requeue" not in text and "attempt 1" not in text
    from llmcore.train import checkpoint

    saved = checkpoint.resolve(out)  # checkpointed on SIGTERM
    step = checkpoint.read_state(saved)["step"]
    assert 3 <= step < 100000 and saved.name == checkpoint.ckpt_name(step)
    assert _jobcomp(cluster_dir, job_id) == ["CANCELLED"]
