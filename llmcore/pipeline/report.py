"""`llmcore report`: the metrics a pipeline file declares (`report:`), read from its finished
runs, as a table (CSV + Markdown) and frontier plots (PNG) with the area under each front.

Used by `llmcore report --config p.yaml` and the experiments (`write_report(spec)`). A metric is
an evaluation set's loss after a stage (`L_ret: {stage: ft, set: post}`); the table has one row
per run of the latest stage any metric names, each earlier stage's metric taken from the run it
descends from (through `init_from` and `inputs`), so a study of stages 1 -> 2 -> 3 reads one row
per stage-3 run. Averaging over swept keys (`average_over: [train.seed]`) makes each row a mean
with its standard deviation. Nothing is trained: a run that has not finished leaves its cells
empty and is listed.
"""

from __future__ import annotations

import csv
import logging
import math
import re
import statistics
from pathlib import Path
from typing import Any

from llmcore.errors import ConfigError
from llmcore.pipeline.frontier import frontier_areas, plot_frontier
from llmcore.pipeline.plan import Run
from llmcore.pipeline.result import RESULT_FILE, read_result
from llmcore.pipeline.run import load_plan
from llmcore.pipeline.spec import Frontier, Pipeline, value_text
from llmcore.train import checkpoint
from llmcore.train.callbacks import eval_metric_key
from llmcore.train.metrics import read_metrics

log = logging.getLogger("llmcore.pipeline")
REPORT_DIR = "report"


def metric_value(run: Run, set_name: str) -> float | None:
    """The loss of evaluation set `set_name` of a finished run: at its best checkpoint when it
    keeps one (the checkpoint later stages start from), else its final evaluation."""
    if not (run.out_dir / RESULT_FILE).is_file():
        return None
    key = eval_metric_key(set_name)
    best = run.out_dir / checkpoint.BEST
    if run.config.train.keep_best_on and best.is_file():
        step = int(checkpoint.read_state(checkpoint.resolve(best))["step"])
        found = _eval_at(run.out_dir / "metrics.jsonl", step, key)
        if found is not None:
            return found
    value = read_result(run.out_dir)["metrics"].get(key)
    return None if value is None else float(value)


def _eval_at(path: Path, step: int, key: str) -> float | None:
    found = [row[key] for row in read_metrics(path) if row["step"] == step and key in row]
    return float(found[-1]) if found else None  # the last one: a resumed run may log the step again


def _ancestors(run: Run, by_name: dict[str, Run]) -> dict[str, Run]:
    """Stage -> the run of that stage `run` descends from (itself included), nearest first."""
    out: dict[str, Run] = {}
    todo = [run]
    while todo:
        r = todo.pop(0)
        out.setdefault(r.stage, r)
        todo.extend(by_name[name] for name in r.sources.values())
    return out


def collect(pipeline: Pipeline, runs: list[Run]) -> tuple[list[dict], list[str]]:
    """One row per run of the latest metric stage: {"params": ..., "run": name, metric: value};
    and the names of the runs a metric needed that have not finished."""
    metrics = pipeline.report.metrics
    if not metrics:
        raise ConfigError("the pipeline has no report.metrics: name each metric's stage and evaluation set, "
                          "e.g. report: {metrics: {L_ret: {stage: ft, set: post}}}")
    order = {s.name: i for i, s in enumerate(pipeline.stages)}
    leaf = max((m.stage for m in metrics.values()), key=order.__getitem__)
    by_name = {r.name: r for r in runs}
    rows, missing = [], []
    for run in (r for r in runs if r.stage == leaf):
        chain = _ancestors(run, by_name)
        row: dict[str, Any] = {"params": dict(run.params), "run": run.name}
        for name, m in metrics.items():
            if m.stage not in chain:
                raise ConfigError(f"report.metrics.{name}: stage {m.stage!r} is not one that stage {leaf!r} "
                                  f"starts from (through init_from or inputs), so its rows cannot be matched")
            src = chain[m.stage]
            row[name] = metric_value(src, m.set)
            if row[name] is None and not (src.out_dir / RESULT_FILE).is_file() and src.name not in missing:
                missing.append(src.name)
        rows.append(row)
    return rows, missing


