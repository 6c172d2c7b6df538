"""Metric tables for every prediction row, paired differences, and the markdown/JSON report."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from lifelines.exceptions import ConvergenceError

from tipsprog import bootstrap
from tipsprog.clinical import FIPS_HIGH_RISK
from tipsprog.evaluate import metrics
from tipsprog.evaluate.rows import Cohort, PredictionRow
from tipsprog.parallel import map_ordered
from tipsprog.survival import harrell_c, harrell_c_with_ci

METRICS_SCHEMA = "tipsprog-metrics-2"
COMPARED = ("harrell_c", "uno_c", "integrated_brier")
DECISION_THRESHOLDS = np.round(np.arange(0.05, 0.61, 0.05), 2)
MIN_CENTER_EVENTS = 5
MIN_LABELS = 10
GRID_START_DAYS = 30.0


def _horizon_columns(grid: np.ndarray, horizons: np.ndarray) -> np.ndarray:
    """Positions of the horizons on the evaluation grid."""
    return np.searchsorted(grid, horizons)


def survival_metrics(
    row: PredictionRow, data: Cohort, horizons: np.ndarray, tau: float, grid: np.ndarray, samples: np.ndarray
) -> tuple[dict, dict[str, tuple[float, np.ndarray]]]:
    """Survival metrics of one row with CIs, and the bootstrap replicates the paired comparisons need.

    Random tie-breaking uses 20 draws for the estimate and one draw per resample for the interval.
    """
    time, event, risk = data.outcomes["time"], data.outcomes["event"], row.risk
    tied = metrics.has_ties(risk)
    at_horizons = row.survival[:, _horizon_columns(grid, horizons)]
    inside = metrics.within_follow_up(grid, time)  # the IBS grid: fixed by the whole cohort, the same in every resample
    ibs_grid, on_ibs_grid = grid[inside], row.survival[:, inside]
    names = [
        "harrell_c",
        "harrell_c_random_ties",
        "uno_c",
        "integrated_brier",
        *(f"auc_{int(h)}d" for h in horizons),
        *(f"brier_{int(h)}d" for h in horizons),
    ]

    def statistics(rows: np.ndarray, tie_draws: int) -> np.ndarray:
        random_ties = metrics.harrell_c_random_ties if tied else lambda t, e, r, _: harrell_c(t, e, r)
        return bootstrap.stacked(
            [
                (lambda r: harrell_c(time[r], event[r], risk[r]), 1),
                (lambda r: random_ties(time[r], event[r], risk[r], tie_draws), 1),
                (lambda r: metrics.uno_c(time[r], event[r], risk[r], tau), 1),
                (lambda r: metrics.integrated_brier(time[r], event[r], on_ibs_grid[r], ibs_grid), 1),
                (lambda r: metrics.time_dependent_auc(time[r], event[r], risk[r], horizons), len(horizons)),
                (lambda r: metrics.brier_at(time[r], event[r], at_horizons[r], horizons), len(horizons)),
            ],
            rows,
        )

    estimate, _ = bootstrap.with_bootstrap_vector(
        lambda r: statistics(r, metrics.TIE_BREAK_DRAWS), len(time), samples[:0], len(names)
    )
    _, replicates = bootstrap.with_bootstrap_vector(lambda r: statistics(r, 1), len(time), samples, len(names))
    results = {name: bootstrap.interval(estimate[i], replicates[:, i]) for i, name in enumerate(names)}
    results["hazard_ratio"] = metrics.hazard_ratio(time, event, row.high_risk.astype(float))
    results["calibration"] = calibration_summary(row, data, horizons, grid)
    kept = {name: (estimate[names.index(name)], replicates[:, names.index(name)]) for name in COMPARED}
    return results, kept


def calibration_summary(row: PredictionRow, data: Cohort, horizons: np.ndarray, grid: np.ndarray) -> dict:
    """Calibration slope, observed/expected deaths and decile tables at each horizon, and D-calibration."""
    time, event = data.outcomes["time"], data.outcomes["event"]
    at_horizons = row.survival[:, _horizon_columns(grid, horizons)]
    summary: dict = {"slope": _finite_or_nan(metrics.calibration_slope, time, event, row.risk)}
    for column, horizon in enumerate(horizons):
        if horizon >= np.nanmax(time):
            continue
        summary[f"{int(horizon)}d"] = {
            "observed_expected": metrics.observed_expected(time, event, at_horizons[:, column], horizon),
            "deciles": metrics.calibration_table(time, event, at_horizons[:, column], horizon),
        }
    summary["d_calibration"] = metrics.d_calibration(time, event, row.own_survival)
    return summary


def _finite_or_nan(statistic, *arrays) -> float:
    """A statistic that may fail to converge on degenerate data (NaN then)."""
    try:
        return statistic(*arrays)
    except (ValueError, ConvergenceError):
        return float("nan")


def ohe_metrics(row: PredictionRow, data: Cohort, samples: np.ndarray) -> dict:
    """OHE AUC; Brier for probabilities; accuracy, sensitivity, specificity and F1 at the training-fold threshold."""
    label, score = data.outcomes["ohe"], row.ohe_probability
    assert score is not None, "only rows with an OHE probability are evaluated for OHE"
    n = len(label)
    results = {"auc": bootstrap.interval(*bootstrap.with_bootstrap(lambda r: metrics.auc(label[r], score[r]), n, samples))}
    if row.ohe_threshold is not None:
        threshold = row.ohe_threshold
        results["brier"] = bootstrap.interval(*bootstrap.with_bootstrap(lambda r: metrics.brier(label[r], score[r]), n, samples))
        results["f1"] = bootstrap.interval(
            *bootstrap.with_bootstrap(lambda r: metrics.f1_at(label[r], score[r], threshold[r]), n, samples)
        )
        estimate, replicates = bootstrap.with_bootstrap_vector(
            lambda r: metrics.classification_at(label[r], score[r], threshold[r]), n, samples, 3
        )
        for i, name in enumerate(("accuracy", "sensitivity", "specificity")):
            results[name] = bootstrap.interval(estimate[i], replicates[:, i])
    return results


def _on_rows(
    statistic: Callable[[np.ndarray, np.ndarray], float], observed: np.ndarray, predicted: np.ndarray
) -> Callable[[np.ndarray], float]:
    """A statistic of observed against predicted values, as a function of the rows it is computed on."""
    return lambda r: statistic(observed[r], predicted[r])


def ppg_metrics(row: PredictionRow, data: Cohort, samples: np.ndarray) -> dict:
    """ppg_post MAE, RMSE, R² and Pearson r with CIs."""
    observed, predicted = data.outcomes["ppg_post"], row.ppg_post
    assert predicted is not None, "only rows with a ppg_post prediction are evaluated for PPG"
    statistics = {"mae_mmhg": metrics.mae, "rmse_mmhg": metrics.rmse, "r2": metrics.r2, "pearson_r": metrics.pearson}
    return {
        name: bootstrap.interval(*bootstrap.with_bootstrap(_on_rows(function, observed, predicted), len(observed), samples))
        for name, function in statistics.items()
    }


def observed(labels: np.ndarray, binary: bool) -> bool:
    """Whether a cohort observed an endpoint well enough to evaluate it (enough labels, both classes if binary)."""
    known = labels[np.isfinite(labels)]
    return len(known) >= MIN_LABELS and (not binary or len(np.unique(known)) == 2)


def _row_metrics(job: tuple) -> tuple[dict, dict, dict | None, dict | None]:
    """All metrics of one row (a unit of parallel work)."""
    row, data, horizons, tau, grid, samples = job
    survival, kept = survival_metrics(row, data, horizons, tau, grid, samples)
    ohe = ohe_metrics(row, data, samples) if row.ohe_probability is not None and observed(data.outcomes["ohe"], True) else None
    ppg = ppg_metrics(row, data, samples) if row.ppg_post is not None and observed(data.outcomes["ppg_post"], False) else None
    return survival, kept, ohe, ppg


def evaluation_grid(time: np.ndarray, horizons: np.ndarray) -> tuple[float, np.ndarray]:
    """Truncation time tau (last horizon, at most the 90th percentile of follow-up) and the time grid: 25 points
    from 30 days (or the first horizon, if earlier) to tau for the integrated Brier score, plus the horizons."""
    tau = float(min(horizons.max(), np.nanpercentile(time, 90)))
    return tau, np.unique(np.concatenate([np.linspace(min(GRID_START_DAYS, horizons.min()), tau, 25), horizons]))


def reclassification(rows: list[PredictionRow], data: Cohort, horizon: float, samples: np.ndarray) -> dict | None:
    """NRI of the model against FIPS's high-risk cut-off at a horizon, the model flagging as many patients as FIPS."""
    named = {row.name: row for row in rows}
    if "FIPS" not in named:
        return None
    time, event = data.outcomes["time"], data.outcomes["event"]
    fips_high, risk = named["FIPS"].high_risk.astype(float), named["model"].risk
    known = np.isfinite(fips_high) & np.isfinite(risk)
    flagged = float(fips_high[known].mean())
    model_high = np.where(known, risk >= np.quantile(risk[known], 1.0 - flagged), np.nan)
    estimate, replicates = bootstrap.with_bootstrap_vector(
        lambda r: np.array(list(metrics.net_reclassification(time[r], event[r], fips_high[r], model_high[r], horizon).values())),
        len(time),
        samples,
        3,
    )
    return {
        "horizon_days": float(horizon),
        "fips_cut": FIPS_HIGH_RISK,
        "flagged_fraction": flagged,
        **{name: bootstrap.interval(estimate[i], replicates[:, i]) for i, name in enumerate(("nri", "events", "nonevents"))},
    }


