"""Summary statistics and paired tests against scipy and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from midirwkv.errors import BadRequestError
from midirwkv.eval.stats import (
    bootstrap_ci,
    cohens_d_paired,
    compare,
    mean,
    paired_values,
    std,
    wilcoxon_paired,
)


def test_mean_and_std_drop_nan() -> None:
    x = [1.0, 2.0, math.nan, 4.0]
    assert mean(x) == pytest.approx(7 / 3)
    assert std(x) == pytest.approx(np.std([1, 2, 4], ddof=1))
    assert std(x, ddof=0) == pytest.approx(np.std([1, 2, 4]))
    assert math.isnan(mean([])) and math.isnan(mean([math.nan]))
    assert math.isnan(std([3.0]))


def test_bootstrap_ci_is_seeded_and_covers_the_mean() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(0.6, 0.25, size=500)
    lo, hi = bootstrap_ci(x, seed=3)
    assert lo < x.mean() < hi
    # Close to the normal-theory interval mean +- 1.96 * sem.
    sem = x.std(ddof=1) / math.sqrt(len(x))
    assert hi - lo == pytest.approx(2 * 1.96 * sem, rel=0.1)
    assert bootstrap_ci(x, seed=3) == (lo, hi)
    assert bootstrap_ci(x, seed=4) != (lo, hi)
    # A wider level gives a wider interval; chunking does not change the draw count.
    lo99, hi99 = bootstrap_ci(x, level=0.99, seed=3)
    assert lo99 < lo and hi < hi99


def test_bootstrap_ci_edge_cases() -> None:
    assert bootstrap_ci([0.7]) == (0.7, 0.7)
    assert all(math.isnan(v) for v in bootstrap_ci([math.nan]))
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    with pytest.raises(BadRequestError, match="level"):
        bootstrap_ci([1.0, 2.0], level=95)
    with pytest.raises(BadRequestError, match="n_boot"):
        bootstrap_ci([1.0, 2.0], n_boot=0)


def test_wilcoxon_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(0.6, 0.2, 40)
    b = a - rng.normal(0.05, 0.1, 40)
    ref = sps.wilcoxon(a - b)
    assert wilcoxon_paired(a, b) == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue))
    # Large sample (normal approximation) too.
    a2, b2 = rng.normal(size=300), rng.normal(size=300)
    ref2 = sps.wilcoxon(a2 - b2)
    assert wilcoxon_paired(a2, b2) == (pytest.approx(ref2.statistic), pytest.approx(ref2.pvalue))


def test_wilcoxon_all_zero_differences() -> None:
    a = [0.5, 0.6, 0.7]
    assert wilcoxon_paired(a, a) == (0.0, 1.0)
    assert wilcoxon_paired([], []) == (0.0, 1.0)


def test_cohens_d_hand_example() -> None:
    # Differences 1, 2, 3, 4: mean 2.5, sample std sqrt(5/3).
    a, b = [2.0, 4.0, 6.0, 8.0], [1.0, 2.0, 3.0, 4.0]
    assert cohens_d_paired(a, b) == pytest.approx(2.5 / math.sqrt(5 / 3))
    assert cohens_d_paired(b, a) == pytest.approx(-2.5 / math.sqrt(5 / 3))
    assert cohens_d_paired(a, a) == 0.0
    assert cohens_d_paired([2.0, 3.0], [1.0, 2.0]) == math.inf
    assert math.isnan(cohens_d_paired([1.0], [0.0]))


def test_paired_values_drop_nan_pairs_and_check_lengths() -> None:
    a, b = paired_values([1.0, math.nan, 3.0, 4.0], [1.0, 2.0, math.nan, 5.0])
    assert a.tolist() == [1.0, 4.0] and b.tolist() == [1.0, 5.0]
    with pytest.raises(BadRequestError, match="equal length"):
        paired_values([1.0, 2.0], [1.0])


def test_compare() -> None:
    rng = np.random.default_rng(2)
    b = rng.uniform(0.3, 0.8, 60)
    a = b + 0.05 + rng.normal(0, 0.02, 60)
    a_nan = np.append(a, math.nan)
    b_nan = np.append(b, 0.5)
    r = compare(a_nan, b_nan, higher_is_better=True, n_boot=2000)
    assert set(r) == {"n", "mean_a", "mean_b", "std_a", "std_b", "diff", "ci_low", "ci_high", "p", "statistic",
                      "d", "a_better"}
    assert r["n"] == 60
    assert r["mean_a"] == pytest.approx(a.mean()) and r["mean_b"] == pytest.approx(b.mean())
    assert r["diff"] == pytest.approx((a - b).mean())
    assert r["ci_low"] < r["diff"] < r["ci_high"]
    assert r["p"] == pytest.approx(sps.wilcoxon(a - b).pvalue) and r["p"] < 1e-6
    assert r["d"] == pytest.approx((a - b).mean() / (a - b).std(ddof=1))
    assert r["a_better"] is True
    assert compare(a, b, higher_is_better=False, n_boot=200)["a_better"] is False
    same = compare(b, b, higher_is_better=True, n_boot=200)
    assert (same["diff"], same["p"], same["d"], same["a_better"]) == (0.0, 1.0, 0.0, False)
