"""Survival maths shared by training, evaluation and prediction: the Breslow baseline of a Cox-type risk and
Harrell's concordance (scikit-survival's), with its bootstrap interval."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sksurv.metrics import concordance_index_censored

from tipsprog.bootstrap import bootstrap_samples, interval, with_bootstrap


def known_rows(*arrays: np.ndarray) -> np.ndarray:
    """Rows where every array is finite."""
    return np.logical_and.reduce([np.isfinite(np.asarray(a, dtype=float)) for a in arrays])


@dataclass(frozen=True)
class BreslowBaseline:
    """Breslow cumulative baseline hazard H0 at the distinct event times of the patients it was fitted on, so that
    S(t | risk) = exp(−H0(t)·exp(risk))."""

    times: np.ndarray
    cumhaz: np.ndarray

    @classmethod
    def fit(cls, risk: np.ndarray, time: np.ndarray, event: np.ndarray) -> BreslowBaseline:
        """The baseline of `risk` over the patients with a known time and event."""
        known = np.isfinite(time) & np.isfinite(event)
        risk, time, event = risk[known], time[known], event[known]
        hazard = np.exp(risk - risk.max())
        event_times = np.unique(time[event == 1])
        deaths = np.array([(event[time == t] == 1).sum() for t in event_times])
        at_risk = np.array([hazard[time >= t].sum() for t in event_times])
        return cls(event_times, np.cumsum(deaths / at_risk) * np.exp(-risk.max()))

    @classmethod
    def from_lists(cls, times: list[float], cumhaz: list[float]) -> BreslowBaseline:
        """The baseline as a bundle stores it (two lists)."""
        return cls(np.array(times), np.array(cumhaz))

    def cumulative_hazard(self, at: np.ndarray) -> np.ndarray:
        """H0 at arbitrary times (a right-continuous step function, 0 before the first event)."""
        index = np.searchsorted(self.times, at, side="right") - 1
        return np.where(index >= 0, np.asarray(self.cumhaz)[np.clip(index, 0, None)], 0.0)

    def survival(self, risk: np.ndarray, horizons: np.ndarray) -> np.ndarray:
        """S(t | risk) at each horizon, [patients, horizons]."""
        return np.exp(-np.exp(risk)[:, None] * self.cumulative_hazard(horizons)[None, :])

    def survival_at_own_time(self, risk: np.ndarray, time: np.ndarray) -> np.ndarray:
        """Each patient's S(time | risk) at their own time, [patients]."""
        return np.exp(-np.exp(risk) * self.cumulative_hazard(time))


def harrell_c(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C (tied risks count 1/2), scikit-survival's implementation; NaN without an event."""
    rows = known_rows(time, event, risk)
    if event[rows].sum() == 0:
        return np.nan
    return float(concordance_index_censored(event[rows].astype(bool), time[rows], risk[rows])[0])


def harrell_c_with_ci(time: np.ndarray, event: np.ndarray, risk: np.ndarray, draws: int = 200, seed: int = 0) -> dict[str, float]:
    """Harrell's C with a bootstrap 95% CI."""
    estimate, replicates = with_bootstrap(
        lambda rows: harrell_c(time[rows], event[rows], risk[rows]), len(time), bootstrap_samples(len(time), draws, seed)
    )
    return interval(estimate, replicates)
