"""Report metrics against published reference values (R's survival package) and an independent IPCW AUC."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.datasets import load_rossi

from conftest import shared_data
from tipsprog.evaluate import metrics
from tipsprog.fusion.training import breslow, survival_at

ROTTERDAM = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-survival" / "rotterdam.csv"


@pytest.fixture(scope="module")
def rotterdam_cox() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """R's documented example: coxph(Surv(rtime, recur) ~ age + meno + size + pmin(nodes, 11)), in-sample."""
    shared_data(ROTTERDAM)
    table = pd.read_csv(ROTTERDAM)
    covariates = pd.DataFrame({"age": table["age"], "meno": table["meno"], "nodes": np.minimum(table["nodes"], 11),
                               "size_20_50": (table["size"] == "20-50").astype(float),
                               "size_50": (table["size"] == ">50").astype(float)})
    fitter = CoxPHFitter().fit(covariates.assign(time=table["rtime"], event=table["recur"]), "time", "event")
    risk = covariates.to_numpy(float) @ fitter.params_[covariates.columns].to_numpy()
    return table["rtime"].to_numpy(float), table["recur"].to_numpy(float), risk


def test_concordance_and_brier_reproduce_r_survival_on_rotterdam(rotterdam_cox):
    time, event, risk = rotterdam_cox
    assert metrics.harrell_c(time, event, risk) == pytest.approx(0.675, abs=5e-4)
    horizons = np.array([4.0, 6.0]) * 365.25
    survival = survival_at(*breslow(risk, time, event), risk, horizons)
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
    risk = rossi["prio"].to_numpy(float) - rossi["age"].to_numpy(float) / 20 + np.random.default_rng(0).uniform(0, 1e-3, len(time))
    horizons = np.array([13.0, 26.0, 39.0])
    expected = [_ipcw_auc(time, event, risk, h) for h in horizons]
    np.testing.assert_allclose(metrics.time_dependent_auc(time, event, risk, horizons), expected, rtol=1e-10)


def test_a_statistic_that_fails_leaves_the_others_intact():
    rows = np.arange(10)
    values = metrics.stacked([(lambda r: 0.5, 1), (lambda r: metrics.uno_c(np.zeros(10), np.zeros(10), np.zeros(10), 1.0), 1),
                              (lambda r: np.array([1.0, 2.0]), 2)], rows)
    assert values[0] == 0.5 and np.isnan(values[1]) and list(values[2:]) == [1.0, 2.0]
