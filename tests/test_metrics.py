"""Report metrics against published reference values (R's survival package) and an independent IPCW AUC."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.datasets import load_rossi
from sksurv.metrics import brier_score, integrated_brier_score
from sksurv.util import Surv

from conftest import shared_data
from tipsprog import bootstrap
from tipsprog.evaluate import metrics
from tipsprog.evaluate.report import evaluation_grid, survival_metrics
from tipsprog.evaluate.rows import Cohort, PredictionRow
from tipsprog.survival import BreslowBaseline, harrell_c

ROTTERDAM = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-survival" / "rotterdam.csv"


@pytest.fixture(scope="module")
def rotterdam_cox() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """R's documented example: coxph(Surv(rtime, recur) ~ age + meno + size + pmin(nodes, 11)), in-sample."""
    shared_data(ROTTERDAM)
    table = pd.read_csv(ROTTERDAM)
    covariates = pd.DataFrame(
        {
            "age": table["age"],
            "meno": table["meno"],
            "nodes": np.minimum(table["nodes"], 11),
            "size_20_50": (table["size"] == "20-50").astype(float),
            "size_50": (table["size"] == ">50").astype(float),
        }
    )
    fitter = CoxPHFitter().fit(covariates.assign(time=table["rtime"], event=table["recur"]), "time", "event")
    risk = covariates.to_numpy(float) @ fitter.params_[covariates.columns].to_numpy()
    return table["rtime"].to_numpy(float), table["recur"].to_numpy(float), risk


def test_concordance_and_brier_reproduce_r_survival_on_rotterdam(rotterdam_cox):
    time, event, risk = rotterdam_cox
    assert harrell_c(time, event, risk) == pytest.approx(0.675, abs=5e-4)
    horizons = np.array([4.0, 6.0]) * 365.25
    survival = BreslowBaseline.fit(risk, time, event).survival(risk, horizons)
    np.testing.assert_allclose(metrics.brier_at(time, event, survival, horizons), [0.1952731, 0.2097106], atol=5e-5)


def _ipcw_auc(time: np.ndarray, event: np.ndarray, risk: np.ndarray, horizon: float) -> float:
    """Cumulative/dynamic AUC written out for untied risks: deaths by the horizon, weighted by 1/G(T), against
    survivors past it."""
    censoring = KaplanMeierFitter().fit(time, 1 - event)
    cases = (time <= horizon) & (event == 1)
    weights = 1.0 / censoring.survival_function_at_times(time[cases]).to_numpy()
    controls = risk[time > horizon]
    wins = risk[cases][:, None] > controls[None, :]
    return float((weights * wins.mean(axis=1)).sum() / weights.sum())


def test_time_dependent_auc_survives_deaths_at_the_administrative_end_of_follow_up():
    """rossi ends at week 52 for everyone still followed, and 4 arrests fall on week 52 itself: the censoring
    survival is zero there, which scikit-survival refuses; the AUCs before week 52 must still come out right."""
    rossi = load_rossi()
    time, event = rossi["week"].to_numpy(float), rossi["arrest"].to_numpy(float)
    risk = (
        rossi["prio"].to_numpy(float) - rossi["age"].to_numpy(float) / 20 + np.random.default_rng(0).uniform(0, 1e-3, len(time))
    )
    horizons = np.array([13.0, 26.0, 39.0])
    expected = [_ipcw_auc(time, event, risk, h) for h in horizons]
    np.testing.assert_allclose(metrics.time_dependent_auc(time, event, risk, horizons), expected, rtol=1e-10)


def test_a_statistic_that_fails_leaves_the_others_intact():
    rows = np.arange(10)
    values = bootstrap.stacked(
        [
            (lambda r: 0.5, 1),
            (lambda r: metrics.uno_c(np.zeros(10), np.zeros(10), np.zeros(10), 1.0), 1),
            (lambda r: np.array([1.0, 2.0]), 2),
        ],
        rows,
    )
    assert values[0] == 0.5 and np.isnan(values[1]) and list(values[2:]) == [1.0, 2.0]


def _cohort_with_curves(n: int = 60, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Follow-up times (one early death, one long survivor), deaths, risks, the evaluation grid and Breslow survival
    curves on it."""
    rng = np.random.default_rng(seed)
    risk = rng.standard_normal(n)
    death, censored = rng.exponential(600 * np.exp(-risk)), rng.uniform(60, 900, n)
    time, event = np.minimum(death, censored).round(), (death <= censored).astype(float)
    time[0], event[0], time[1], event[1] = 5.0, 1.0, 1200.0, 0.0
    _, grid = evaluation_grid(time, np.array([182.0, 365.0, 730.0]))
    return time, event, risk, grid, BreslowBaseline.fit(risk, time, event).survival(risk, grid)


def test_integrated_brier_on_the_cohort_grid_equals_scikit_survival():
    """The point estimate is scikit-survival's integrated_brier_score over the grid within follow-up, as before."""
    time, event, _, grid, curves = _cohort_with_curves()
    inside = metrics.within_follow_up(grid, time)
    survival = Surv.from_arrays(event.astype(bool), time)
    expected = integrated_brier_score(survival, survival, curves[:, inside], grid[inside])
    assert metrics.integrated_brier(time, event, curves[:, inside], grid[inside]) == pytest.approx(expected, rel=1e-12)


def test_every_bootstrap_resample_integrates_over_the_same_grid(monkeypatch):
    """A resample whose follow-up does not cover the cohort's IBS grid (here: no one dies or leaves before its first
    point) used to integrate over a shorter grid of its own; now every resample uses the cohort's grid (the one
    metrics.json reports as ibs_grid_days)."""
    time, event, risk, grid, curves = _cohort_with_curves()
    integrated_brier, seen = metrics.integrated_brier, []

    def recording(t: np.ndarray, e: np.ndarray, s: np.ndarray, g: np.ndarray) -> float:
        seen.append(np.array(g))
        return integrated_brier(t, e, s, g)

    monkeypatch.setattr(metrics, "integrated_brier", recording)
    inside = metrics.within_follow_up(grid, time)
    cohort_grid, on_grid = grid[inside], curves[:, inside]
    samples = bootstrap.bootstrap_samples(len(time), 30, 0)
    samples[0] = np.resize(np.flatnonzero(time > cohort_grid[1]), len(time))
    data = Cohort([f"P{i}" for i in range(len(time))], ["A"] * len(time), {"time": time, "event": event}, {})
    row = PredictionRow("model", risk, curves, np.full(len(time), 0.5), risk > np.median(risk))
    results, kept = survival_metrics(row, data, np.array([182.0, 365.0, 730.0]), 365.0, grid, samples)
    assert len(seen) == 2 + len(samples) and all(np.array_equal(g, cohort_grid) for g in seen)
    assert results["integrated_brier"]["estimate"] == integrated_brier(time, event, on_grid, cohort_grid)
    # resample 0 on the cohort's grid: before its first follow-up time everyone is a control (censoring survival 1)
    rows = samples[0]
    covered = metrics.within_follow_up(cohort_grid, time[rows])
    assert covered.sum() == len(cohort_grid) - 2
    survival = Surv.from_arrays(event[rows].astype(bool), time[rows])
    scores = np.concatenate(
        [
            ((1.0 - on_grid[rows][:, ~covered]) ** 2).mean(axis=0),
            brier_score(survival, survival, on_grid[rows][:, covered], cohort_grid[covered])[1],
        ]
    )
    expected = np.trapezoid(scores, cohort_grid) / (cohort_grid[-1] - cohort_grid[0])
    assert kept["integrated_brier"][1][0] == pytest.approx(expected, rel=1e-12)
