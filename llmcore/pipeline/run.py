"""The pipeline runner: every run in order as an ordinary `Trainer(cfg).fit()` (or N at a time
in worker processes, `llmcore.pipeline.parallel`), finished runs skipped, interrupted ones
resumed, then the summary.

Used by `llmcore pipeline`, `llmcore sweep`, `recipes.forgetting` and the experiments:
`rows = run_pipeline("p.yaml")` or `run_pipeline(Pipeline(...))`. Under torchrun every rank runs
the same runs (each Trainer is a collective), but only rank 0 logs and writes files.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from llmcore.errors import ConfigError
from llmcore.pipeline.parallel import run_parallel
from llmcore.pipeline.plan import Run, plan
from llmcore.pipeline.result import (
    last_train_metrics,
    read_result,
    scalar_metrics,
    write_result,
)
from llmcore.pipeline.spec import Pipeline, load_pipeline
from llmcore.pipeline.summary import make_row, table, write_csv
from llmcore.train.loop import Trainer
from llmcore.train.metrics import setup_logging

log = logging.getLogger("llmcore.pipeline")
SUMMARY_FILE = "summary.csv"


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def load_plan(spec: Pipeline | str | Path, overrides: list[str] | None = None) -> tuple[Pipeline, list[Run]]:
    """The pipeline (a file is loaded) and its checked runs; trains nothing."""
    if isinstance(spec, Pipeline):
        return spec, plan(spec, overrides)
    pipeline = load_pipeline(spec)
    return pipeline, plan(pipeline, overrides, source=str(spec))


def run_pipeline(spec: Pipeline | str | Path, overrides: list[str] | None = None,
                 print_summary: bool = True, jobs: int = 1) -> list[dict]:
    """Train every run of a pipeline (a file or a `Pipeline`) in order; returns one row per run.

    Everything is checked before the first step (see `plan`). A run whose `result.json` exists
    and whose checkpoint is at `train.max_steps` is skipped; any other run with a checkpoint
    resumes from it. `overrides` (dotted keys) apply to every stage after the file's own.
    Writes `<out_dir>/summary.csv` and, with `print_summary`, prints the table to stdout.
    A run stopped by SIGTERM/SIGUSR1 ends the pipeline (its checkpoint is saved; rerun to go on).
    `jobs` > 1 trains up to that many runs at once, each in its own process, a run as soon as
    the runs it starts from have finished (`llmcore.pipeline.parallel`).
    """
    setup_logging()
    pipeline, runs = load_plan(spec, overrides)
    main = _is_main()
    if main:
        log.info("pipeline %s: %d runs in %d stages", pipeline.out_dir, len(runs), len(pipeline.stages))
    if jobs < 1:
        raise ConfigError(f"llmcore pipeline: --jobs must be at least 1, got {jobs}")
    if jobs > 1:
        rows = run_parallel(runs, jobs, _run_one)
    else:
        rows = []
        for run in runs:
            rows.append(_run_one(run, main))
            if rows[-1]["status"] == "stopped":
                break
    for row in rows:
        if row["status"] == "stopped" and main:
            log.warning("%s: stopped by a signal at step %d; rerun the pipeline to resume", row["stage"] +
                        (f"[{row['variant']}]" if row["variant"] else ""), row["step"])
    if main:
        write_csv(rows, Path(pipeline.out_dir) / SUMMARY_FILE)
        if print_summary:
            print(table(rows))
        log.info("pipeline summary: %s", Path(pipeline.out_dir) / SUMMARY_FILE)
    return rows


def _run_one(run: Run, main: bool) -> dict:
    if run.state == "finished":
        saved = read_result(run.out_dir)
        if main:
            log.info("%s: skipped (finished, step %d)", run.title, saved["step"])
        return make_row(run, "skipped", saved["step"], saved["checkpoint"], saved["metrics"])
    if main:
        sources = "".join(f", {key} from {src}" for key, src in run.sources.items())
        if run.state == "resume":
            log.info("%s: resuming at step %d of %d in %s%s", run.title, run.start_step,
                     run.config.train.max_steps, run.out_dir, sources)
        else:
            log.info("%s: training %d steps in %s%s", run.title, run.config.train.max_steps, run.out_dir, sources)
    t0 = time.perf_counter()
    result = Trainer(run.config).fit()
    metrics = scalar_metrics(result)
    if "loss" not in metrics:  # resumed at its last step: fit() trained nothing to report
        metrics = {**last_train_metrics(run.out_dir, result["step"]), **metrics}
    metrics["train_s"] = round(time.perf_counter() - t0, 3)
    if result.get("stopped_by_signal"):
        return make_row(run, "stopped", result["step"], result["checkpoint"], metrics)
    if main:
        write_result(run.out_dir, {"stage": run.stage, "variant": run.variant, "step": result["step"],
                                   "checkpoint": result["checkpoint"], "metrics": metrics,
                                   "stopped_early": result.get("stopped_early", "")})
        log.info("%s: finished at step %d%s%s (%.0f s)", run.title, result["step"],
                 f", loss {metrics['loss']:.4f}" if "loss" in metrics else "",
                 f", val_loss {metrics['val_loss']:.4f}" if "val_loss" in metrics else "", metrics["train_s"])
    status = "resumed" if run.state == "resume" else "trained"
    return make_row(run, status, result["step"], result["checkpoint"], metrics)
