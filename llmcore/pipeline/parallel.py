"""Independent runs of a pipeline at the same time: `llmcore pipeline --jobs N`.

A run may start once every run it takes a checkpoint from (`Run.sources`) has finished, so
with N jobs the seeds of a sweep, or the stages started from one source, train side by side
while each run still sees exactly the inputs it would see in order. Each run trains in a
fresh worker process (spawned, so no state of the parent leaks into it) exactly as the
sequential runner trains it, and writes the same files; only the schedule differs, so a
rerun with any number of jobs skips what finished and resumes what was interrupted.

Choices made here:
- threads: a worker whose environment sets no OMP_NUM_THREADS gets cpu_count // N torch
  threads; N workers at the default thread count each would oversubscribe the cores, which
  on a small CPU costs far more than the parallelism gains;
- devices: with at least N visible CUDA devices each worker sees one (CUDA_VISIBLE_DEVICES
  by slot), otherwise all of them (the user sizes N to the memory);
- logs: every line a worker logs starts with its run's name; progress bars are turned off in
  workers, whose bars would overwrite each other on one terminal;
- a failed run stops new launches, lets the running ones finish, then raises its error;
  SIGTERM / SIGUSR1 is passed to every worker (each checkpoints and stops) and nothing new
  starts: rerun to go on, as with one job. A worker the signal reaches before its trainer
  listens is killed with its checkpoints as they were, and counts as not started;
- recipes: workers find them as any process does (entry points, `LLMCORE_RECIPE_MODULES`);
  one registered only in the parent's memory (`temporary_recipe`) is unknown there.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import signal
import traceback
from multiprocessing.connection import wait

from llmcore.errors import ConfigError
from llmcore.pipeline.plan import Run

log = logging.getLogger("llmcore.pipeline")


def slot_env(slot: int, jobs: int, devices: list[str], cpus: int, env: dict[str, str]) -> dict[str, str]:
    """Environment variables for the worker in `slot` (0..jobs-1): its torch threads when the
    environment sets none, and its one CUDA device when there are at least `jobs`."""
    out = {}
    if "OMP_NUM_THREADS" not in env:
        out["OMP_NUM_THREADS"] = str(max(1, cpus // jobs))
    if len(devices) >= jobs:
        out["CUDA_VISIBLE_DEVICES"] = devices[slot]
    return out


def _visible_devices() -> list[str]:
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d for d in listed.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def _worker(run_one, run: Run, env: dict[str, str], conn) -> None:
    os.environ.update(env)
    from llmcore.train.metrics import setup_logging

    if "OMP_NUM_THREADS" in env:
        import torch

        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    setup_logging(tag=run.name)
    run.config.train.progress = False
    try:
        conn.send(("row", run_one(run, True)))
    except BaseException as e:  # noqa: BLE001 - every failure goes back to the parent, named
        try:
            conn.send(("error", e, traceback.format_exc()))
        except (pickle.PicklingError, TypeError, AttributeError):  # it does not pickle: its text still names it
            conn.send(("error", RuntimeError(f"{type(e).__name__}: {e}"), traceback.format_exc()))
    finally:
        conn.close()


def run_parallel(runs: list[Run], jobs: int, run_one) -> list[dict]:
    """Rows of `runs` (in their order), trained `jobs` at a time in worker processes as soon as
    their sources have finished. `run_one(run, main)` trains one run and returns its row (a
    module-level function: workers are spawned); a finished run's row comes from it in this
    process. Raises the first failed run's error, after the others have ended."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("llmcore pipeline --jobs > 1 runs each run in its own process; under torchrun every "
                          "rank must run the same runs in order: use --jobs 1")
    ctx = multiprocessing.get_context("spawn")
    devices, cpus = _visible_devices(), os.cpu_count() or 1
    rows: dict[str, dict] = {}
    pending = []
    for run in runs:
        if run.state == "finished":
            rows[run.name] = run_one(run, True)
        else:
            pending.append(run)
    live: dict[object, tuple[Run, object, int]] = {}  # connection -> (run, process, slot)
    failed: list[tuple[Run, BaseException, str]] = []
    stopping = []

    def forward(signum, frame):
        stopping.append(signum)
        log.warning("received signal %d: passing it to %d running run(s); nothing new starts", signum, len(live))
        for _, proc, _ in live.values():
            if proc.pid:
                os.kill(proc.pid, signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        while pending or live:
            free = sorted(set(range(jobs)) - {slot for _, _, slot in live.values()})
            for run in [r for r in pending if all(src in rows for src in r.sources.values())]:
                if not free or failed or stopping:
                    break
                slot = free.pop(0)
                here, there = ctx.Pipe(duplex=False)
                env = slot_env(slot, jobs, devices, cpus, os.environ)
                proc = ctx.Process(target=_worker, args=(run_one, run, env, there), name=run.name)
                proc.start()
                there.close()
                live[here] = (run, proc, slot)
                pending.remove(run)
                log.info("%s: started in worker %d of %d", run.title, slot + 1, jobs)
                if stopping and isinstance(stopping[-1], int):  # a signal that came during the start
                    os.kill(proc.pid, stopping[-1])
            if not live:
                break  # what is left waits on a failed or stopped run
            for conn in wait(list(live)):
                run, proc, _ = live.pop(conn)
                try:
                    message = conn.recv()
                except EOFError:
                    message = None
                except Exception as e:  # noqa: BLE001 - an error that pickled but does not unpickle
                    message = ("error", RuntimeError(f"{run.title} failed; its error could not be read back: {e}"), "")
                proc.join()
                if message is None and stopping and proc.exitcode in (-signal.SIGTERM, -signal.SIGUSR1):
                    # the signal reached the worker before its trainer listened (or after it
                    # stopped listening): killed, with its checkpoints as they were; a rerun goes on
                    log.warning("%s: stopped by the signal before it could checkpoint; rerun the pipeline to "
                                "resume it", run.title)
                    pending.append(run)
                    continue
                if message is None:
                    message = ("error", RuntimeError(f"the worker of {run.title} died without a result "
                                                     f"(exit code {proc.exitcode})"), "")
                if message[0] == "row":
                    rows[run.name] = message[1]
                    if message[1]["status"] == "stopped":  # a signal sent to the worker itself
                        stopping.append(run.name)
                else:
                    failed.append((run, message[1], message[2]))
                    log.error("%s failed:\n%s", run.title, message[2])
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if failed:
        raise failed[0][1]
    if pending:
        log.warning("%d run(s) not started: %s; rerun the pipeline to go on", len(pending),
                    ", ".join(r.name for r in pending))
    return [rows[r.name] for r in runs if r.name in rows]  # plan order
