"""Metric tables for every prediction row, paired differences, and the markdown/JSON report."""

from __future__ import annotations

import numpy as np

from tipsprog.evaluate import metrics
from tipsprog.evaluate.rows import OutOfFold, PredictionRow

METRICS_SCHEMA = "tipsprog-metrics-1"


def survival_metrics(row: PredictionRow, data: OutOfFold, horizons: np.ndarray, tau: float, grid: np.ndarray,
                     samples: np.ndarray) -> tuple[dict, np.ndarray]:
    """Survival metrics of one row with CIs, and its Harrell's C replicates (for paired differences)."""
    time, event, risk = data.outcomes["time"], data.outcomes["event"], row.risk
    n = len(time)
    tied = len(np.unique(risk[np.isfinite(risk)])) < np.isfinite(risk).sum()
    statistics = {
        "harrell_c": lambda r: metrics.harrell_c(time[r], event[r], risk[r]),
        "harrell_c_random_ties": (lambda r: metrics.harrell_c_random_ties(time[r], event[r], risk[r])) if tied
        else (lambda r: metrics.harrell_c(time[r], event[r], risk[r])),
        "uno_c": lambda r: metrics.uno_c(time[r], event[r], risk[r], tau),
        "integrated_brier": lambda r: metrics.integrated_brier(time[r], event[r], row.survival[r], grid),
    }
    for index, horizon in enumerate(horizons):
        statistics[f"auc_{int(horizon)}d"] = (
            lambda r, i=index, h=horizon: metrics.time_dependent_auc(time[r], event[r], risk[r], np.array([h]))[0])
    results, c_replicates = {}, np.array([])
    for name, statistic in statistics.items():
        estimate, replicates = metrics.with_bootstrap(statistic, n, samples)
        results[name] = metrics.interval(estimate, replicates)
        if name == "harrell_c":
            c_replicates = replicates
    results["hazard_ratio"] = metrics.hazard_ratio(time, event, row.high_risk.astype(float))
    return results, c_replicates


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


def evaluate_rows(rows: list[PredictionRow], data: OutOfFold, horizons: np.ndarray, draws: int, seed: int) -> dict:
    """The whole metrics document (schema tipsprog-metrics-1)."""
    time = data.outcomes["time"]
    tau = float(min(horizons.max(), np.nanpercentile(time, 90)))
    grid = np.linspace(30.0, tau, 25)
    samples = metrics.bootstrap_samples(len(time), draws, seed)
    survival, ohe, ppg, c_replicates = {}, {}, {}, {}
    for row in rows:
        survival[row.name], c_replicates[row.name] = survival_metrics(row, data, horizons, tau, grid, samples)
        if row.ohe_probability is not None:
            ohe[row.name] = ohe_metrics(row, data, samples)
        if row.ppg_post is not None:
            ppg[row.name] = ppg_metrics(row, data, samples)
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
