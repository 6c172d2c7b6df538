"""Metric tables for every prediction row, paired differences, and the markdown/JSON report."""

from __future__ import annotations

import numpy as np

from tipsprog.evaluate import metrics
from tipsprog.evaluate.rows import OutOfFold, PredictionRow
from tipsprog.parallel import map_ordered

METRICS_SCHEMA = "tipsprog-metrics-1"


def survival_metrics(row: PredictionRow, data: OutOfFold, horizons: np.ndarray, tau: float, grid: np.ndarray,
                     samples: np.ndarray) -> tuple[dict, np.ndarray]:
    """Survival metrics of one row with CIs, and its Harrell's C replicates (for paired differences).

    Random tie-breaking uses 20 draws for the estimate and one draw per resample for the interval.
    """
    time, event, risk = data.outcomes["time"], data.outcomes["event"], row.risk
    tied = metrics.has_ties(risk)
    names = ["harrell_c", "harrell_c_random_ties", "uno_c", "integrated_brier", *(f"auc_{int(h)}d" for h in horizons)]

    def statistics(rows: np.ndarray, tie_draws: int) -> np.ndarray:
        plain = metrics.harrell_c(time[rows], event[rows], risk[rows])
        random_ties = metrics.harrell_c_random_ties(time[rows], event[rows], risk[rows], tie_draws) if tied else plain
        return np.array([plain, random_ties, metrics.uno_c(time[rows], event[rows], risk[rows], tau),
                         metrics.integrated_brier(time[rows], event[rows], row.survival[rows], grid),
                         *metrics.time_dependent_auc(time[rows], event[rows], risk[rows], horizons)])

    estimate, _ = metrics.with_bootstrap_vector(lambda r: statistics(r, metrics.TIE_BREAK_DRAWS), len(time),
                                                samples[:0], len(names))
    _, replicates = metrics.with_bootstrap_vector(lambda r: statistics(r, 1), len(time), samples, len(names))
    results = {name: metrics.interval(estimate[i], replicates[:, i]) for i, name in enumerate(names)}
    results["hazard_ratio"] = metrics.hazard_ratio(time, event, row.high_risk.astype(float))
    return results, replicates[:, 0]


def ohe_metrics(row: PredictionRow, data: OutOfFold, samples: np.ndarray) -> dict:
    """OHE AUC (and F1 at the training-fold threshold where the row has one) with CIs."""
    label, score = data.outcomes["ohe"], row.ohe_probability
    results = {"auc": metrics.interval(*metrics.with_bootstrap(lambda r: metrics.auc(label[r], score[r]), len(label), samples))}
    if row.ohe_threshold is not None:
        threshold = row.ohe_threshold
        results["f1"] = metrics.interval(*metrics.with_bootstrap(
            lambda r: metrics.f1_at(label[r], score[r], threshold[r]), len(label), samples))
    return results


def ppg_metrics(row: PredictionRow, data: OutOfFold, samples: np.ndarray) -> dict:
    """ppg_post MAE and R² with CIs."""
    observed, predicted = data.outcomes["ppg_post"], row.ppg_post
    return {
        "mae_mmhg": metrics.interval(*metrics.with_bootstrap(lambda r: metrics.mae(observed[r], predicted[r]), len(observed), samples)),
        "r2": metrics.interval(*metrics.with_bootstrap(lambda r: metrics.r2(observed[r], predicted[r]), len(observed), samples)),
    }


def _row_metrics(job: tuple) -> tuple[dict, np.ndarray, dict | None, dict | None]:
    """All metrics of one row (a unit of parallel work)."""
    row, data, horizons, tau, grid, samples = job
    survival, c_replicates = survival_metrics(row, data, horizons, tau, grid, samples)
    ohe = ohe_metrics(row, data, samples) if row.ohe_probability is not None else None
    ppg = ppg_metrics(row, data, samples) if row.ppg_post is not None else None
    return survival, c_replicates, ohe, ppg


def evaluation_grid(time: np.ndarray, horizons: np.ndarray) -> tuple[float, np.ndarray]:
    """Truncation time tau (last horizon, at most the 90th percentile of follow-up) and the Brier time grid."""
    tau = float(min(horizons.max(), np.nanpercentile(time, 90)))
    return tau, np.linspace(30.0, tau, 25)


