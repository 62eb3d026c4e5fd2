"""An experiment's runs as a pipeline file, trained by the `llmcore pipeline` command.

Each study writes its stages to `<out>/pipeline.yaml` (`write_pipeline`) and trains them with
`llmcore pipeline --config <out>/pipeline.yaml` in a child process (`run_pipeline_command`),
exactly what a user would run by hand: the same resume and skip rules, the same summary.csv,
and a record whose command can be replayed without the study's Python. The study then scores
the finished runs itself (`finished_runs`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import yaml


def _plain(obj):
    # dataclasses -> dicts without the defaults, so the file reads like one written by hand
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            if v != default:
                out[f.name] = _plain(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def write_pipeline(pipeline, path: str | os.PathLike) -> Path:
    """Write a `llmcore.pipeline.spec.Pipeline` as YAML at `path` (checked by loading it back)."""
    from llmcore.pipeline.spec import load_pipeline

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(_plain(pipeline), sort_keys=False, width=200)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    load_pipeline(path)  # an unknown key or a bad reference is an error now, not after hours
    return path


def run_pipeline_command(path: str | os.PathLike, threads: int = 1, jobs: int = 1) -> None:
    """`llmcore pipeline --config path [--jobs N]` in a child process, `threads` torch threads per
    run; raises SystemExit naming the file when it fails or was stopped (rerun the study to
    resume)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "llmcore.cli", "pipeline", "--config", str(path)] + (["--jobs", str(jobs)] if jobs > 1 else [])
    print("$ " + " ".join(cmd[1:]).replace("-m llmcore.cli", "llmcore"), flush=True)
    rc = subprocess.call(cmd, env=env)
    if rc != 0:
        raise SystemExit(f"llmcore pipeline --config {path} exited with {rc}; fix the cause and rerun the "
                         "study (finished runs are skipped, an interrupted one resumes)")


def finished_runs(path: str | os.PathLike) -> list[dict]:
    """One row per run of pipeline file `path`, in order: `stage`, `variant`, `params` (the
    swept values as the file gives them), `out_dir`, and from the run's result.json its `step`,
    `checkpoint` and metrics (`val_loss`, `train_s`, ...); `checkpoint` is None for a run
    that has not finished."""
    from llmcore.pipeline.result import RESULT_FILE, read_result
    from llmcore.pipeline.run import load_plan

    rows = []
    for run in load_plan(path)[1]:
        row = {"stage": run.stage, "variant": run.variant, "params": dict(run.params), "out_dir": str(run.out_dir),
               "checkpoint": None}
        if (run.out_dir / RESULT_FILE).exists():
            result = read_result(run.out_dir)
            row.update(result["metrics"], step=result["step"], checkpoint=result["checkpoint"])
        rows.append(row)
    return rows


def train_pipeline(pipeline, path: str | os.PathLike, threads: int = 1, jobs: int = 1) -> list[dict]:
    """Write `pipeline` to `path`, train it with `llmcore pipeline` (`run_pipeline_command`) and
    return its `finished_runs`: what every study does with its runs."""
    run_pipeline_command(write_pipeline(pipeline, path), threads, jobs)
    return finished_runs(path)


def study_parser(description: str, scales: dict, out: str, record: str) -> argparse.ArgumentParser:
    """The options every study shares: `--scale` (a preset of `scales`), `--out`, `--threads`
    (torch threads per run), `--jobs` (runs at once) and `--record`; the study adds its own.
    Read it with `parse_study`, which fills what is left unset from the preset."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--scale", choices=sorted(scales), default="cpu", help="preset of the sizes left unset")
    p.add_argument("--out", default=out)
    p.add_argument("--threads", type=int, help="torch threads per run")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once (llmcore pipeline --jobs)")
    p.add_argument("--record", default=record, help="benchmarks/results/<record>.{json,png}; '' for none")
    return p


def parse_study(p: argparse.ArgumentParser, scales: dict, argv=None) -> argparse.Namespace:
    """Parse a `study_parser`'s options; every option left unset (None) takes the chosen
    preset's value."""
    a = p.parse_args(argv)
    for key, value in scales[a.scale].items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    return a
