"""Report figures: Kaplan–Meier by risk group and the OHE ROC curve."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from lifelines import KaplanMeierFitter  # noqa: E402
from lifelines.plotting import add_at_risk_counts  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402


def kaplan_meier_by_group(time: np.ndarray, event: np.ndarray, high_risk: np.ndarray, logrank_p: float, path: Path) -> None:
    """KM curves of the low and high risk groups with an at-risk table and the log-rank p."""
    rows = np.isfinite(time) & np.isfinite(event) & np.isfinite(high_risk.astype(float))
    figure, axes = plt.subplots(figsize=(7, 5))
    fitters = []
    for label, members in (("low risk", high_risk[rows] == 0), ("high risk", high_risk[rows] == 1)):
        fitter = KaplanMeierFitter(label=label).fit(time[rows][members] / 30.44, event[rows][members])
        fitter.plot_survival_function(ax=axes, ci_show=True)
        fitters.append(fitter)
    add_at_risk_counts(*fitters, ax=axes)
    axes.set_xlabel("months after TIPS")
    axes.set_ylabel("survival probability")
    axes.set_title(f"Out-of-fold risk groups (log-rank p = {logrank_p:.2g})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def roc(label: np.ndarray, scores: dict[str, np.ndarray], path: Path) -> None:
    """ROC curves of OHE for each scored row."""
    figure, axes = plt.subplots(figsize=(5, 5))
    for name, score in scores.items():
        rows = np.isfinite(label) & np.isfinite(score)
        if len(np.unique(label[rows])) < 2:
            continue
        fpr, tpr, _ = roc_curve(label[rows], score[rows])
        axes.plot(fpr, tpr, label=name)
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":")
    axes.set_xlabel("1 − specificity")
    axes.set_ylabel("sensitivity")
    axes.set_title("Overt hepatic encephalopathy (out-of-fold)")
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
