"""The statistics offrl reports: binomial intervals of success rates, bootstrap intervals over runs, rank
correlation. Thin wrappers over scipy.stats, with the conventions of the results pages (None when undefined)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (``scipy.stats.binomtest``); (0, 1) for n = 0."""
    if n <= 0:
        return (0.0, 1.0)
    from scipy.stats import binomtest

    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman rank correlation of two (n,) arrays; None when n < 3, either is constant, or NaNs remain."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def bootstrap_mean(values: list[float], samples: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """Mean with a percentile bootstrap 95% CI over the values (None bounds when fewer than 2 values)."""
    v = np.array([x for x in values if x is not None and math.isfinite(x)], float)
    out: dict[str, Any] = {"mean": float(v.mean()) if len(v) else None, "n": int(len(v)), "ci": None}
    if len(v) >= 2 and np.ptp(v) > 0:
        from scipy.stats import bootstrap

        r = bootstrap((v,), np.mean, n_resamples=samples, method="percentile", confidence_level=0.95,
                      random_state=np.random.default_rng(seed))
        out["ci"] = [float(r.confidence_interval.low), float(r.confidence_interval.high)]
    elif len(v) >= 2:
        out["ci"] = [float(v[0]), float(v[0])]
    return out


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over ``window`` points, the window shrinking at the ends; (n,) -> (n,)."""
    n = len(values)
    if window <= 1 or n == 0:
        return values.astype(np.float64)
    half = window // 2
    out = np.empty(n, np.float64)
    for i in range(n):
        out[i] = values[max(0, i - half) : i + half + 1].mean()
    return out
