"""The files of `llmcore sensitivity`: the rows of `llmcore.eval.sensitivity` as a CSV (one
line per checkpoint and probe), a Markdown table (one line per checkpoint, one column per
probe: rise mean ± std over noise seeds), the rows as JSON (every seed's rise) and a plot of
the rise against the checkpoint's training tokens.

The plot needs matplotlib, the optional `plots` extra (`pip install 'llmcore[plots]'`), imported
only when a plot is drawn; `require_matplotlib()` lets a caller refuse before any work.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from llmcore.fsutil import write_text_atomically
from llmcore.plots import pyplot

CSV_COLUMNS = ("checkpoint", "step", "tokens", "probe", "law", "sigma", "seeds", "finetune_steps", "finetune_lr",
               "base_loss", "loss_mean", "loss_std", "rise_mean", "rise_std")
FILES = ("sensitivity.csv", "sensitivity.md", "sensitivity.json")
PLOT = "sensitivity.png"


def probe_label(row: dict) -> str:
    """`noise tensor_rms σ=0.05` or `finetune 20 steps lr=0.001`: one column of the table."""
    if row["probe"] == "noise":
        return f"noise {row['law']} σ={row['sigma']:g}"
    return f"finetune {row['finetune_steps']} steps lr={row['finetune_lr']:g}"


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_COLUMNS, restval="", extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    return buf.getvalue()


def to_markdown(rows: list[dict]) -> str:
    """One line per checkpoint: step, tokens, base loss, then each probe's rise (mean ± std)."""
    probes = list(dict.fromkeys(probe_label(r) for r in rows))
    lines = ["| checkpoint | step | tokens | base loss | " + " | ".join(f"rise, {p}" for p in probes) + " |",
             "| --- " * (len(probes) + 4) + "|"]
    for ckpt in dict.fromkeys(r["checkpoint"] for r in rows):
        mine = [r for r in rows if r["checkpoint"] == ckpt]
        by_probe = {probe_label(r): r for r in mine}
        cells = [Path(ckpt).name, str(mine[0]["step"]), _int(mine[0]["tokens"]), f"{mine[0]['base_loss']:.4f}"]
        for p in probes:
            r = by_probe.get(p)
            if r is None:
                cells.append("-")
            elif r.get("rise_std") is None:
                cells.append(f"{r['rise_mean']:.4f}")
            else:
                cells.append(f"{r['rise_mean']:.4f} ± {r['rise_std']:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _int(x) -> str:
    return "-" if x is None else f"{int(x):,}"


def write_tables(rows: list[dict], out_dir: str | Path) -> list[Path]:
    """sensitivity.csv / .md / .json in `out_dir`, each replaced atomically (a crash mid-write
    leaves the previous file). Returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = (to_csv(rows), to_markdown(rows), json.dumps(rows, indent=1))
    paths = []
    for name, text in zip(FILES, texts):
        write_text_atomically(out / name, text)
        paths.append(out / name)
    return paths


def require_matplotlib():
    """matplotlib.pyplot on the Agg backend, or a ConfigError saying how to get it."""
    return pyplot("the sensitivity plot", " (or skip the plot with --no-plot)")


def plot(rows: list[dict], path: str | Path, title: str = "Loss rise across checkpoints") -> Path:
    """Rise (mean ± std over noise seeds) against training tokens, one line per probe; the
    fine-tune probes, when present, on a second panel (their scale differs)."""
    plt = require_matplotlib()
    kinds = [k for k in ("noise", "finetune") if any(r["probe"] == k for r in rows)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(6.4 * len(kinds), 4.2), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for label in dict.fromkeys(probe_label(r) for r in rows if r["probe"] == kind):
            pts = sorted((_x(r), r["rise_mean"], r.get("rise_std") or 0.0) for r in rows if probe_label(r) == label)
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o",
                        capsize=3, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("training tokens" if all(r["tokens"] for r in rows) else "training step")
        ax.set_ylabel("validation loss rise (nats/token)")
        ax.axhline(0.0, color="0.7", lw=0.8)
        ax.legend(fontsize=8)
        ax.set_title(f"{title}: {kind}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _x(row: dict) -> float:
    x = row["tokens"] or row["step"]
    return float(x) if x else math.nan
