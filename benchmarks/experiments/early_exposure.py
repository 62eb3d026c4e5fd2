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

Writes <out>/results.json, <out>/report_{added,split}/ (seed means) and report_*_per_seed/, a
summary figure, and, without --quick, copies results.json, the summary figure and the L_ret vs
L_ft frontier PNG of each study to benchmarks/results/early_exposure*.
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
    if not values:
        return [float("nan"), float("nan")]
    return [statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0]


def per_seed(spec, name: str, out: Path) -> dict:
    """Per case (lam, and replay in the split study), mean +- std over seeds of: L_pre1, L_im,
    L_ret / L_ft / L_pre at each stage-3 LR, and each frontier's mean attained y, the frontier
    computed per seed among that seed's curves (the `llmcore report` definition)."""
    import copy

    from llmcore.pipeline.frontier import frontier_areas
    from llmcore.pipeline.report import write_report

    flat = copy.deepcopy(spec)
    flat.report.average_over = []
    rows = write_report(flat, out=out / f"report_{name}_per_seed", plots=False)["rows"]
    keys = ("lam", "replay") if name == "split" else ("lam",)

    def case_of(p: dict) -> str:
        return ",".join(f"{k}={p[k]}" for k in keys)
    seeds = sorted({r["params"]["train.seed"] for r in rows})
    values: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        p = r["params"]
        v = values.setdefault(case_of(p), {})
        if p["optim.lr"] == rows[0]["params"]["optim.lr"]:  # stage-1/2 metrics once per seed
            for m in ("L_pre1", "L_im"):
                v.setdefault(m, []).append(r[m])
        for m in ("L_ret", "L_ft", "L_pre"):
            v.setdefault(f"{m}@{p['optim.lr']}", []).append(r[m])
    for x, y in (("L_ft", "L_ret"), ("L_ret", "L_pre")):
        for seed in seeds:
            mine = [r for r in rows if r["params"]["train.seed"] == seed]
            curves: dict[str, list] = {}
            for r in mine:
                if r[x] is not None and r[y] is not None:
                    curves.setdefault(case_of(r["params"]), []).append((r[x], r[y]))
            areas, _ = frontier_areas(curves)
            for case, a in areas.items():
                values[case].setdefault(f"front_{y}_vs_{x}", []).append(a["mean_y"])
    out = {case: {m: _mean_std([x for x in v if x is not None]) for m, v in ms.items()}
           for case, ms in values.items()}
    if name == "split":  # replay's effect, paired by seed (the same stage-1 run)
        for case in [c for c in values if c.endswith("replay=0.05")]:
            base = values[case.replace("replay=0.05", "replay=0.0")]
            for m in ("L_im", "front_L_ret_vs_L_ft", "front_L_pre_vs_L_ret"):
                out[case][f"replay_delta_{m}"] = _mean_std([a - b for a, b in zip(values[case][m], base[m])])
    return out


def claims_table(cases: dict, lr: str) -> str:
    """Markdown: per case the stage-2 and stage-3 numbers the claims rest on."""
    cols = ["L_pre1", "L_im", f"L_ret@{lr}", f"L_ft@{lr}", "front_L_ret_vs_L_ft", "front_L_pre_vs_L_ret"]
    head = ["case", "L_pre1", "L_im", f"L_ret (lr {lr})", f"L_ft (lr {lr})", "mean L_ret on the L_ft front",
            "mean L_pre on the L_ret front"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for case, ms in cases.items():
        lines.append("| " + " | ".join([case] + [f"{ms[c][0]:.3f} ± {ms[c][1]:.3f}" for c in cols]) + " |")
    return "\n".join(lines)


def summary_plot(summary: dict, path: Path) -> Path:
    """L_im and the mean L_ret on the L_ret-vs-L_ft front against lam, mean +- std over seeds:
    the added study, and the split study with and without replay."""
    from benchmarks.experiments.plots import _plt

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric, title in ((axes[0], "L_im", "L_im: D_post loss after stage 2"),
                              (axes[1], "front_L_ret_vs_L_ft", "retention: mean L_ret on the L_ret-vs-L_ft front")):
        for name, style in (("added", "o-"), ("split", "s--")):
            cases = summary["studies"][name]["per_seed"]
            for replay in sorted({c.split("replay=")[1] if "replay=" in c else "" for c in cases}):
                pick = [(float(c.split(",")[0].split("=")[1]), ms[metric]) for c, ms in cases.items()
                        if (c.split("replay=")[1] if "replay=" in c else "") == replay]
                label = name + (f", replay {replay}" if replay else "")
                ax.errorbar([p[0] for p in pick], [p[1][0] for p in pick], yerr=[p[1][1] for p in pick],
                            fmt=style, capsize=3, label=label)
        ax.set_xlabel("lam (share of D_post in stage 1)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Early exposure, {len(summary['seeds'])} seeds (mean ± std)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
    if a.report_only and (out / "results.json").is_file():  # keep the measured training times
        old = json.loads((out / "results.json").read_text())
        times, total = old.get("train_s", {}), old.get("total_s")
    else:
        total = round(time.perf_counter() - t0, 1)
    summary = {"seeds": seeds, "train_s": times, "total_s": total, "studies": {}}
    for name, spec in specs.items():
        rep = write_report(spec, out=out / f"report_{name}")
        cases = per_seed(spec, name, out)
        summary["studies"][name] = {"per_seed": cases, "markdown": rep["markdown"], "frontiers": rep["frontiers"],
                                    "claims": claims_table(cases, "0.001")}
        print(f"\n## {name} ({len(seeds)} seeds)\n\n{summary['studies'][name]['claims']}")
        for case, ms in cases.items():
            deltas = {m[len("replay_delta_"):]: v for m, v in ms.items() if m.startswith("replay_delta_")}
            if deltas:
                print(f"- {case} minus replay 0 (paired by seed): "
                      + ", ".join(f"{m} {v[0]:+.3f} ± {v[1]:.3f}" for m, v in deltas.items()))
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    png = summary_plot(summary, out / "early_exposure.png")
    print(f"\nwall time {summary['total_s']} s (training {times}); tables in {out}/report_*/report.md")
    if not a.quick:
        RESULTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / "results.json", RESULTS / "early_exposure.json")
        shutil.copy(png, RESULTS / "early_exposure.png")
        for name in STUDIES:
            src = out / f"report_{name}" / "frontier_L_ret_vs_L_ft.png"
            if src.is_file():
                shutil.copy(src, RESULTS / f"early_exposure_{name}_frontier.png")


if __name__ == "__main__":
    main()