def evaluate_rows(rows: list[PredictionRow], data: OutOfFold, horizons: np.ndarray, draws: int, seed: int,
                  workers: int = 1) -> dict:
    """The whole metrics document (schema tipsprog-metrics-1)."""
    time = data.outcomes["time"]
    tau, grid = evaluation_grid(time, horizons)
    samples = metrics.bootstrap_samples(len(time), draws, seed)
    survival, ohe, ppg, c_replicates = {}, {}, {}, {}
    jobs = [(row, data, horizons, tau, grid, samples) for row in rows]
    for row, (row_survival, row_c, row_ohe, row_ppg) in zip(rows, map_ordered(_row_metrics, jobs, workers)):
        survival[row.name], c_replicates[row.name] = row_survival, row_c
        if row_ohe is not None:
            ohe[row.name] = row_ohe
        if row_ppg is not None:
            ppg[row.name] = row_ppg
    model_c = survival["model"]["harrell_c"]["estimate"]
    differences = {
        name: metrics.interval(model_c - survival[name]["harrell_c"]["estimate"], c_replicates["model"] - replicates)
        for name, replicates in c_replicates.items() if name != "model"
    }
    return {
        "schema": METRICS_SCHEMA, "patients": len(time), "events": int(np.nansum(data.outcomes["event"])),
        "bootstrap_draws": draws, "tau_days": tau, "horizons_days": horizons.tolist(),
        "survival": survival, "ohe": ohe, "ppg_post": ppg, "harrell_c_difference_model_minus": differences,
    }


def _ci(entry: dict, digits: int = 3) -> str:
    if not np.isfinite(entry.get("estimate", np.nan)):
        return "–"
    if not np.isfinite(entry.get("low", np.nan)):
        return f"{entry['estimate']:.{digits}f}"
    return f"{entry['estimate']:.{digits}f} ({entry['low']:.{digits}f}–{entry['high']:.{digits}f})"


def markdown(document: dict, notes: list[str]) -> str:
    """report.md: survival, OHE and PPG tables with 95% CIs, differences, and notes."""
    horizons = [int(h) for h in document["horizons_days"]]
    auc_headers = " | ".join(f"AUC {h} d" for h in horizons)
    lines = [
        "# tipsprog evaluation report", "",
        f"{document['patients']} patients, {document['events']} deaths; out-of-fold predictions; "
        f"95% CIs from {document['bootstrap_draws']} bootstrap resamples; Uno's C truncated at {document['tau_days']:.0f} days.", "",
        "## Survival", "",
        f"| row | Harrell's C | C (random ties) | Uno's C | {auc_headers} | IBS | HR high vs low | log-rank p |",
        "|---|---|---|---|" + "---|" * len(horizons) + "---|---|---|",
    ]
    for name, values in document["survival"].items():
        aucs = " | ".join(_ci(values[f"auc_{h}d"]) for h in horizons)
        hr = values["hazard_ratio"]
        lines.append(f"| {name} | {_ci(values['harrell_c'])} | {_ci(values['harrell_c_random_ties'])} | {_ci(values['uno_c'])} | "
                     f"{aucs} | {_ci(values['integrated_brier'])} | {_ci(hr, 2)} | {hr['logrank_p']:.2g} |")
    lines += ["", "## Harrell's C: model minus each row (paired bootstrap)", "", "| row | difference (95% CI) |", "|---|---|"]
    lines += [f"| {name} | {_ci(value)} |" for name, value in document["harrell_c_difference_model_minus"].items()]
    lines += ["", "## Overt hepatic encephalopathy", "", "| row | AUC | F1 |", "|---|---|---|"]
    lines += [f"| {name} | {_ci(v['auc'])} | {_ci(v['f1']) if 'f1' in v else '–'} |" for name, v in document["ohe"].items()]
    lines += ["", "## Portal pressure gradient after TIPS", "", "| row | MAE (mmHg) | R² |", "|---|---|---|"]
    lines += [f"| {name} | {_ci(v['mae_mmhg'], 2)} | {_ci(v['r2'])} |" for name, v in document["ppg_post"].items()]
    lines += ["", "![Kaplan–Meier by risk group](km.png)", "", "![OHE ROC](ohe_roc.png)", ""]
    if notes:
        lines += ["## Notes", "", *[f"- {note}" for note in notes], ""]
    return "\n".join(lines)
