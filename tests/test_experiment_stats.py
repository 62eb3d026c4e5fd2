import math

import pytest

from benchmarks.experiments.stats import fmt_ci, mean_std, paired, t975


def test_t_quantiles_match_the_tables():
    # textbook two-sided 95% values
    assert t975(1) == 12.706 and t975(2) == 4.303 and t975(4) == 2.776 and t975(29) == 2.045
    assert abs(t975(60) - 2.000) < 0.002 and abs(t975(120) - 1.980) < 0.002
    with pytest.raises(ValueError, match="2 seeds"):
        t975(0)


def test_paired_interval_by_hand():
    a, b = [0.50, 0.40, 0.60], [0.60, 0.55, 0.65]
    c = paired(a, b)
    diffs = [0.10, 0.15, 0.05]
    assert c["diffs"] == pytest.approx(diffs)
    sd = math.sqrt(sum((d - 0.1) ** 2 for d in diffs) / 2)  # 0.05
    assert c["mean"] == pytest.approx(0.10) and c["std"] == pytest.approx(sd)
    half = 4.303 * sd / math.sqrt(3)
    assert (c["lo"], c["hi"]) == pytest.approx((0.10 - half, 0.10 + half))
    assert not c["resolved"]  # half-width 0.124 > 0.1: three seeds cannot fix the sign
    assert fmt_ci(c, 100) == "+10.0 [-2.4, +22.4]"


def test_resolved_only_when_interval_excludes_zero():
    assert not paired([0.0, 0.0, 0.0], [0.1, -0.1, 0.05])["resolved"]
    assert paired([0.0, 0.0, 0.0, 0.0, 0.0], [0.10, 0.11, 0.09, 0.10, 0.12])["resolved"]
    with pytest.raises(ValueError, match="same seeds"):
        paired([1.0], [1.0, 2.0])
    assert mean_std([2.0]) == (2.0, 0.0)
