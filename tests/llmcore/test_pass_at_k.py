"""pass@k: the product form equals enumerating every k-subset (one group and several groups with
an allocation of k), exact rational values at large n, and the edge cases."""

import itertools
import math
from fractions import Fraction

import pytest

from llmcore.errors import ConfigError
from llmcore.eval.pass_at_k import pass_at_k, pass_at_k_allocated, pass_at_k_per_group


def brute(n, c, k):
    """Fraction of the k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def brute_groups(groups):
    """The same over every choice of one k_g-subset per group."""
    choices = [list(itertools.combinations(range(n), k)) for n, _, k in groups]
    hits = total = 0
    for pick in itertools.product(*choices):
        total += 1
        hits += any(any(i < c for i in s) for s, (_, c, _) in zip(pick, groups))
    return hits / total


@pytest.mark.parametrize("n", [1, 2, 5, 7])
def test_equals_enumeration_of_every_subset(n):
    for c in range(n + 1):
        for k in range(n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute(n, c, k), abs=1e-12), (n, c, k)


@pytest.mark.parametrize("groups", [[(3, 1, 2), (4, 0, 1)], [(5, 2, 1), (2, 1, 1), (3, 0, 0)], [(6, 1, 3), (6, 3, 3)]],
                         ids=["n3c1k2-n4c0k1", "three-groups-one-unallocated", "even-split-of-6"])
def test_allocated_equals_enumeration_across_groups(groups):
    labelled = {f"mode_{i}": g for i, g in enumerate(groups)}
    assert pass_at_k_allocated(labelled) == pytest.approx(brute_groups(groups), abs=1e-12)
    per = pass_at_k_per_group(labelled)
    assert list(per) == list(labelled)
    for label, (n, c, k) in labelled.items():
        assert per[label] == pytest.approx(brute(n, c, k), abs=1e-12)


def test_one_group_is_plain_pass_at_k():
    assert pass_at_k_allocated({"all": (9, 2, 4)}) == pytest.approx(pass_at_k(9, 2, 4), abs=1e-15)


@pytest.mark.parametrize("n,c,k", [(200, 100, 100), (1000, 3, 50), (4231, 41, 341)])
def test_large_n_matches_exact_rationals(n, c, k):
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12, abs=1e-15)


def test_edge_cases():
    assert pass_at_k(10, 0, 5) == 0.0  # nothing correct
    assert pass_at_k(10, 10, 1) == 1.0  # everything correct
    assert pass_at_k(10, 3, 0) == 0.0  # no draw
    assert pass_at_k(10, 3, 8) == 1.0  # 8 draws, only 7 wrong samples: one must be correct
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the fraction correct
    assert pass_at_k(0, 0, 0) == 0.0


@pytest.mark.parametrize("n,c,k,match", [(5, 2, 6, "k <= n"), (5, 6, 1, "c <= n"), (5, -1, 1, "c <= n"),
                                         (5, 2, -1, "k <= n"), (5.0, 2, 1, "n must be an integer"),
                                         (5, True, 1, "c must be an integer")])
def test_bad_counts_are_refused(n, c, k, match):
    with pytest.raises(ConfigError, match=match):
        pass_at_k(n, c, k)


def test_bad_group_is_named():
    with pytest.raises(ConfigError, match="group 'mode_1'"):
        pass_at_k_allocated({"mode_0": (4, 1, 2), "mode_1": (2, 1, 3)})
    with pytest.raises(ConfigError, match="no groups"):
        pass_at_k_allocated({})


# --- in expectation, bootstrap intervals, the curve over prompts ------------------------------

def test_allocated_estimator_equals_the_closed_form_in_expectation():
    """E over c_m ~ Binomial(n_m, p_m) of the estimator is exactly 1 - prod_m (1 - p_m)^k_m."""
    from llmcore.eval.pass_at_k import pass_at_k_allocated

    for (n1, p1, k1), (n2, p2, k2) in [((6, 0.3, 2), (5, 0.7, 3)), ((8, 0.05, 4), (8, 0.5, 4)), ((4, 0.9, 0), (7, 0.2, 5))]:
        expect = 0.0
        for c1 in range(n1 + 1):
            for c2 in range(n2 + 1):
                w = (math.comb(n1, c1) * p1 ** c1 * (1 - p1) ** (n1 - c1)
                     * math.comb(n2, c2) * p2 ** c2 * (1 - p2) ** (n2 - c2))
                expect += w * pass_at_k_allocated({"a": (n1, c1, k1), "b": (n2, c2, k2)})
        assert expect == pytest.approx(1 - (1 - p1) ** k1 * (1 - p2) ** k2, abs=1e-12)


def test_bootstrap_interval_matches_the_normal_width_and_repeats_for_a_seed():
    import numpy as np

    from llmcore.eval.pass_at_k import bootstrap_ci

    v = (np.random.default_rng(0).random(400) < 0.3).astype(float)
    lo, hi = bootstrap_ci(v, seed=1)
    assert lo < v.mean() < hi and bootstrap_ci(v, seed=1) == (lo, hi)
    normal = 2 * 1.96 * math.sqrt(v.mean() * (1 - v.mean()) / len(v))
    assert hi - lo == pytest.approx(normal, rel=0.15)
    assert bootstrap_ci([0.5]) == (0.5, 0.5)


def test_curve_averages_the_allocated_estimator_and_refuses_k_beyond_the_draws():
    from llmcore.eval.sampled import pass_at_k_curve

    records = [{"mode_0": (4, 1), "mode_1": (4, 0)}, {"mode_0": (4, 0), "mode_1": (4, 4)}]
    split = {1: {"mode_0": 1, "mode_1": 0}, 2: {"mode_0": 1, "mode_1": 1}, 4: {"mode_0": 2, "mode_1": 2}}
    curve = pass_at_k_curve(records, [1, 2, 4], split.__getitem__, resamples=200)
    assert curve["overall"][1]["mean"] == pytest.approx((0.25 + 0.0) / 2)
    assert curve["overall"][2]["mean"] == pytest.approx((0.25 + 1.0) / 2)
    assert curve["overall"][4]["mean"] == pytest.approx((brute(4, 1, 2) + 1.0) / 2)
    assert curve["groups"]["mode_1"][4] == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="allocated 5 samples but only 4"):
        pass_at_k_curve(records, [5], lambda k: {"mode_0": 5, "mode_1": 0})
