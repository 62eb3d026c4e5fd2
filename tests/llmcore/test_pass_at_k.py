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
