"""How k samples of one prompt are split across C modes at inference (ModC, arXiv 2512.01127).

Used by the recipe's `fan_out` hook and by the experiment's specialists (one model per mode).
The paper splits k evenly; it publishes no rule for a k that C does not divide, nor for
weighted splits. Chosen here:

- `allocate(k, weights)`: largest-remainder (Hamilton) apportionment of k over the weights;
  remainders go to the largest fractional parts, ties to the lower mode index, so every split
  is deterministic and sums to k exactly. Uniform weights give k // C to each mode and one more
  to the first k % C modes.
- `pass1_weights(p1)`: weights proportional to each mode's validation pass@1 (a mode that never
  solves anything gets none). Note that for one prompt the allocation maximising
  1 - prod_m (1 - p_m)^{k_m} puts every sample on the best mode; proportional weights only pay
  off because the best mode differs between prompts, which is the paper's premise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from llmcore.errors import ConfigError


def allocate(k: int, weights: Sequence[float]) -> list[int]:
    """k samples over len(weights) modes, proportional to `weights` (>= 0, not all 0)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ConfigError(f"allocation: k must be an integer >= 0, got {k!r}")
    w = [float(x) for x in weights]
    if not w or any(not math.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
        raise ConfigError(f"allocation: weights must be finite, >= 0 and not all 0, got {list(weights)}")
    total = sum(w)
    quotas = [k * x / total for x in w]
    counts = [math.floor(q) for q in quotas]
    left = k - sum(counts)
    # largest fractional part first; equal parts: the lower mode index first
    order = sorted(range(len(w)), key=lambda m: (-(quotas[m] - counts[m]), m))
    for m in order[:left]:
        counts[m] += 1
    return counts


def pass1_weights(pass1: Sequence[float]) -> list[float]:
    """Allocation weights proportional to each mode's validation pass@1; uniform when every
    mode scored 0 (nothing to prefer)."""
    p = [max(0.0, float(x)) for x in pass1]
    if not p:
        raise ConfigError("allocation: no per-mode pass@1 given")
    return p if sum(p) > 0 else [1.0] * len(p)