def decision_curve(rows: list[PredictionRow], data: Cohort) -> dict:
    """OHE net benefit over thresholds for rows that predict a probability, treat-all and treat-none."""
    label = data.outcomes["ohe"]
    known = np.isfinite(label)
    prevalence = float(label[known].mean()) if known.any() else float("nan")
    curves = {
        row.name: metrics.net_benefit(label, row.ohe_probability, DECISION_THRESHOLDS).tolist()
        for row in rows
        if row.ohe_threshold is not None and row.ohe_probability is not None
    }
    curves["treat all"] = (prevalence - (1 - prevalence) * DECISION_THRESHOLDS / (1 - DECISION_THRESHOLDS)).tolist()
    curves["treat none"] = [0.0] * len(DECISION_THRESHOLDS)
    return {"thresholds": DECISION_THRESHOLDS.tolist(), "net_benefit": curves}


def per_center(rows: list[PredictionRow], data: Cohort, draws: int, seed: int) -> dict:
    """Harrell's C with CI of every row within each center that has enough deaths."""
    centers = np.array(data.centers)
    time, event = data.outcomes["time"], data.outcomes["event"]
    breakdown = {}
    for center in sorted(set(centers)):
        inside = centers == center
        if np.nansum(event[inside]) < MIN_CENTER_EVENTS:
            continue
        breakdown[center] = {
            "patients": int(inside.sum()),
            "events": int(np.nansum(event[inside])),
            "harrell_c": {
                row.name: harrell_c_with_ci(time[inside], event[inside], row.risk[inside], draws, seed) for row in rows
            },
        }
    return breakdown


