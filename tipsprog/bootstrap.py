"""Bootstrap resampling of patients: resample indices, a statistic on each resample (a failure gives NaN) and the
percentile interval."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np


def bootstrap_samples(n: int, draws: int, seed: int) -> np.ndarray:
    """Patient indices of each bootstrap resample, [draws, n]."""
    return np.random.default_rng(seed).integers(0, n, size=(draws, n))


def interval(estimate: float, replicates: np.ndarray) -> dict[str, float]:
    """Point estimate with the 2.5/97.5 percentile bootstrap interval."""
    finite = replicates[np.isfinite(replicates)]
    if len(finite) < 10:
        return {"estimate": float(estimate), "low": np.nan, "high": np.nan}
    low, high = np.percentile(finite, [2.5, 97.5])
    return {"estimate": float(estimate), "low": float(low), "high": float(high)}


def _safe(statistic: Callable[[np.ndarray], float | np.ndarray], rows: np.ndarray, width: int) -> np.ndarray:
    """A statistic on some rows; a resample it cannot be computed on gives NaN."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.atleast_1d(np.asarray(statistic(rows), dtype=float))
    except (ValueError, ZeroDivisionError, FloatingPointError):
        return np.full(width, np.nan)


def stacked(parts: list[tuple[Callable[[np.ndarray], float | np.ndarray], int]], rows: np.ndarray) -> np.ndarray:
    """Several statistics of some rows side by side; one that cannot be computed gives NaN without hiding the others."""
    return np.concatenate([_safe(statistic, rows, width) for statistic, width in parts])


def with_bootstrap(statistic: Callable[[np.ndarray], float], n: int, samples: np.ndarray) -> tuple[float, np.ndarray]:
    """A scalar statistic on all rows and on each resample (failures become NaN)."""
    return float(_safe(statistic, np.arange(n), 1)[0]), np.array([_safe(statistic, rows, 1)[0] for rows in samples])


def with_bootstrap_vector(
    statistic: Callable[[np.ndarray], np.ndarray], n: int, samples: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """A vector of statistics on all rows and on each resample, [width] and [draws, width]."""
    return _safe(statistic, np.arange(n), width), np.array([_safe(statistic, rows, width) for rows in samples])
