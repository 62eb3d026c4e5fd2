"""Loss curves of one or more runs from their `metrics.jsonl`: what `llmcore plot` draws.

Each named key (`loss`, `val_loss` by default; any other number a row holds, such as a recipe
term `fsp/loss` or an evaluation set `eval/code/loss`) gets a panel with one line per run,
against training tokens (`tokens` of the train rows; an evaluation row, which has none, is
placed at its step times the run's tokens per step). matplotlib is the optional `plots`
extra, imported only here.
"""

from __future__ import annotations

from pathlib import Path

from llmcore.errors import LlmcoreError
from llmcore.plots import pyplot
from llmcore.train.metrics import read_metrics

DEFAULT_KEYS = ("loss", "val_loss")


def read_rows(run: str | Path) -> list[dict]:
    """The rows of `run/metrics.jsonl` (a run folder, or the file itself); a row cut short by a
    kill is skipped. LlmcoreError naming the path when there is no such file."""
    path = Path(run)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise LlmcoreError(f"{path} does not exist: `llmcore plot` takes run folders (train.out_dir)")
    return read_metrics(path)


def series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(tokens, values) of `key` over the rows, by step (a step logged twice keeps its last
    value). Evaluation rows get tokens = step x the tokens per step of the train rows."""
    per_step = next((r["tokens"] / r["step"] for r in rows if isinstance(r.get("tokens"), (int, float))
                     and r["step"] > 0), None)
    points: dict[int, tuple[float, float]] = {}
    for r in rows:
        value = r.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        tokens = r.get("tokens") if isinstance(r.get("tokens"), (int, float)) else None
        if tokens is None:
            if per_step is None:
                continue  # no train row to place it by
            tokens = r["step"] * per_step
        points[r["step"]] = (float(tokens), float(value))
    ordered = [points[s] for s in sorted(points)]
    return [t for t, _ in ordered], [v for _, v in ordered]


def plot_runs(runs: list[str | Path], out: str | Path, keys: tuple[str, ...] = DEFAULT_KEYS):
    """Draw `keys` of every run (a panel per key, a line per run, x = tokens) to the image `out`
    (the format from its suffix: .png, .pdf, .svg); returns the matplotlib figure.
    LlmcoreError when a key is in none of the runs; ConfigError when matplotlib is missing."""
    plt = pyplot("llmcore plot")

    data = {str(run): read_rows(run) for run in runs}
    absent = [k for k in keys if not any(series(rows, k)[0] for rows in data.values())]
    if absent:
        known = sorted({k for rows in data.values() for r in rows for k, v in r.items()
                        if isinstance(v, (int, float)) and k not in ("step", "time")})
        raise LlmcoreError(f"no run has {absent[0]!r} in its metrics.jsonl (numbers there: {', '.join(known)})")
    labels = _labels(list(data))
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for run, rows in data.items():
            tokens, values = series(rows, key)
            if tokens:
                ax.plot(tokens, values, marker="." if len(tokens) < 30 else None, label=labels[run])
        ax.set_title(key)
        ax.set_xlabel("training tokens")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return fig


def _labels(runs: list[str]) -> dict[str, str]:
    """A run's folder name, or its whole path where two runs share a name."""
    names = [Path(r).name for r in runs]
    return {r: (n if names.count(n) == 1 else r) for r, n in zip(runs, names)}
