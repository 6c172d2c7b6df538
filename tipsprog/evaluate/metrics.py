"""Prognostic metrics from scikit-survival, lifelines and scikit-learn, with bootstrap CIs."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.exceptions import ConvergenceError
from lifelines.statistics import logrank_test
from scipy.stats import chi2, pearsonr
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    recall_score,
    roc_auc_score,
)
from sksurv.metrics import brier_score, concordance_index_ipcw, cumulative_dynamic_auc
from sksurv.nonparametric import CensoringDistributionEstimator
from sksurv.util import Surv

from tipsprog.survival import harrell_c, known_rows

TIE_BREAK_DRAWS = 20


def has_ties(risk: np.ndarray) -> bool:
    """Whether any two finite risk values are equal."""
    finite = risk[np.isfinite(risk)]
    return len(np.unique(finite)) < len(finite)


def harrell_c_random_ties(
    time: np.ndarray, event: np.ndarray, risk: np.ndarray, draws: int = TIE_BREAK_DRAWS, seed: int = 0
) -> float:
    """Harrell's C with tied risks broken at random, averaged over draws (ccRCC study)."""
    rows = known_rows(time, event, risk)
    values = risk[rows]
    gaps = np.diff(np.unique(values))
    jitter = (gaps.min() if len(gaps) else 1.0) * 1e-3
    rng = np.random.default_rng(seed)
    results = [harrell_c(time[rows], event[rows], values + rng.uniform(0, jitter, len(values))) for _ in range(draws)]
    return float(np.mean(results))


def uno_c(time: np.ndarray, event: np.ndarray, risk: np.ndarray, tau: float) -> float:
    """Uno's IPCW C truncated at tau (censoring distribution from the same patients)."""
    rows = known_rows(time, event, risk)
    survival = Surv.from_arrays(event[rows].astype(bool), time[rows])
    return float(concordance_index_ipcw(survival, survival, risk[rows], tau=tau)[0])


def time_dependent_auc(time: np.ndarray, event: np.ndarray, risk: np.ndarray, horizons: np.ndarray) -> np.ndarray:
    """Cumulative/dynamic AUC at each horizon (NaN where a horizon is outside follow-up).

    Deaths at the last follow-up time count as censored here: scikit-survival weights every death by the inverse
    censoring survival, which is zero there under administrative censoring, and such a patient is a control at every
    horizon before it either way, so the AUCs are unchanged."""
    rows = known_rows(time, event, risk)
    survival = Surv.from_arrays(event[rows].astype(bool) & (time[rows] < time[rows].max()), time[rows])
    result = np.full(len(horizons), np.nan)
    valid = (horizons > time[rows].min()) & (horizons < time[rows].max())
    if valid.any():
        result[valid] = cumulative_dynamic_auc(survival, survival, risk[rows], horizons[valid])[0]
    return result


