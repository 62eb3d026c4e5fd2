"""Node-local launcher of `llmcore train` under slurm: one torchrun per node, preemption-safe.

`slurm/train.sbatch` runs this once per node (`srun --ntasks-per-node=1`). It reads the
allocation from the SLURM_* variables, starts

    python -m torch.distributed.run --nnodes=N --nproc_per_node=G --rdzv_backend=c10d
        --rdzv_endpoint=<first node>:<port> --rdzv_id=<job id> ... -m llmcore.cli train --config C ...

and waits. Two stop signals, two meanings:

- SIGUSR1 is the job's own time-limit warning (`#SBATCH --signal=USR1@<seconds>`): the launcher
  forwards it to the training processes, which finish the current step, save a checkpoint and
  exit; node 0 then runs `scontrol requeue $SLURM_JOB_ID`, and the requeued job resumes from
  `train.out_dir/latest`.
- SIGTERM is `scancel` or preemption: forwarded the same way (checkpoint and exit), but nothing
  is requeued, so `scancel` cancels. A preempted job comes back only if the cluster requeues it
  itself (`PreemptMode=REQUEUE`), and it then resumes from the same checkpoint. A SIGTERM after
  a SIGUSR1 (cancelled while checkpointing for the time limit) cancels the requeue too.

torchrun itself ignores SIGUSR1 (a cluster may signal every process of the step, and torchrun
would otherwise die of it) and waits `--grace` seconds for its workers on SIGTERM.

`--dry-run` prints the exact commands instead of running them, so all of this is testable
without slurm. Standard library only: it must start before anything is imported from the venv.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
REQUEUE_SIGNAL = signal.SIGUSR1  # the time-limit warning; SIGTERM (scancel, preemption) never requeues


class LaunchError(Exception):
    """A slurm allocation this launcher cannot use (missing or malformed SLURM_* variables)."""


def expand_nodelist(nodelist: str) -> list[str]:
    """Slurm's compressed host list -> host names: `gpu[07-08,10],cpu1` -> gpu07 gpu08 gpu10 cpu1
    (zero padding kept; several bracket groups in one name expand as a product)."""
    hosts: list[str] = []
    for item in _split_top_level(nodelist):
        hosts.extend(_expand_one(item))
    if not hosts:
        raise LaunchError(f"SLURM_JOB_NODELIST={nodelist!r} names no host")
    return hosts


def _split_top_level(text: str) -> list[str]:
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch == "[") - (ch == "]")
        if depth < 0:
            raise LaunchError(f"unbalanced ']' in host list {text!r}")
        if ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth:
        raise LaunchError(f"unbalanced '[' in host list {text!r}")
    items.append(text[start:])
    return [s.strip() for s in items if s.strip()]


def _expand_one(item: str) -> list[str]:
    m = re.match(r"^([^\[]*)\[([^\]]*)\](.*)$", item)
    if not m:
        return [item]
    prefix, ranges, rest = m.groups()
    out = []
    for part in ranges.split(","):
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise LaunchError(f"cannot read range {part!r} in host list item {item!r}")
        width = len(lo)
        for n in range(int(lo), int(hi or lo) + 1):
            out += [f"{prefix}{n:0{width}d}{tail}" for tail in _expand_one(rest)]
    return out


def gpus_per_node(env: dict[str, str]) -> int:
    """Processes per node = GPUs this node was allocated (SLURM_GPUS_ON_NODE, else
    SLURM_GPUS_PER_NODE such as `a100:4`, else CUDA_VISIBLE_DEVICES), else 1 (CPU)."""
    if env.get("SLURM_GPUS_ON_NODE", "").isdigit():
        return max(1, int(env["SLURM_GPUS_ON_NODE"]))
    per_node = env.get("SLURM_GPUS_PER_NODE", "")
    m = re.search(r"(\d+)(\(.*\))?$", per_node)
    if m:
        return max(1, int(m.group(1)))
    visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return len(visible) or 1


@dataclass
class Plan:
    """Everything one node does: the torchrun command and its environment additions."""

    job_id: str
    job_name: str
    node_rank: int
    num_nodes: int
    nproc: int
    head: str
    port: int
    log_dir: Path
    torchrun: list[str]
    env: dict[str, str]

    @property
    def requeue(self) -> list[str]:
        return ["scontrol", "requeue", self.job_id]


def plan(env: dict[str, str], config: str | None, overrides: list[str], *, nproc: int | None = None,
         port: int | None = None, grace: int = 600, log_root: str = "logs/slurm",
         python: str = sys.executable) -> Plan:
    """The node-local launch for the allocation described by `env` (SLURM_* variables)."""
    job_id = env.get("SLURM_JOB_ID", "")
    if not job_id:
        raise LaunchError("SLURM_JOB_ID is not set: run inside a slurm allocation (sbatch slurm/train.sbatch ...), "
                          "or set the SLURM_* variables by hand with --dry-run")
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "")
    if not nodelist:
        raise LaunchError("SLURM_JOB_NODELIST is not set: cannot find the rendezvous host")
    hosts = expand_nodelist(nodelist)
    num_nodes = int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or len(hosts))
    node_rank = int(env.get("SLURM_NODEID", "0"))
    if num_nodes != len(hosts) or not 0 <= node_rank < num_nodes:
        raise LaunchError(f"inconsistent allocation: {num_nodes} nodes, node list {hosts}, SLURM_NODEID={node_rank}")
    nproc = nproc or gpus_per_node(env)
    # A fixed port per job: every node computes the same one without talking; MASTER_PORT wins.
    port = port or int(env.get("MASTER_PORT") or 20000 + int(re.sub(r"\D", "", job_id) or 0) % 20000)
    job_name = env.get("SLURM_JOB_NAME", "llmcore")
    log_dir = Path(log_root) / f"{job_name}-{job_id}" / f"node{node_rank}"
    cmd = [python, "-m", "torch.distributed.run", f"--nnodes={num_nodes}", f"--nproc_per_node={nproc}",
           "--rdzv_backend=c10d", f"--rdzv_endpoint={hosts[0]}:{port}", f"--rdzv_id={job_id}",
           "--max_restarts=0", f"--log_dir={log_dir}", "--tee=3",
           "-m", "llmcore.cli", "train", *(["--config", config] if config else []), *overrides]
    return Plan(job_id, job_name, node_rank, num_nodes, nproc, hosts[0], port, log_dir, cmd,
                {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(grace)})


def describe(p: Plan, env: dict[str, str]) -> str:
    """The dry-run text: exactly what `run` would execute on this node."""
    attempt = env.get("SLURM_RESTART_COUNT", "0")
    lines = [f"# llmcore slurm launch: job {p.job_id} ({p.job_name}), attempt {attempt}, node {p.node_rank} "
             f"of {p.num_nodes}, {p.nproc} processes per node, rendezvous {p.head}:{p.port}",
             f"mkdir -p {shlex.quote(str(p.log_dir))}"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in p.env.items()]
    lines.append(shlex.join(p.torchrun))
    lines.append("# on SIGTERM (scancel, preemption): forward it to the training processes (they checkpoint "
                 "and exit); no requeue")
    if p.node_rank == 0:
        lines.append("# on SIGUSR1 (time-limit warning): forward it to the training processes (they checkpoint "
                     "and exit), then:")
        lines.append(shlex.join(p.requeue))
    else:
        lines.append("# on SIGUSR1 (time-limit warning): forward it to the training processes; node 0 requeues the job")
    return "\n".join(lines)


def _children(pid: int) -> list[int]:
    """Direct children of `pid` (torchrun's workers), from /proc."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            # comm may hold spaces or parentheses: fields after the last ')' are fixed
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def run(p: Plan, log=print, resend_every: float = 2.0) -> int:
    """Start torchrun and forward stop signals to its workers. After a time-limit warning
    (SIGUSR1) node 0 requeues the job; after a SIGTERM (scancel, preemption) nobody does."""
    p.log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **p.env)
    received: list[int] = []  # stop signals while training ran, in arrival order
    proc: subprocess.Popen | None = None

    def forward() -> None:
        for pid in _children(proc.pid) if proc else []:
            try:
                os.kill(pid, received[-1])
            except ProcessLookupError:
                pass

    def on_signal(signum, frame):
        if proc and proc.poll() is not None:
            return  # training is over: e.g. the SIGTERM slurm sends when our requeue ends the job
        if signum not in received:
            then = "node 0 requeues the job after" if signum == REQUEUE_SIGNAL else "no requeue"
            log(f"[launch] node {p.node_rank}: got {signal.Signals(signum).name}; forwarding it to the "
                f"training processes (they checkpoint and exit); {then}")
        received.append(signum)
        forward()

    # Installed before torchrun starts (a signal in between is forwarded by the loop) and kept
    # until the requeue is done, so the job's end cannot kill us halfway through it.
    old = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    try:
        proc = subprocess.Popen(p.torchrun, env=env,
                                preexec_fn=lambda: signal.signal(signal.SIGUSR1, signal.SIG_IGN))
        while proc.poll() is None:
            time.sleep(resend_every)
            if received:
                # Again: a worker still starting up has no handler yet (SIGUSR1 is ignored
                # until the trainer's loop begins), and workers may have been spawned late.
                forward()
        rc = proc.returncode
        if not received:
            return rc
        log(f"[launch] node {p.node_rank}: training exited {rc} after "
            f"{', '.join(dict.fromkeys(signal.Signals(s).name for s in received))}")
        if set(received) != {REQUEUE_SIGNAL}:
            log(f"[launch] node {p.node_rank}: stopped by SIGTERM (scancel or preemption): not requeueing "
                "(slurm requeues a preempted job itself under PreemptMode=REQUEUE)")
            return rc
        if p.node_rank == 0:
            log(f"[launch] {shlex.join(p.requeue)}")
            req = subprocess.run(p.requeue)
            if req.returncode != 0:
                log(f"[launch] scontrol requeue failed ({req.returncode}); resubmit the job to resume")
                return req.returncode
        return 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", help="run config YAML (recipes/configs/*.yaml)")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=1000")
    ap.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    ap.add_argument("--nproc-per-node", type=int, help="processes per node (default: GPUs allocated, else 1)")
    ap.add_argument("--port", type=int, help="rendezvous port (default: MASTER_PORT, else derived from the job id)")
    ap.add_argument("--grace", type=int, default=600,
                    help="seconds torchrun waits for its workers to checkpoint after SIGTERM (default 600)")
    ap.add_argument("--log-root", default=os.environ.get("LLMCORE_LOG_ROOT", "logs/slurm"),
                    help="per-rank logs go to <log-root>/<job name>-<job id>/node<k>/")
    a = ap.parse_args(argv)
    config, overrides = a.config, list(a.overrides)
    if config and "=" in config and not config.endswith((".yaml", ".yml")):
        config, overrides = None, [config, *overrides]  # only overrides were given
    try:
        p = plan(dict(os.environ), config, overrides, nproc=a.nproc_per_node, port=a.port, grace=a.grace,
                 log_root=a.log_root)
    except LaunchError as e:
        print(f"launch.py: error: {e}", file=sys.stderr)
        return 2
    if a.dry_run:
        print(describe(p, dict(os.environ)))
        return 0
    print(describe(p, dict(os.environ)), flush=True)
    return run(p, log=lambda msg: print(msg, flush=True))


if __name__ == "__main__":
    sys.exit(main())
