"""An experiment's runs as a pipeline file, trained by the `llmcore pipeline` command.

Each study writes its stages to `<out>/pipeline.yaml` (`write_pipeline`) and trains them with
`llmcore pipeline --config <out>/pipeline.yaml` in a child process (`run_pipeline_command`),
exactly what a user would run by hand: the same resume and skip rules, the same summary.csv,
and a record whose command can be replayed without the study's Python. The study then scores
the finished runs itself (`finished_runs`).
"""

from __future__ import annotations

import csv
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


def run_pipeline_command(path: str | os.PathLike, threads: int = 1) -> None:
    """`llmcore pipeline --config path` in a child process with `threads` torch threads; raises
    SystemExit naming the file when it fails or was stopped (rerun the study to resume)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "llmcore.cli", "pipeline", "--config", str(path)]
    print("$ " + " ".join(cmd[1:]).replace("-m llmcore.cli", "llmcore"), flush=True)
    rc = subprocess.call(cmd, env=env)
    if rc != 0:
        raise SystemExit(f"llmcore pipeline --config {path} exited with {rc}; fix the cause and rerun the "
                         "study (finished runs are skipped, an interrupted one resumes)")


def finished_runs(out_dir: str | os.PathLike) -> list[dict]:
    """The rows of `<out_dir>/summary.csv` with `params` parsed from each run's variant
    (`train.seed=1,optim.lr=0.003` -> {"train.seed": 1, "optim.lr": 0.003}), numbers as
    floats, and `checkpoint` (the final one) from the run's result.json."""
    import json

    rows = []
    with open(Path(out_dir) / "summary.csv", newline="") as f:
        for row in csv.DictReader(f):
            params = {}
            for part in filter(None, (row.get("variant") or "").split(",")):
                key, _, value = part.partition("=")
                params[key] = yaml.safe_load(value)
            for key, value in row.items():
                if key not in ("stage", "variant", "out_dir") and value not in ("", None):
                    try:
                        row[key] = float(value)
                    except ValueError:
                        pass
            result = Path(row["out_dir"]) / "result.json"
            checkpoint = json.loads(result.read_text())["checkpoint"] if result.exists() else None
            rows.append({**row, "params": params, "checkpoint": checkpoint})
    return rows
