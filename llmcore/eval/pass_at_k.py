"""pass@k: the unbiased estimator of Chen et al. (arXiv 2107.03374), per group and overall.

Used by evaluations that draw several samples per prompt (distillation's test-time scaling,
mode conditioning's split of k samples across modes, fed by `llmcore.generate.groups`).

With n samples of which c are correct, pass@k = 1 - C(n-c, k) / C(n, k): the chance that k
of the n, drawn without replacement, hold at least one correct one. The ratio is computed as
the product prod_{i=n-c+1}^{n} (1 - k/i) (Chen et al.'s form): binomials of realistic n
overflow floats, while each factor lies in [0, 1]. When k samples are split as k_g over
groups (modes), each with n_g samples and c_g correct, the groups miss independently:
pass@k = 1 - prod_g C(n_g - c_g, k_g) / C(n_g, k_g) (ModC, arXiv 2512.01127). Averaging over
prompts is the caller's: the estimator is unbiased per prompt, so its mean is too.
"""

from __future__ import annotations

from typing import Mapping

from llmcore.errors import ConfigError


def _check(n, c, k, where: str = "") -> None:
    for name, v in (("n", n), ("c", c), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"pass@k{where}: {name} must be an integer, got {v!r}")
    if n < 0 or not 0 <= c <= n:
        raise ConfigError(f"pass@k{where}: need 0 <= c <= n, got n={n}, c={c}")
    if not 0 <= k <= n:
        raise ConfigError(f"pass@k{where}: need 0 <= k <= n (k samples drawn from the n), got n={n}, k={k}")


def _miss(n: int, c: int, k: int) -> float:
    """C(n-c, k) / C(n, k): the chance that k of n samples (c correct) hold no correct one."""
    if n - c < k:  # fewer wrong samples than draws: some draw is correct
        return 0.0
    out = 1.0
    for i in range(n - c + 1, n + 1):
        out *= 1.0 - k / i
    return out


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct; 0 <= c <= n, 0 <= k <= n (k = 0: 0.0)."""
    _check(n, c, k)
    return 1.0 - _miss(n, c, k)


def pass_at_k_per_group(groups: Mapping[str, tuple[int, int, int]]) -> dict[str, float]:
    """label -> (n_g, c_g, k_g) to label -> pass@k_g of that group alone."""
    out = {}
    for label, (n, c, k) in groups.items():
        _check(n, c, k, f" of group {label!r}")
        out[label] = 1.0 - _miss(n, c, k)
    return out


def pass_at_k_allocated(groups: Mapping[str, tuple[int, int, int]]) -> float:
    """Allocation-aware pass@k, k = sum of k_g: 1 - prod_g C(n_g - c_g, k_g) / C(n_g, k_g).

    groups: label -> (n_g samples, c_g correct, k_g of the k allocated to the group); a group
    with k_g = 0 contributes nothing. With one group this is `pass_at_k`.
    """
    if not groups:
        raise ConfigError("pass@k: no groups given")
    miss = 1.0
    for label, (n, c, k) in groups.items():
        _check(n, c, k, f" of group {label!r}")
        miss *= _miss(n, c, k)
    return 1.0 - miss


def bootstrap_ci(values, *, resamples: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of per-prompt `values`: prompts are
    resampled with replacement (seeded), so the interval reflects which prompts were drawn,
    the variation a pass@k curve over a small test set has. One value gives (v, v)."""
    import numpy as np

    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        raise ConfigError("bootstrap: no values")
    if not 0.0 < level < 1.0:
        raise ConfigError(f"bootstrap: level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(resamples, v.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