def average(rows: list[dict], metric_names: list[str], over: list[str]) -> list[dict]:
    """Rows merged over the keys `over`: mean, `<metric>_std` (n - 1; 0 for one run) and `n`
    (runs with a value), in first-seen order."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        params = {k: v for k, v in row["params"].items() if k not in over}
        groups.setdefault(tuple((k, value_text(v)) for k, v in params.items()), []).append(row)
    out = []
    for members in groups.values():
        merged: dict[str, Any] = {"params": {k: v for k, v in members[0]["params"].items() if k not in over},
                                  "run": members[0]["run"] if len(members) == 1 else f"{len(members)} runs"}
        counts = []
        for name in metric_names:
            values = [m[name] for m in members if m[name] is not None and math.isfinite(m[name])]
            merged[name] = statistics.fmean(values) if values else None
            merged[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
            counts.append(len(values))
        merged["n"] = min(counts) if counts else 0
        out.append(merged)
    return out


def param_keys(rows: list[dict]) -> list[str]:
    """The swept keys of the rows, in first-seen order (the table's first columns)."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row["params"] if k not in keys]
    return keys


def write_table(rows: list[dict], metric_names: list[str], averaged: bool, out: Path) -> tuple[Path, Path, str]:
    """report.csv and report.md; returns their paths and the Markdown."""
    keys = param_keys(rows)
    stats = [c for m in metric_names for c in ((m, f"{m}_std") if averaged else (m,))]
    columns = [*keys, *(("n",) if averaged else ("run",)), *stats]
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "report.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for row in rows:
            cells = [value_text(row["params"][k]) if k in row["params"] else "" for k in keys]
            cells.append(row["n"] if averaged else row["run"])
            cells += ["" if row[c] is None else repr(row[c]) for c in stats]
            w.writerow(cells)
    head = [*keys, *(("n",) if averaged else ()), *metric_names]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        cells = [value_text(row["params"][k]) if k in row["params"] else "-" for k in keys]
        if averaged:
            cells.append(str(row["n"]))
        for m in metric_names:
            v = row[m]
            cells.append("-" if v is None else (f"{v:.4f} ± {row[m + '_std']:.4f}" if averaged else f"{v:.4f}"))
        lines.append("| " + " | ".join(cells) + " |")
    md = "\n".join(lines)
    md_path = out / "report.md"
    md_path.write_text(md + "\n")
    return csv_path, md_path, md


def frontier_curves(rows: list[dict], fr: Frontier) -> dict[str, list[tuple[float, float, str]]]:
    """`by` value -> [(x, y, over value)] of the rows with both metrics."""
    keys = param_keys(rows)
    by = [k.strip() for k in fr.by.split(",") if k.strip()]
    for what, key in [("over", fr.over), *(("by", k) for k in by)]:
        if key not in keys:
            raise ConfigError(f"report frontier {fr.y} vs {fr.x}: {what}={key!r} is not a swept key of the "
                              f"table's rows (have: {', '.join(keys) or 'none'})")
    curves: dict[str, list[tuple[float, float, str]]] = {}
    for row in rows:
        name = ",".join(f"{k}={value_text(row['params'][k])}" for k in by)
        if row[fr.x] is not None and row[fr.y] is not None:
            curves.setdefault(name, []).append((row[fr.x], row[fr.y], value_text(row["params"][fr.over])))
    return curves


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def write_report(spec: Pipeline | str | Path, overrides: list[str] | None = None, out: str | Path | None = None,
                 plots: bool = True) -> dict:
    """Table, frontier areas (`frontiers.csv`) and, with `plots`, one PNG per frontier, in
    `out` (default `<pipeline out_dir>/report`). Returns {"rows", "frontiers", "missing",
    "markdown", "files"}."""
    pipeline, runs = load_plan(spec, overrides)
    rep = pipeline.report
    names = list(rep.metrics)
    rows, missing = collect(pipeline, runs)
    averaged = bool(rep.average_over)
    if averaged:
        rows = average(rows, names, rep.average_over)
    out = Path(out) if out else Path(pipeline.out_dir) / REPORT_DIR
    csv_path, md_path, md = write_table(rows, names, averaged, out)
    files = [csv_path, md_path]
    fronts, lines = [], []
    for fr in rep.frontiers:
        curves = frontier_curves(rows, fr)
        areas, shared = frontier_areas({k: [(x, y) for x, y, _ in v] for k, v in curves.items()})
        for name, a in areas.items():
            fronts.append({"x": fr.x, "y": fr.y, "curve": name, "area": a["area"], "mean_y": a["mean_y"],
                           "x_lo": shared[0] if shared else None, "x_hi": shared[1] if shared else None,
                           "front": ";".join(f"{x:.6g}:{y:.6g}" for x, y in a["front"])})
            lines.append(f"- {fr.y} vs {fr.x}, {name or 'all'}: "
                         + (f"area {a['area']:.5g} over {fr.x} in [{shared[0]:.4g}, {shared[1]:.4g}] "
                            f"(mean {fr.y} {a['mean_y']:.4f})" if shared else "no shared range of the curves"))
        if plots and curves:
            title = f"{fr.y} vs {fr.x} over {fr.over}" + (f", one curve per {fr.by}" if fr.by else "")
            files.append(plot_frontier(out / f"frontier_{_slug(fr.y)}_vs_{_slug(fr.x)}.png", curves, areas,
                                       fr.x, fr.y, title))
    if rep.frontiers:
        fpath = out / "frontiers.csv"
        with fpath.open("w", newline="") as f:
            w = csv.DictWriter(f, ["x", "y", "curve", "area", "mean_y", "x_lo", "x_hi", "front"])
            w.writeheader()
            w.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in fronts)
        files.append(fpath)
    if lines:
        md = md + ("\n\nArea under each front (the staircase of the lowest y attained at x-loss <= x, "
                   "over a range every front is defined on; `llmcore.pipeline.frontier`):\n") + "\n".join(lines)
        md_path.write_text(md + "\n")
    if missing:
        log.warning("report: %d runs have not finished (their cells are empty): %s", len(missing), ", ".join(missing))
    return {"rows": rows, "frontiers": fronts, "missing": missing, "markdown": md, "files": files}
