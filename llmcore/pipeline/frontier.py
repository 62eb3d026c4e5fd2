"""Frontiers of `llmcore report`: the Pareto front of (x, y) points where both are losses
(lower is better), the area under it, and the PNG of every curve of one plot.

A curve's points are runs (e.g. one per fine-tuning learning rate); a point is on the front when
no other point of the curve has a lower-or-equal x and a lower y. The front as a function is the
staircase y*(x) = the lowest y among the curve's points with x-loss <= x: what the curve attains
at an x budget (no interpolation between runs, which no run attains). The area of a curve is
the integral of y*(x) over [x_lo, x_hi], x_lo the largest of the curves' lowest x (where every
staircase of the plot is defined) and x_hi the largest x of any point of the plot, so the areas
of one plot share their range; `mean_y` is the area divided by x_hi - x_lo (the mean attained y
over that range; lower is better). Both are None when the range is empty (x_hi <= x_lo).
"""

from __future__ import annotations

import itertools
from pathlib import Path

from llmcore.plots import pyplot


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points of the lower-left front, sorted by x (ties in x: the lower y)."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points):
        if not front or y < front[-1][1]:
            front.append((x, y))
    return front


def attained(front: list[tuple[float, float]], x: float) -> float:
    """y*(x): the lowest y of the front's points with x-loss <= x (x at or past its first x)."""
    return min(y for px, y in front if px <= x)


def area_under(front: list[tuple[float, float]], lo: float, hi: float) -> float:
    """The integral of the staircase y*(x) from lo to hi (lo at or past the front's first x)."""
    xs = [lo, *(x for x, _ in front if lo < x < hi), hi]
    return sum((x1 - x0) * attained(front, x0) for x0, x1 in itertools.pairwise(xs))


def frontier_areas(curves: dict[str, list[tuple[float, float]]]) -> tuple[dict[str, dict], tuple | None]:
    """Per curve: its front, area and mean_y over the plot's shared range; and the range."""
    fronts = {name: pareto(pts) for name, pts in curves.items() if pts}
    lo = max((f[0][0] for f in fronts.values()), default=None)
    hi = max((x for pts in curves.values() for x, _ in pts), default=None)
    shared = (lo, hi) if lo is not None and hi is not None and hi > lo else None
    out = {}
    for name, front in fronts.items():
        area = area_under(front, *shared) if shared else None
        out[name] = {"front": front, "area": area, "mean_y": None if area is None else area / (shared[1] - shared[0])}
    return out, shared


def _pyplot():
    return pyplot("llmcore report's frontier plots", ", or pass --no-plots for the tables alone")


def plot_frontier(path: Path, curves: dict[str, list[tuple[float, float, str]]], areas: dict[str, dict],
                  x: str, y: str, title: str) -> Path:
    """One PNG: every point of every curve (labelled with its `over` value), each curve's
    front as a staircase, its mean attained y in the legend."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for i, (name, pts) in enumerate(curves.items()):
        color = f"C{i % 10}"
        area = areas.get(name, {}).get("mean_y")
        label = (name or y) + (f" (mean {y} {area:.4g})" if area is not None else "")
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=color, s=18, alpha=0.6)
        for px, py, tag in pts:
            ax.annotate(tag, (px, py), fontsize=6, alpha=0.7, xytext=(2, 2), textcoords="offset points")
        front = areas.get(name, {}).get("front", [])
        hi = max(p[0] for pts_ in curves.values() for p in pts_)
        ax.plot([p[0] for p in front] + [hi], [p[1] for p in front] + [front[-1][1]], color=color,
                drawstyle="steps-post", label=label)
        ax.scatter([p[0] for p in front], [p[1] for p in front], color=color, s=30, marker="o")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
