"""Real survival data: tipsprog's clinical-only Cox C-index and IBS against lifelines and scikit-survival, same folds.

For lifelines' `rossi` and scikit-survival's `whas500`, `gbsg2` and `veterans_lung_cancer`, the covariates become
extra clinical columns and the cohort goes through the CLI (`fuse-train --model clinical-cox`, then `evaluate`).
The reference reads the bundle's test folds and, per fold, standardises the covariates on the training patients
(population SD, clipped at ±5 SD, as tipsprog's preprocessor does), fits lifelines' CoxPHFitter with the bundle's
penalizer, and predicts the test patients: risk is the linear predictor on the standardised covariates (not
lifelines' re-centred one, whose per-fold shift would reorder patients across folds), survival is lifelines' own
Breslow baseline read as a step function (its `predict_survival_function(times=…)` interpolates linearly between
follow-up times instead). Then scikit-survival's `concordance_index_censored` and `integrated_brier_score` on the
evaluate report's own IBS grid. Prints both and the absolute differences; exits
non-zero when a difference exceeds 1e-6.

Usage: python benchmarks/real_survival.py [--work DIR] [--datasets rossi,whas500,gbsg2,veterans]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from time import perf_counter

import h5py
import numpy as np
import pandas as pd
import yaml
from lifelines import CoxPHFitter
from lifelines.datasets import load_rossi
from sksurv.datasets import load_gbsg2, load_veterans_lung_cancer, load_whas500
from sksurv.metrics import concordance_index_censored, integrated_brier_score
from sksurv.util import Surv

TOLERANCE = 1e-6
CLIP_SD = 5.0


def _from_sksurv(loader: Callable) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Covariates (categoricals dummy-coded, first level dropped), time and event of a scikit-survival dataset."""
    covariates, outcome = loader()
    event_field, time_field = outcome.dtype.names
    numeric = pd.get_dummies(covariates, drop_first=True, dtype=float).astype(float)
    return numeric, outcome[time_field].astype(float), outcome[event_field].astype(float)


def _rossi() -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """lifelines' rossi recidivism data (time in weeks)."""
    table = load_rossi()
    return table.drop(columns=["week", "arrest"]).astype(float), table["week"].to_numpy(float), table["arrest"].to_numpy(float)


DATASETS: dict[str, tuple[Callable[[], tuple[pd.DataFrame, np.ndarray, np.ndarray]], list[float], str]] = {
    "rossi": (_rossi, [13.0, 26.0, 39.0], "weeks"),
    "whas500": (lambda: _from_sksurv(load_whas500), [182.0, 365.0, 730.0], "days"),
    "gbsg2": (lambda: _from_sksurv(load_gbsg2), [365.0, 730.0, 1460.0], "days"),
    "veterans": (lambda: _from_sksurv(load_veterans_lung_cancer), [30.0, 91.0, 182.0], "days"),
}


def write_cohort(folder: Path, covariates: pd.DataFrame, time: np.ndarray, event: np.ndarray, horizons: list[float]) -> None:
    """clinical.csv (covariates as extra columns x_<name>), outcomes.csv and a config with the dataset's horizons."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = [f"R{i:04d}" for i in range(len(time))]
    clinical = covariates.rename(columns=lambda c: "x_" + "".join(ch if ch.isalnum() else "_" for ch in str(c)))
    clinical.insert(0, "patient_id", ids)
    clinical.to_csv(folder / "clinical.csv", index=False)
    pd.DataFrame({"patient_id": ids, "time": time, "event": event}).to_csv(folder / "outcomes.csv", index=False)
    (folder / "config.yaml").write_text(yaml.safe_dump({"folds": 5, "seeds": 1, "horizons_days": horizons}))


def tipsprog(*args: str | Path) -> None:
    """Run one CLI command, failing loudly."""
    subprocess.run([sys.executable, "-m", "tipsprog", *map(str, args), "--quiet"], check=True)


def reference(
    covariates: pd.DataFrame, time: np.ndarray, event: np.ndarray, fold: np.ndarray, penalizer: float, grid: np.ndarray
) -> tuple[float, float]:
    """Harrell's C and IBS of per-fold lifelines Cox fits, computed with scikit-survival."""
    values = covariates.to_numpy(float)
    risk = np.full(len(time), np.nan)
    survival = np.full((len(time), len(grid)), np.nan)
    for index in np.unique(fold):
        train, test = fold != index, fold == index
        mean, sd = values[train].mean(axis=0), values[train].std(axis=0)
        scaled = pd.DataFrame(np.clip((values - mean) / sd, -CLIP_SD, CLIP_SD), columns=covariates.columns)
        fitter = CoxPHFitter(penalizer=penalizer).fit(scaled[train].assign(T=time[train], E=event[train]), "T", "E")
        risk[test] = scaled[test].to_numpy() @ fitter.params_.to_numpy()
        baseline = fitter.baseline_cumulative_hazard_.iloc[:, 0]
        cumulative = baseline.reindex(grid, method="ffill").fillna(0.0).to_numpy()
        survival[test] = np.exp(-np.outer(fitter.predict_partial_hazard(scaled[test]).to_numpy(), cumulative))
    outcome = Surv.from_arrays(event.astype(bool), time)
    harrell = concordance_index_censored(event.astype(bool), time, risk)[0]
    return float(harrell), float(integrated_brier_score(outcome, outcome, survival, grid))


