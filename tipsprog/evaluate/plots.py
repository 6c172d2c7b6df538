"""Report figures: Kaplan–Meier by risk group, time-dependent ROC, calibration, OHE ROC, calibration and decision
curve, ppg_post predicted vs observed, and a forest plot of hazard ratios."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from lifelines import KaplanMeierFitter  # noqa: E402
from lifelines.plotting import add_at_risk_counts  # noqa: E402
from matplotlib.typing import LegendLocType  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

DAYS_PER_MONTH = 30.44


def _save(figure: plt.Figure, path: Path) -> None:
    """Write a figure as PNG and release it."""
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _identity_panel(axes: plt.Axes, xlabel: str, ylabel: str, title: str, legend: LegendLocType) -> None:
    """Dotted identity line, labels, title and legend of a ROC or calibration panel."""
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend(loc=legend, fontsize=7)


def kaplan_meier_by_group(time: np.ndarray, event: np.ndarray, high_risk: np.ndarray, logrank_p: float, path: Path) -> None:
    """KM curves of the low and high risk groups with an at-risk table and the log-rank p."""
    rows = np.isfinite(time) & np.isfinite(event) & np.isfinite(high_risk.astype(float))
    figure, axes = plt.subplots(figsize=(7, 5))
    fitters = []
    for label, members in (("low risk", high_risk[rows] == 0), ("high risk", high_risk[rows] == 1)):
        fitter = KaplanMeierFitter(label=label).fit(time[rows][members] / DAYS_PER_MONTH, event[rows][members])
        fitter.plot_survival_function(ax=axes, ci_show=True)
        fitters.append(fitter)
    add_at_risk_counts(*fitters, ax=axes)
    axes.set_xlabel("months after TIPS")
    axes.set_ylabel("survival probability")
    axes.set_title(f"Model risk groups (log-rank p = {logrank_p:.2g})")
    _save(figure, path)


def time_dependent_roc(
    time: np.ndarray, event: np.ndarray, risks: dict[str, np.ndarray], horizons: list[float], path: Path
) -> None:
    """ROC at each horizon: cases died by the horizon, controls alive past it (censored before it left out)."""
    figure, panels = plt.subplots(1, len(horizons), figsize=(4 * len(horizons), 4), squeeze=False)
    for axes, horizon in zip(panels[0], horizons):
        case = (event == 1) & (time <= horizon)
        usable = case | (time > horizon)
        for name, risk in risks.items():
            rows = usable & np.isfinite(risk)
            if len(np.unique(case[rows])) < 2:
                continue
            fpr, tpr, _ = roc_curve(case[rows], risk[rows])
            axes.plot(fpr, tpr, label=name)
        _identity_panel(axes, "1 − specificity", "sensitivity", f"death by {horizon / DAYS_PER_MONTH:.0f} months", "lower right")
    _save(figure, path)


def survival_calibration(tables: dict[str, dict[str, list[dict]]], path: Path) -> None:
    """Predicted vs Kaplan–Meier observed survival by decile at each horizon, one panel per horizon."""
    horizons = sorted({h for per_row in tables.values() for h in per_row}, key=lambda h: float(h.rstrip("d")))
    figure, panels = plt.subplots(1, max(len(horizons), 1), figsize=(4 * max(len(horizons), 1), 4), squeeze=False)
    for axes, horizon in zip(panels[0], horizons):
        for name, per_row in tables.items():
            deciles = per_row.get(horizon, [])
            predicted = [d["predicted"] for d in deciles]
            observed = np.array([d["observed"] for d in deciles])
            error = np.abs(np.array([[d["observed_low"] for d in deciles], [d["observed_high"] for d in deciles]]) - observed)
            axes.errorbar(predicted, observed, yerr=error, marker="o", markersize=3, capsize=2, label=name)
        _identity_panel(
            axes,
            "predicted",
            "observed (Kaplan–Meier)",
            f"survival at {float(horizon.rstrip('d')) / DAYS_PER_MONTH:.0f} months",
            "upper left",
        )
    _save(figure, path)


def roc(label: np.ndarray, scores: dict[str, np.ndarray], path: Path) -> None:
    """ROC curves of OHE for each scored row."""
    figure, axes = plt.subplots(figsize=(5, 5))
    for name, score in scores.items():
        rows = np.isfinite(label) & np.isfinite(score)
        if len(np.unique(label[rows])) < 2:
            continue
        fpr, tpr, _ = roc_curve(label[rows], score[rows])
        axes.plot(fpr, tpr, label=name)
    _identity_panel(axes, "1 − specificity", "sensitivity", "Overt hepatic encephalopathy: ROC", "lower right")
    _save(figure, path)


def ohe_calibration(label: np.ndarray, probabilities: dict[str, np.ndarray], path: Path) -> None:
    """Observed OHE fraction vs mean predicted probability by decile of prediction."""
    figure, axes = plt.subplots(figsize=(5, 5))
    for name, probability in probabilities.items():
        rows = np.isfinite(label) & np.isfinite(probability)
        observed, predicted = calibration_curve(label[rows], np.clip(probability[rows], 0, 1), n_bins=10, strategy="quantile")
        axes.plot(predicted, observed, marker="o", markersize=3, label=name)
    _identity_panel(
        axes, "predicted OHE probability", "observed OHE fraction", "Overt hepatic encephalopathy: calibration", "upper left"
    )
    _save(figure, path)


def decision_curve(curve: dict, path: Path) -> None:
    """Net benefit of acting on predicted OHE risk across threshold probabilities."""
    figure, axes = plt.subplots(figsize=(6, 4.5))
    for name, values in curve["net_benefit"].items():
        if name.startswith("treat"):
            axes.plot(curve["thresholds"], values, label=name, color="grey", linestyle=":" if name == "treat none" else "--")
        else:
            axes.plot(curve["thresholds"], values, label=name)
    treat_all = np.array(curve["net_benefit"]["treat all"])
    axes.set_ylim(min(-0.02, float(np.nanmin(treat_all[treat_all > -0.1], initial=0.0))), None)
    axes.set_xlabel("threshold probability")
    axes.set_ylabel("net benefit")
    axes.set_title("Overt hepatic encephalopathy: decision curve")
    axes.legend(fontsize=8)
    _save(figure, path)


def ppg_scatter(observed: np.ndarray, predicted: dict[str, np.ndarray], path: Path) -> None:
    """Predicted vs observed portal pressure gradient after TIPS."""
    figure, axes = plt.subplots(figsize=(5, 5))
    limits = [np.inf, -np.inf]
    for name, values in predicted.items():
        rows = np.isfinite(observed) & np.isfinite(values)
        axes.scatter(observed[rows], values[rows], s=8, alpha=0.6, label=name)
        limits = [
            min(limits[0], observed[rows].min(), values[rows].min()),
            max(limits[1], observed[rows].max(), values[rows].max()),
        ]
    axes.plot(limits, limits, color="grey", linestyle=":")
    axes.set_xlabel("observed ppg_post (mmHg)")
    axes.set_ylabel("predicted ppg_post (mmHg)")
    axes.set_title("Portal pressure gradient after TIPS")
    axes.legend(fontsize=8)
    _save(figure, path)


def hazard_ratio_forest(ratios: dict[str, dict[str, float]], path: Path) -> None:
    """Forest plot: hazard ratio (95% CI) of the high vs low risk group of every row with a finite interval, log scale."""
    names = [name for name, hr in ratios.items() if np.isfinite([hr["estimate"], hr["low"], hr["high"]]).all() and hr["low"] > 0]
    figure, axes = plt.subplots(figsize=(6, 0.45 * len(names) + 1.2))
    for position, name in enumerate(reversed(names)):
        hr = ratios[name]
        axes.plot([hr["low"], hr["high"]], [position, position], color="black")
        axes.plot(hr["estimate"], position, marker="s", color="black")
    axes.axvline(1.0, color="grey", linestyle=":")
    axes.set_xscale("log")
    axes.set_yticks(range(len(names)), list(reversed(names)))
    axes.set_xlabel("hazard ratio, high vs low risk group (95% CI)")
    _save(figure, path)
