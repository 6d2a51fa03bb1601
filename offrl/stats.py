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


def cluster_bootstrap_mean(
    values: list[float | None], clusters: list[Any], samples: int = 10_000, seed: int = 0, confidence: float = 0.95
) -> dict[str, Any]:
    """Mean with a two-stage (cluster) percentile bootstrap interval: resample the clusters with replacement, then
    the values within each drawn cluster (Davison & Hinkley 1997, Sec. 3.8, "strategy 2"). Runs of one task are
    not independent (../shared/reference/validation.md): resampling runs alone gives intervals too narrow.

    Args:
        values: one number per run (None or non-finite: left out, with its cluster label).
        clusters: the cluster (e.g. the task) of each run, same length as ``values``.
        samples: bootstrap resamples.
        seed: seeds the resampling.
        confidence: the interval's coverage.

    Returns:
        ``{"mean", "n" (runs), "clusters" (distinct clusters), "ci" ([lo, hi] or None under 2 runs)}``; ``mean``
        None without values. With one cluster the interval resamples runs only (said by ``clusters`` = 1).

    Raises:
        ValueError: ``values`` and ``clusters`` differ in length.
    """
    if len(values) != len(clusters):
        raise ValueError(f"{len(values)} values but {len(clusters)} cluster labels")
    v = np.array([np.nan if x is None else float(x) for x in values], float)
    ok = np.isfinite(v)
    labels = np.asarray([str(c) for c in clusters])
    names = sorted(set(labels[ok].tolist()))
    out: dict[str, Any] = {"mean": float(v[ok].mean()) if ok.any() else None, "n": int(ok.sum()),
                           "clusters": len(names), "ci": None}
    if ok.sum() < 2:
        return out
    # Vectorised over resamples: the groups padded into a (T, W) matrix, then S draws of T clusters and, within
    # each, of its own number of runs.
    groups = [v[ok & (labels == c)] for c in names]
    width = max(len(g) for g in groups)
    mat = np.full((len(groups), width), np.nan)
    for i, g in enumerate(groups):
        mat[i, : len(g)] = g
    sizes = np.array([len(g) for g in groups])
    rng = np.random.default_rng(seed)
    chosen = rng.integers(0, len(groups), (samples, len(groups)))  # (S, T)
    idx = np.floor(rng.random((samples, len(groups), width)) * sizes[chosen][..., None]).astype(int)
    drawn = mat[chosen[..., None], idx]  # (S, T, W)
    valid = np.arange(width)[None, None, :] < sizes[chosen][..., None]
    means = np.where(valid, drawn, 0.0).sum(axis=(1, 2)) / valid.sum(axis=(1, 2))
    tail = (1 - confidence) / 2 * 100
    out["ci"] = [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))]
    return out
