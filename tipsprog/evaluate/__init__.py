"""evaluate stage: metrics with bootstrap CIs, clinical-score baselines, report and plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tipsprog.evaluate import plots
from tipsprog.evaluate.report import evaluate_rows, evaluation_grid, markdown
from tipsprog.evaluate.rows import prediction_rows, read_oof, read_truth
from tipsprog.fusion.bundle import load_bundle
from tipsprog.store import atomic_output


def run_evaluate(bundle_path: Path, out: Path, truth_csv: Path | None = None, draws: int = 1000, seed: int = 0,
                 workers: int = 1) -> dict:
    """Evaluate a bundle's out-of-fold predictions; write report.md, metrics.json and plots into `out`."""
    bundle = load_bundle(bundle_path)
    data = read_oof(bundle.path / "oof.h5")
    horizons = np.array(bundle.config.horizons_days, dtype=float)
    truth = read_truth(truth_csv, data.patient_ids) if truth_csv else None
    _, grid = evaluation_grid(data.outcomes["time"], horizons)
    rows, notes = prediction_rows(data, grid, truth)
    document = evaluate_rows(rows, data, horizons, draws, seed, workers)
    document["notes"] = notes
    with atomic_output(out) as tmp:
        tmp.mkdir(parents=True)
        model = rows[0]
        plots.kaplan_meier_by_group(data.outcomes["time"], data.outcomes["event"], model.high_risk.astype(float),
                                    document["survival"]["model"]["hazard_ratio"]["logrank_p"], tmp / "km.png")
        plots.roc(data.outcomes["ohe"], {r.name: r.ohe_probability for r in rows if r.ohe_probability is not None},
                  tmp / "ohe_roc.png")
        (tmp / "metrics.json").write_text(json.dumps(document, indent=2, allow_nan=True), encoding="utf-8")
        (tmp / "report.md").write_text(markdown(document, notes), encoding="utf-8")
    return document
