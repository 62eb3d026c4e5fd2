"""Seed statistics shared by the experiment records: mean ± sample std, paired differences
and their 95% confidence intervals.

A contrast between two arms of a study is read from the per-seed differences (arm B minus
arm A on the same seed: same init, same data order), not from the two arms' own spreads:
at small scale the seed-to-seed spread of each arm is often larger than the effect, but it
is shared by both arms of a seed and cancels in the difference. The interval is Student's t
over the n paired differences (n - 1 degrees of freedom), two-sided 95%.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# Two-sided 95% Student t quantiles (the 0.975 quantile) for 1..30 degrees of freedom; beyond
# 30 the normal-approximation correction below is within 0.002 of the exact value.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(dof: int) -> float:
    """The 0.975 quantile of Student's t with `dof` degrees of freedom (>= 1)."""
    if dof < 1:
        raise ValueError(f"a t interval needs at least 1 degree of freedom (2 seeds), got {dof}")
    if dof <= len(_T975):
        return _T975[dof - 1]
    return 1.95996 + 2.37 / dof  # the first-order correction of the normal quantile


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0.0 for a single value)."""
    n = len(xs)
    if n == 0:
        raise ValueError("mean_std of no values")
    m = sum(xs) / n
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0)


def paired(a: Sequence[float], b: Sequence[float]) -> dict:
    """The contrast b - a over paired seeds: {"diffs", "mean", "std", "lo", "hi", "n",
    "resolved"}; [lo, hi] is the 95% t interval of the mean difference, and `resolved` says
    it excludes 0 (the sign of the effect is known at that confidence)."""
    if len(a) != len(b):
        raise ValueError(f"paired contrast needs the same seeds in both arms, got {len(a)} and {len(b)} values")
    diffs = [y - x for x, y in zip(a, b)]
    m, s = mean_std(diffs)
    half = t975(len(diffs) - 1) * s / math.sqrt(len(diffs)) if len(diffs) > 1 else math.inf
    return {"diffs": diffs, "mean": m, "std": s, "lo": m - half, "hi": m + half, "n": len(diffs),
            "resolved": bool(m - half > 0 or m + half < 0)}


def fmt_ci(c: dict, scale: float = 1.0, digits: int = 1) -> str:
    """`+4.2 [+1.0, +7.4]` for a paired contrast, values multiplied by `scale`."""
    f = f"{{:+.{digits}f}}"
    return f"{f.format(c['mean'] * scale)} [{f.format(c['lo'] * scale)}, {f.format(c['hi'] * scale)}]"
