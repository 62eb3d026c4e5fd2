"""Early exposure: post-training data mixed into pretraining, retention after a later fine-tune.

Small-scale check of METHODS.md "Early exposure" (Feng, Ghosal, Springer et al., 2026) with the
shipped study configs, run as they are except for a `train.seed` axis added to every stage:

- `recipes/configs/early_exposure_added.yaml`: lam in {0, .25, .5, 1} of D_post added to the
  same D_pre steps; stage 2 to convergence (early stop, best checkpoint); stage 3 at four LRs;
- `recipes/configs/early_exposure_split.yaml`: a fixed D_post budget (one pass) split lam : 1-lam
  between stages 1 and 2, lam in {0, .25, .5, .75}, stage 2 with and without 5% D_pre replay.

Both pipelines share one folder, so the split study's stage-1 runs of lam 0, .25, .5 are the added
study's (identical configs: skipped, not retrained). Domains (`recipes.tasks.text_domains`):
D_pre the Jargon File, D_post generated weather-station reports, D_ft generated workshop
ledgers. `llmcore report` (`write_report`) makes the tables and frontier plots of each study,
averaged over seeds; this script adds the claims' summaries.

    python -m benchmarks.experiments.early_exposure                 # 3 seeds (~20 min, 1 thread)
    python -m benchmarks.experiments.early_exposure --quick         # plumbing check, 1 seed
    python -m benchmarks.experiments.early_exposure --report-only   # tables again from the runs

Writes <out>/results.json, <out>/report_{added,split}/ and, without --quick, copies the results
and frontier PNGs to benchmarks/results/early_exposure*.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "recipes" / "configs"
RESULTS = ROOT / "benchmarks" / "results"
STUDIES = ("added", "split")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/early_exposure_experiment")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="1 seed, a few steps of everything")
    p.add_argument("--report-only", action="store_true", help="tables again from the finished runs")
    a = p.parse_args(argv)
    if a.quick:
        a.seeds, a.out = "0", a.out + "_quick"
    return a


def study(name: str, out: Path, data: str, seeds: list[int], quick: bool):
    """The shipped pipeline `early_exposure_<name>.yaml` with a seed axis, in `out`."""
    from llmcore.pipeline.spec import Sweep, load_pipeline

    spec = load_pipeline(CONFIGS / f"early_exposure_{name}.yaml")
    spec.out_dir = str(out / "runs")
    spec.vars["data"] = data
    spec.overrides = [*spec.overrides, "train.progress=false"]
    if quick:  # a few steps of each stage, same structure
        spec.vars.update(pre_steps=20, post_tokens=8192)
        spec.overrides.append("train.log_every=5")
    for stage in spec.stages:
        stage.grid, stage.sweep = [Sweep("train.seed", list(seeds)), *stage.axes()], None
        if quick:
            stage.overrides = [o for o in stage.overrides if not o.startswith("train.max_steps=8")]
            if stage.name == "post" and name == "added":
                stage.overrides.append("train.max_steps=30")
            if stage.name == "ft":
                stage.overrides.append("train.max_steps=6")
    return spec


def _mean_std(values: list[float]) -> list[float]:
    return [statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0]


def summarise(report: dict, name: str) -> dict:
    """Per lam (and replay): L_pre1 and L_im (one value per stage-2 run), the L_ret, L_ft, L_pre
    of every stage-3 LR, and the frontier areas, all mean +- std over seeds."""
    rows = report["rows"]
    cases: dict[str, dict] = {}
    for row in rows:
        p = row["params"]
        case = f"lam={p['lam']}" + (f",replay={p['replay']}" if "replay" in p else "")
        c = cases.setdefault(case, {"lam": p["lam"], "replay": p.get("replay", 0.0), "n": row["n"], "by_lr": {}})
        for m in ("L_pre1", "L_im"):
            c[m] = [row[m], row[f"{m}_std"]]
        c["by_lr"][str(p["optim.lr"])] = {m: [row[m], row[f"{m}_std"]] for m in ("L_ret", "L_ft", "L_pre")}
    for fr in report["frontiers"]:
        if fr["curve"] in cases:
            cases[fr["curve"]][f"area_{fr['y']}_vs_{fr['x']}"] = fr["mean_y"]
    return {"study": name, "cases": list(cases.values())}


def main(argv=None) -> None:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    from llmcore.pipeline.report import write_report
    from llmcore.pipeline.run import run_pipeline
    from recipes.tasks.text_domains import write_study_data

    out = Path(a.out)
    seeds = [int(s) for s in a.seeds.split(",")]
    t0 = time.perf_counter()
    data = str(Path(write_study_data(out / "data")["pre"]).parent)
    specs = {name: study(name, out, data, seeds, a.quick) for name in STUDIES}
    times = {}
    if not a.report_only:
        for name, spec in specs.items():
            t = time.perf_counter()
            run_pipeline(spec, print_summary=False)
            times[name] = round(time.perf_counter() - t, 1)
    summary = {"seeds": seeds, "train_s": times, "total_s": round(time.perf_counter() - t0, 1), "studies": {}}
    for name, spec in specs.items():
        rep = write_report(spec, out=out / f"report_{name}")
        summary["studies"][name] = {**summarise(rep, name), "markdown": rep["markdown"],
                                    "frontiers": rep["frontiers"]}
        print(f"\n## {name} ({len(seeds)} seeds)\n\n{rep['markdown']}")
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    print(f"\nwall time {summary['total_s']} s (training {times})")
    if not a.quick and not a.report_only:
        RESULTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / "results.json", RESULTS / "early_exposure.json")
        for name in STUDIES:
            for png in (out / f"report_{name}").glob("*.png"):
                shutil.copy(png, RESULTS / f"early_exposure_{name}_{png.name}")


if __name__ == "__main__":
    main()