def brier_curve(time: np.ndarray, event: np.ndarray, survival_curves: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """IPCW Brier score at each grid time: scikit-survival's `brier_score` (censoring Kaplan–Meier of the same
    patients) without its follow-up check, so a bootstrap resample is scored on its cohort's grid; before the first
    or from the last follow-up time one side of the sum is simply empty."""
    censoring = CensoringDistributionEstimator().fit(Surv.from_arrays(event.astype(bool), time))
    at_grid = censoring.predict_proba(np.minimum(grid, time.max()))  # past the last time there are no controls
    at_own = censoring.predict_proba(time)
    at_grid[at_grid == 0], at_own[at_own == 0] = np.inf, np.inf
    case = (time[:, None] <= grid[None, :]) & event.astype(bool)[:, None]
    control = time[:, None] > grid[None, :]
    return np.mean(survival_curves**2 * case / at_own[:, None] + (1.0 - survival_curves) ** 2 * control / at_grid, axis=0)


def integrated_brier(time: np.ndarray, event: np.ndarray, survival_curves: np.ndarray, grid: np.ndarray) -> float:
    """Integrated Brier score of predicted survival curves [patients, grid] over a fixed grid (chosen once per
    evaluated cohort, see `within_follow_up`); equals scikit-survival's `integrated_brier_score` on that cohort."""
    rows = known_rows(time, event) & np.isfinite(survival_curves).all(axis=1)
    if len(grid) < 2:
        raise ValueError("At least two time points must be given")
    scores = brier_curve(time[rows], event[rows].astype(float), survival_curves[rows], grid)
    return float(np.trapezoid(scores, grid) / (grid[-1] - grid[0]))


def within_follow_up(grid: np.ndarray, time: np.ndarray) -> np.ndarray:
    """Grid points from the first to before the last follow-up time (where IPCW Brier scores are defined)."""
    return (grid >= np.nanmin(time)) & (grid < np.nanmax(time))


def brier_at(time: np.ndarray, event: np.ndarray, survival_at_horizons: np.ndarray, horizons: np.ndarray) -> np.ndarray:
    """IPCW Brier score at each horizon (NaN where a horizon is outside follow-up)."""
    rows = known_rows(time, event) & np.isfinite(survival_at_horizons).all(axis=1)
    survival = Surv.from_arrays(event[rows].astype(bool), time[rows])
    result = np.full(len(horizons), np.nan)
    valid = (horizons >= time[rows].min()) & (horizons < time[rows].max())
    if valid.any():
        result[valid] = brier_score(survival, survival, survival_at_horizons[rows][:, valid], horizons[valid])[1]
    return result


def kaplan_meier_at(time: np.ndarray, event: np.ndarray, horizon: float) -> tuple[float, float, float]:
    """Kaplan–Meier survival at a horizon with its 95% (exponential Greenwood) interval."""
    fitter = KaplanMeierFitter().fit(time, event)
    estimate = float(fitter.survival_function_at_times(horizon).iloc[0])
    bounds = fitter.confidence_interval_survival_function_
    index = np.searchsorted(bounds.index.to_numpy(), horizon, side="right") - 1
    low, high = bounds.iloc[max(index, 0)].to_numpy(float)
    return estimate, float(low), float(high)


def calibration_table(
    time: np.ndarray, event: np.ndarray, predicted_survival: np.ndarray, horizon: float, groups: int = 10
) -> list[dict[str, float]]:
    """Mean predicted vs Kaplan–Meier observed survival at a horizon, by group (decile) of predicted survival."""
    rows = np.flatnonzero(known_rows(time, event, predicted_survival))
    order = rows[np.argsort(predicted_survival[rows], kind="stable")]
    table = []
    for number, members in enumerate(np.array_split(order, groups), 1):
        if len(members) == 0:
            continue
        observed, low, high = kaplan_meier_at(time[members], event[members], horizon)
        table.append(
            {
                "group": number,
                "patients": len(members),
                "predicted": float(predicted_survival[members].mean()),
                "observed": observed,
                "observed_low": low,
                "observed_high": high,
            }
        )
    return table


def calibration_slope(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Slope of the predicted log hazard ratio in a Cox model refitted on these patients (1 = well calibrated spread)."""
    rows = known_rows(time, event, risk)
    table = pd.DataFrame({"risk": risk[rows], "time": time[rows], "event": event[rows]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(CoxPHFitter().fit(table, "time", "event").params_["risk"])


def observed_expected(time: np.ndarray, event: np.ndarray, predicted_survival: np.ndarray, horizon: float) -> float:
    """Calibration in the large at a horizon: observed (Kaplan–Meier) over mean predicted risk of death."""
    rows = known_rows(time, event, predicted_survival)
    observed = 1.0 - kaplan_meier_at(time[rows], event[rows], horizon)[0]
    return float(observed / max(1.0 - predicted_survival[rows].mean(), 1e-12))


def d_calibration(
    time: np.ndarray, event: np.ndarray, survival_at_own_time: np.ndarray, bins: int = 10
) -> dict[str, float | list[float]]:
    """D-calibration (Haider et al., JMLR 2020): predicted S(T_i) should be uniform; chi-square over equal bins.

    An event adds 1 to the bin of S(T_i); a censored patient spreads its mass uniformly below S(C_i).
    """
    rows = known_rows(time, event, survival_at_own_time)
    probability, observed_event = np.clip(survival_at_own_time[rows], 0.0, 1.0), event[rows].astype(bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts = np.zeros(bins)
    for value, died in zip(probability, observed_event):
        if died:
            counts[min(int(value * bins), bins - 1)] += 1.0
        elif value > 0:
            overlap = np.clip(np.minimum(edges[1:], value) - edges[:-1], 0.0, None)
            counts += overlap / value
        else:
            counts[0] += 1.0
    expected = len(probability) / bins
    statistic = float(((counts - expected) ** 2 / expected).sum())
    return {"chi2": statistic, "p_value": float(chi2.sf(statistic, bins - 1)), "bins": counts.tolist()}


def net_reclassification(
    time: np.ndarray, event: np.ndarray, reference_high: np.ndarray, new_high: np.ndarray, horizon: float
) -> dict[str, float]:
    """Two-category NRI at a horizon: deaths by the horizon should move up, survivors past it down (censored
    before the horizon are left out)."""
    rows = known_rows(time, event, reference_high, new_high)
    died = rows & (event == 1) & (time <= horizon)
    survived = rows & (time > horizon)
    up = (new_high == 1) & (reference_high == 0)
    down = (new_high == 0) & (reference_high == 1)
    events = float((up[died].sum() - down[died].sum()) / max(died.sum(), 1))
    nonevents = float((down[survived].sum() - up[survived].sum()) / max(survived.sum(), 1))
    return {"nri": events + nonevents, "events": events, "nonevents": nonevents}


def net_benefit(label: np.ndarray, probability: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Decision-curve net benefit of treating patients whose probability reaches each threshold."""
    rows = known_rows(label, probability)
    label, probability = label[rows], probability[rows]
    treated = probability[None, :] >= thresholds[:, None]
    true_positive = (treated & (label == 1)).sum(axis=1) / len(label)
    false_positive = (treated & (label == 0)).sum(axis=1) / len(label)
    return true_positive - false_positive * thresholds / (1.0 - thresholds)


def hazard_ratio(time: np.ndarray, event: np.ndarray, high_risk: np.ndarray) -> dict[str, float]:
    """HR high vs low risk group with 95% CI (lifelines Cox) and log-rank p; NaN if a group has no event."""
    rows = known_rows(time, event, high_risk)
    group = high_risk[rows].astype(bool)
    if event[rows][group].sum() == 0 or event[rows][~group].sum() == 0:
        return {"estimate": np.nan, "low": np.nan, "high": np.nan, "logrank_p": np.nan}
    table = pd.DataFrame({"time": time[rows], "event": event[rows], "high": group.astype(float)})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitter = CoxPHFitter().fit(table, "time", "event")
    except ConvergenceError:
        return {"estimate": np.nan, "low": np.nan, "high": np.nan, "logrank_p": np.nan}
    summary = fitter.summary.loc["high"]
    p_value = logrank_test(time[rows][group], time[rows][~group], event[rows][group], event[rows][~group]).p_value
    return {
        "estimate": float(summary["exp(coef)"]),
        "low": float(summary["exp(coef) lower 95%"]),
        "high": float(summary["exp(coef) upper 95%"]),
        "logrank_p": float(p_value),
    }


def auc(label: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC over patients with both values known (NaN if one class only)."""
    rows = known_rows(label, score)
    return float(roc_auc_score(label[rows], score[rows])) if len(np.unique(label[rows])) == 2 else np.nan


def f1_at(label: np.ndarray, probability: np.ndarray, threshold: np.ndarray) -> float:
    """F1 at per-patient thresholds fixed on the training folds."""
    rows = known_rows(label, probability, threshold)
    return float(f1_score(label[rows], probability[rows] >= threshold[rows], zero_division=0))


def classification_at(label: np.ndarray, probability: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """Accuracy, sensitivity and specificity at per-patient thresholds fixed on the training folds."""
    rows = known_rows(label, probability, threshold)
    predicted = probability[rows] >= threshold[rows]
    return np.array(
        [
            accuracy_score(label[rows], predicted),
            recall_score(label[rows], predicted, zero_division=0),
            recall_score(1 - label[rows], ~predicted, zero_division=0),
        ]
    )


def brier(label: np.ndarray, probability: np.ndarray) -> float:
    """Brier score of a probability over known pairs."""
    rows = known_rows(label, probability)
    return float(brier_score_loss(label[rows], np.clip(probability[rows], 0.0, 1.0)))


def rmse(observed: np.ndarray, predicted: np.ndarray) -> float:
    """Root mean squared error over known pairs."""
    rows = known_rows(observed, predicted)
    return float(np.sqrt(mean_squared_error(observed[rows], predicted[rows])))


def pearson(observed: np.ndarray, predicted: np.ndarray) -> float:
    """Pearson correlation over known pairs."""
    rows = known_rows(observed, predicted)
    return float(pearsonr(observed[rows], predicted[rows])[0])


def mae(observed: np.ndarray, predicted: np.ndarray) -> float:
    """Mean absolute error over known pairs."""
    rows = known_rows(observed, predicted)
    return float(mean_absolute_error(observed[rows], predicted[rows]))


def r2(observed: np.ndarray, predicted: np.ndarray) -> float:
    """Coefficient of determination over known pairs."""
    rows = known_rows(observed, predicted)
    return float(r2_score(observed[rows], predicted[rows]))
