"""Imaging biomarkers (#21) on synthetic cohorts whose generator renders them (docs/synth.md).

Part 1 (agreement): one cohort of --n patients on the `full` grid (2 mm in plane) segmented by the default backend;
per biomarker, Pearson r between what `segment` measured and the generator's truth (truth.csv), with the mean
difference. Goal: r ≥ 0.9 for muscle area, ascites volume, spleen volume and portal vein diameter.

Part 2 (prognosis, --survival): at n = 120 and 300, for --seeds generator seeds, 5-fold CV (stratified by event):
out-of-fold Harrell's C of a ridge Cox on the clinical variables, of one on the clinical variables plus the measured
biomarkers, and of the default fused model (`fuse-train`, its default config; out-of-fold C)
trained on the clinical table and radiomics with and without the biomarkers block (no embeddings: an encoder per
cohort is out of a 2-core budget); the paired difference with the clinical Cox beside each.

Usage: python benchmarks/biomarkers_synthetic.py [--n 40] [--survival] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from lifelines import CoxPHFitter
from lifelines.utils import concordance_index
from sklearn.model_selection import StratifiedKFold

from tipsprog import store
from tipsprog.clinical import read_clinical
from tipsprog.fusion import run_fuse_train
from tipsprog.fusion.config import load_config
from tipsprog.fusion.data import clinical_features, numeric_extras
from tipsprog.radiomics import run_radiomics
from tipsprog.segment import run_segment
from tipsprog.synth import CohortSpec, make_cohort

TRUTH_OF = {"muscle/l3_area[cm2]": "muscle_l3_area_cm2", "muscle/l3_density[HU]": "muscle_l3_hu",
            "fat/l3_subcutaneous_area[cm2]": "sat_l3_area_cm2", "fat/l3_visceral_area[cm2]": "vat_l3_area_cm2",
            "ascites/volume[mL]": "ascites_ml", "liver/volume[mL]": "liver_volume_ml",
            "liver/caudate_right_ratio[1]": "caudate_right_ratio", "liver/surface_roughness[mm]": "nodularity",
            "spleen/volume[mL]": "spleen_volume_ml", "spleen/length[mm]": "spleen_length_mm",
            "portal_vein/diameter[mm]": "pv_diameter_mm"}
GOALS = ("muscle/l3_area[cm2]", "ascites/volume[mL]", "spleen/volume[mL]", "portal_vein/diameter[mm]")
FOLDS = 5


def measured_biomarkers(folder: Path, spec: CohortSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A synthetic cohort segmented by the default backend: its biomarkers block (by patient) and truth.csv."""
    make_cohort(folder / "cohort", spec, workers=2)
    run_segment(folder / "cohort" / "cohort.csv", folder / "seg.h5", "classic", 2)
    with store.open_store(folder / "seg.h5") as h5:
        block = store.read_features(h5)["biomarkers"]
        patients = store.read_patients(h5)
    measured = pd.DataFrame(block.values, columns=block.names, index=patients)
    return measured, pd.read_csv(folder / "cohort" / "truth.csv").set_index("patient_id").loc[patients]


def agreement(n: int, seed: int) -> None:
    """Part 1: Pearson r of each measured biomarker with its truth."""
    with tempfile.TemporaryDirectory() as folder:
        measured, truth = measured_biomarkers(Path(folder), CohortSpec(n=n, centers=3, seed=seed, size="full"))
    print(f"agreement with the generator's truth: {n} patients, full grid, seed {seed}")
    print(f"{'biomarker':<32}{'measured':>9}{'r':>8}{'mean diff':>11}   goal")
    for name, column in TRUTH_OF.items():
        pair = pd.concat([measured[name], truth[column]], axis=1).dropna()
        r = np.corrcoef(pair.iloc[:, 0], pair.iloc[:, 1])[0, 1] if len(pair) > 2 else np.nan
        goal = "r ≥ 0.9" if name in GOALS else ""
        print(f"{name:<32}{len(pair):>9}{r:>8.3f}{(pair.iloc[:, 0] - pair.iloc[:, 1]).mean():>11.2f}   {goal}")


def _ridge_cox_c(features: np.ndarray, time: np.ndarray, event: np.ndarray, folds: list) -> float:
    """Out-of-fold Harrell C of a ridge Cox (median imputation and scaling fitted on the training folds; each fold's
    linear predictor centred on its training patients, so that the folds pool on one scale)."""
    risk = np.zeros(len(time))
    for train, test in folds:
        median = np.nanmedian(features[train], axis=0)
        filled = np.where(np.isnan(features), median, features)
        scale = filled[train].std(axis=0)
        keep = scale > 1e-8
        z = (filled[:, keep] - filled[train][:, keep].mean(axis=0)) / scale[keep]
        frame = pd.DataFrame(z[train]).assign(time=time[train], event=event[train])
        model = CoxPHFitter(penalizer=0.1).fit(frame, "time", "event")
        risk[test] = z[test] @ model.params_.to_numpy() - (z[train] @ model.params_.to_numpy()).mean()
    return float(concordance_index(time, -risk, event))


def _fused_c(folder: Path, stores: list[Path], name: str) -> float:
    """Out-of-fold Harrell C of the default fused model trained by fuse-train on the given stores."""
    out = folder / name
    metrics = run_fuse_train(stores, folder / "cohort" / "clinical.csv", folder / "cohort" / "outcomes.csv", out,
                             load_config(folds=FOLDS), cv_mode="kfold", device_name="cpu")
    return float(metrics["harrell_c"]["model"]["estimate"])


def prognosis(n: int, seed: int) -> dict[str, float]:
    """Part 2 for one cohort: C of each model."""
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        measured, _ = measured_biomarkers(folder, CohortSpec(n=n, centers=3, seed=seed))
        run_radiomics(folder / "seg.h5", folder / "radiomics.h5", workers=2)
        clinical = read_clinical(folder / "cohort" / "clinical.csv").loc[measured.index]
        outcomes = pd.read_csv(folder / "cohort" / "outcomes.csv").set_index("patient_id").loc[measured.index]
        time, event = outcomes["time"].to_numpy(float), outcomes["event"].to_numpy(float)
        matrix, _ = clinical_features(clinical, numeric_extras(clinical))
        folds = list(StratifiedKFold(FOLDS, shuffle=True, random_state=seed).split(matrix, event))
        return {"clinical Cox": _ridge_cox_c(matrix, time, event, folds),
                "clinical + biomarkers (ridge Cox)": _ridge_cox_c(np.hstack([matrix, measured.to_numpy()]), time, event, folds),
                "fused, clinical + radiomics": _fused_c(folder, [folder / "radiomics.h5"], "without"),
                "fused, + biomarkers": _fused_c(folder, [folder / "seg.h5", folder / "radiomics.h5"], "with")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--survival", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    agreement(args.n, args.seeds[0])
    if not args.survival:
        return
    for n in (120, 300):
        rows = pd.DataFrame([prognosis(n, seed) for seed in args.seeds])
        base = rows["clinical Cox"]
        print(f"\nn = {n}, {FOLDS}-fold CV, generator seeds {args.seeds}: Harrell's C, mean over seeds (paired Δ vs clinical Cox)")
        for model in rows.columns:
            delta = rows[model] - base
            print(f"  {model:<36}{rows[model].mean():.3f}  Δ {delta.mean():+.3f} ({delta.min():+.3f} to {delta.max():+.3f})")


if __name__ == "__main__":
    main()