def run_dataset(name: str, work: Path) -> tuple[dict, float]:
    """tipsprog's and the reference's clinical Cox C and IBS on one dataset, and tipsprog's seconds."""
    load, horizons, unit = DATASETS[name]
    covariates, time, event = load()
    folder = work / name
    write_cohort(folder, covariates, time, event, horizons)
    for output in ("model", "report"):
        shutil.rmtree(folder / output, ignore_errors=True)
    start = perf_counter()
    tipsprog(
        "fuse-train",
        "--clinical",
        folder / "clinical.csv",
        "--outcomes",
        folder / "outcomes.csv",
        "--model",
        "clinical-cox",
        "--config",
        folder / "config.yaml",
        "--device",
        "cpu",
        "--out",
        folder / "model",
    )
    tipsprog("evaluate", folder / "model", "--out", folder / "report", "--bootstrap", 10, "--workers", 1)
    seconds = perf_counter() - start
    with h5py.File(folder / "model" / "oof.h5") as oof:
        order = [p.decode() for p in oof["patients"][()]]
        fold = oof["outcomes/fold"][()]
    position = {f"R{i:04d}": i for i in range(len(time))}
    rows = np.array([position[p] for p in order])
    manifest = yaml.safe_load((folder / "model" / "bundle.yaml").read_text())
    setting = json.loads((folder / "report" / "metrics.json").read_text())["settings"]["out-of-fold"]
    grid = np.array(setting["ibs_grid_days"])
    harrell, ibs = reference(
        covariates.iloc[rows].reset_index(drop=True),
        time[rows],
        event[rows],
        fold,
        manifest["config"]["clinical_cox_penalizer"],
        grid,
    )
    row = setting["survival"]["clinical-cox"]
    return {
        "patients": len(time),
        "events": int(event.sum()),
        "unit": unit,
        "tipsprog_c": row["harrell_c"]["estimate"],
        "reference_c": harrell,
        "tipsprog_ibs": row["integrated_brier"]["estimate"],
        "reference_ibs": ibs,
    }, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("benchmarks/.real-work"))
    parser.add_argument("--datasets", default=",".join(DATASETS))
    args = parser.parse_args()
    print("Clinical-only Cox, 5-fold CV: tipsprog evaluate vs lifelines CoxPHFitter + scikit-survival metrics, same folds")
    print(
        f"{'dataset':<10}{'n':>5}{'deaths':>7}  {'C tipsprog':>11}{'C reference':>12}{'|Δ|':>9}  "
        f"{'IBS tipsprog':>12}{'IBS reference':>14}{'|Δ|':>9}{'s':>6}"
    )
    worst = 0.0
    for name in args.datasets.split(","):
        result, seconds = run_dataset(name, args.work)
        c_gap = abs(result["tipsprog_c"] - result["reference_c"])
        ibs_gap = abs(result["tipsprog_ibs"] - result["reference_ibs"])
        worst = max(worst, c_gap, ibs_gap)
        print(
            f"{name:<10}{result['patients']:>5}{result['events']:>7}  {result['tipsprog_c']:>11.6f}{result['reference_c']:>12.6f}"
            f"{c_gap:>9.1e}  {result['tipsprog_ibs']:>12.6f}{result['reference_ibs']:>14.6f}{ibs_gap:>9.1e}{seconds:>6.0f}",
            flush=True,
        )
    print(f"largest difference {worst:.1e} (tolerance {TOLERANCE:.0e})")
    sys.exit(0 if worst <= TOLERANCE else 1)


if __name__ == "__main__":
    main()
