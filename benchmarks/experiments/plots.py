"""The figures of the experiment records in benchmarks/EXPERIMENTS.md, from the committed results.

    pip install matplotlib          # plots only; not needed to train or test
    python -m benchmarks.experiments.plots        # writes benchmarks/results/{pause_grid,sam_forgetting,path_star}.png

Reads `benchmarks/results/pause_grid.json` (the per-seed exact match of the pause record),
`sam_forgetting.json` and `path_star.json` (written by those experiments' scripts) and draws
every seed as a point, so the spread the verdicts rest on is visible, not only the means.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def pause_grid(results: Path, out: Path) -> Path:
    """Exact match per cell of the 2x2 grid: a bar at the mean, one dot per seed."""
    plt = _plt()
    cells = json.loads((results / "pause_grid.json").read_text())["cells"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for i, cell in enumerate(cells):
        seeds = cell["exact_match_per_seed"]
        ax.bar(i, sum(seeds) / len(seeds), color="#9ecae1", width=0.6)
        ax.scatter([i] * len(seeds), seeds, color="#08519c", zorder=3, s=18)
    ax.set_xticks(range(len(cells)), [f"pt {c['pretraining']}\nft {c['finetuning']}" for c in cells])
    ax.set_ylabel("exact match, % (1000 test problems)")
    ax.set_ylim(0, 100)
    ax.set_title("Pause tokens, 7-digit addition: mean (bar) and each seed (dot)")
    return _save(fig, out / "pause_grid.png")


def sam_forgetting(results: Path, out: Path) -> Path:
    """The fine-tune frontier: pretraining-domain (A) loss vs fine-tune (B) loss along every
    fine-tune run, one line per optimizer x seed x learning rate."""
    plt = _plt()
    runs = json.loads((results / "sam_forgetting.json").read_text())["runs"]
    fig, ax = plt.subplots(figsize=(6, 4))
    colours = {"adamw": "#d95f02", "sam": "#1b9e77"}
    for name, run in sorted(runs.items()):
        opt = name.split("_")[0]
        for ft in run["finetune"]:
            b = [p[1] for p in ft["points"]]
            a = [p[2] for p in ft["points"]]
            ax.plot(b, a, marker=".", lw=1, color=colours.get(opt, "grey"), alpha=0.8,
                    label=opt.upper() if opt.upper() not in ax.get_legend_handles_labels()[1] else None)
    ax.invert_xaxis()
    ax.set_xlabel("fine-tune (B) validation loss  (training goes right)")
    ax.set_ylabel("pretraining (A) validation loss")
    ax.set_title("SAM vs AdamW: forgetting along fine-tuning (2 seeds x 3 LRs)")
    ax.legend()
    return _save(fig, out / "sam_forgetting.png")


def path_star(results: Path, out: Path) -> Path:
    """Exact match per method and path length, one dot per seed, the chance level 1/degree."""
    plt = _plt()
    doc = json.loads((results / "path_star.json").read_text())
    rows, degree = doc["results"], doc["args"]["degree"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lengths = sorted({r["length"] for r in rows})
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    width = 0.8 / len(lengths)
    for j, length in enumerate(lengths):
        for i, m in enumerate(methods):
            accs = [r["accuracy"] for r in rows if r["method"] == m and r["length"] == length]
            x = i + (j - (len(lengths) - 1) / 2) * width
            ax.bar(x, sum(accs) / len(accs), width=width * 0.9, color=f"C{j}",
                   label=f"path length {length}" if i == 0 else None)
            ax.scatter([x] * len(accs), accs, color="black", s=12, zorder=3)
    ax.axhline(1 / degree, color="grey", ls="--", lw=1, label=f"chance of the first step (1/{degree})")
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylabel("exact match (500 test graphs)")
    ax.set_ylim(0, 1.05)
    ax.set_title("Path-star: NTP vs MTP vs FSP (mean bar, seed dots)")
    ax.legend(fontsize=8)
    return _save(fig, out / "path_star.png")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(RESULTS), help="folder of the result JSON files")
    ap.add_argument("--out", default=str(RESULTS), help="where the PNGs go")
    a = ap.parse_args()
    for fn in (pause_grid, sam_forgetting, path_star):
        print("wrote", fn(Path(a.results), Path(a.out)))


if __name__ == "__main__":
    main()