def evaluate_rows(rows: list[PredictionRow], data: Cohort, horizons: np.ndarray, draws: int, seed: int, workers: int = 1) -> dict:
    """Every metric of one evaluation setting (the out-of-fold predictions or a held-out cohort)."""
    time = data.outcomes["time"]
    tau, grid = evaluation_grid(time, horizons)
    samples = bootstrap.bootstrap_samples(len(time), draws, seed)
    survival, ohe, ppg, kept = {}, {}, {}, {}
    jobs = [(row, data, horizons, tau, grid, samples) for row in rows]
    for row, (row_survival, row_kept, row_ohe, row_ppg) in zip(rows, map_ordered(_row_metrics, jobs, workers)):
        survival[row.name], kept[row.name] = row_survival, row_kept
        if row_ohe is not None:
            ohe[row.name] = row_ohe
        if row_ppg is not None:
            ppg[row.name] = row_ppg
    differences = {
        name: {
            metric: bootstrap.interval(kept["model"][metric][0] - values[metric][0], kept["model"][metric][1] - values[metric][1])
            for metric in COMPARED
        }
        for name, values in kept.items()
        if name != "model"
    }
    middle = float(horizons[len(horizons) // 2])
    return {
        "patients": len(time),
        "events": int(np.nansum(data.outcomes["event"])),
        "bootstrap_draws": draws,
        "tau_days": tau,
        "horizons_days": horizons.tolist(),
        "ibs_grid_days": grid[metrics.within_follow_up(grid, time)].tolist(),
        "survival": survival,
        "model_minus": differences,
        "reclassification": reclassification(rows, data, middle, samples),
        "ohe": ohe,
        "decision_curve_ohe": decision_curve(rows, data) if ohe else None,
        "ppg_post": ppg,
        "centers": per_center(rows, data, min(draws, 200), seed),
    }
