"""Summary statistics and paired tests for per-prompt metric values.

Every function takes plain sequences of floats. NaN marks "undefined for this prompt" (e.g. groove similarity
of a 1-bar span) and is dropped: single-sample functions drop NaN values, paired functions drop the pairs
where either side is NaN. Functions return NaN, never raise, when too few values remain.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats as sps

from midirwkv.errors import BadRequestError

BOOTSTRAP_RESAMPLES = 10_000
"""Default number of bootstrap resamples."""
_BOOTSTRAP_CHUNK_ELEMENTS = 4_000_000
"""Resample in chunks of at most this many drawn indices (about 32 MB of int64) to bound memory."""


def _values(x: Sequence[float] | np.ndarray, name: str = "x") -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise BadRequestError("expected a one-dimensional sequence of numbers", argument=name, value=arr.shape,
                              fix="pass one value per prompt")
    return arr[~np.isnan(arr)]


def paired_values(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``a`` and ``b`` as float arrays with the pairs where either side is NaN removed."""
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if xa.ndim != 1 or xb.ndim != 1 or len(xa) != len(xb):
        raise BadRequestError("paired samples need two 1-D sequences of equal length", argument="a, b",
                              value=(xa.shape, xb.shape), fix="pass one value per prompt for each model, same order")
    keep = ~(np.isnan(xa) | np.isnan(xb))
    return xa[keep], xb[keep]


def mean(x: Sequence[float] | np.ndarray) -> float:
    """Arithmetic mean of the non-NaN values; NaN when there are none."""
    v = _values(x)
    return float(v.mean()) if len(v) else math.nan


def std(x: Sequence[float] | np.ndarray, ddof: int = 1) -> float:
    """Standard deviation of the non-NaN values (sample std, ``ddof=1``, by default); NaN when n <= ddof."""
    v = _values(x)
    return float(v.std(ddof=ddof)) if len(v) > ddof else math.nan


def bootstrap_ci(x: Sequence[float] | np.ndarray, level: float = 0.95, n_boot: int = BOOTSTRAP_RESAMPLES,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of the non-NaN values.

    Draws ``n_boot`` resamples with replacement (seeded: same inputs and seed, same interval), takes each
    resample's mean and returns the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles. One value gives
    ``(v, v)``; none gives ``(nan, nan)``.
    """
    if not 0 < level < 1:
        raise BadRequestError("level must be in (0, 1)", argument="level", value=level, fix="pass e.g. 0.95")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise BadRequestError("n_boot must be a positive integer", argument="n_boot", value=n_boot,
                              fix=f"pass e.g. {BOOTSTRAP_RESAMPLES}")
    v = _values(x)
    n = len(v)
    if n == 0:
        return math.nan, math.nan
    if n == 1:
        return float(v[0]), float(v[0])
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // n)
    means = np.concatenate([v[rng.integers(0, n, size=(min(chunk, n_boot - start), n))].mean(axis=1)
                            for start in range(0, n_boot, chunk)])
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def wilcoxon_paired(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Two-sided paired Wilcoxon signed-rank test of ``a - b``: ``(statistic, p)``.

    :func:`scipy.stats.wilcoxon` with its defaults (zero differences dropped, exact p for small samples
    without ties). When every difference is zero (or there are no pairs) there is no evidence of a
    difference: returns ``(0.0, 1.0)`` where scipy would warn and give NaN.
    """
    xa, xb = paired_values(a, b)
    d = xa - xb
    if not np.any(d != 0):
        return 0.0, 1.0
    with warnings.catch_warnings():
        # Few non-zero differences make scipy warn that its normal approximation may be rough; p is still valid.
        warnings.simplefilter("ignore", UserWarning)
        result = sps.wilcoxon(d)
    return float(result.statistic), float(result.pvalue)


def cohens_d_paired(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Paired Cohen's d: ``mean(a - b) / std(a - b, ddof=1)``; the sign follows ``a - b``.

    NaN with fewer than 2 pairs. When all differences are equal (std 0): 0.0 if they are all zero, else
    ``+-inf`` (a constant shift: the effect is unbounded in std units).
    """
    xa, xb = paired_values(a, b)
    d = xa - xb
    if len(d) < 2:
        return math.nan
    m, s = float(d.mean()), float(d.std(ddof=1))
    if s == 0.0:
        return 0.0 if m == 0.0 else math.copysign(math.inf, m)
    return m / s


def compare(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, higher_is_better: bool,
            level: float = 0.95, n_boot: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict[str, float | int | bool]:
    """Compare two models' per-prompt values of one metric (same prompts, same order).

    Pairs with a NaN on either side are dropped first. Returns:
    ``n`` (pairs used), ``mean_a``, ``mean_b``, ``std_a``, ``std_b``, ``diff`` (mean of ``a - b``),
    ``ci_low``/``ci_high`` (bootstrap CI of the mean difference at ``level``), ``p`` (paired Wilcoxon),
    ``statistic`` (its W), ``d`` (paired Cohen's d of ``a - b``) and ``a_better`` (True when the mean
    difference points the better way for this metric, per ``higher_is_better``; False on a tie).
    """
    xa, xb = paired_values(a, b)
    diff = xa - xb
    mean_diff = mean(diff)
    ci_low, ci_high = bootstrap_ci(diff, level=level, n_boot=n_boot, seed=seed)
    statistic, p = wilcoxon_paired(xa, xb)
    better = mean_diff > 0 if higher_is_better else mean_diff < 0
    return {
        "n": len(diff),
        "mean_a": mean(xa),
        "mean_b": mean(xb),
        "std_a": std(xa),
        "std_b": std(xb),
        "diff": mean_diff,
        "ci_low": ci_low,
        "ci_high": ci_high,
        "p": p,
        "statistic": statistic,
        "d": cohens_d_paired(xa, xb),
        "a_better": bool(better),
    }
