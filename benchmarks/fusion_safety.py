"""Does the default fused model ever lose to the clinical Cox? (#22 item 1, and #21 item 5.)

Synthetic cohorts (`tipsprog synth`, small grid) at n = 120 and 300, for --seeds generator seeds, each with two outcome
sets on the same patients and images: imaging signal present (docs/synth.md) and none (`--no-imaging-signal`: the
outcomes depend on the clinical table only). Each cohort is segmented (default backend, which measures the biomarkers
block) and its radiomics extracted once; then, per outcome set, with the same 5 folds (fuse-train's own K-fold split):

- clinical Cox: fuse-train's in-fold penalised Cox on the clinical table (the report's baseline row);
- clinical + biomarkers (ridge Cox): the same Cox with the measured biomarkers added (median-imputed, standardised in
  the fold);
- fused without biomarkers: the default fused model (`fuse-train` with the packaged config) on clinical + radiomics;
- fused (default): the default fused model on clinical + biomarkers + radiomics.

Embeddings are left out (an encoder per cohort is beyond a 2-core budget). Printed per setting: out-of-fold Harrell's
C averaged over seeds and the paired difference with the clinical Cox (mean, min to max over seeds), and the residual
weights the guided model chose. Goals (#22): mean Δ of the default ≥ −0.005 without imaging signal and ≥ +0.02 with it.

Usage: python benchmarks/fusion_safety.py [--sizes 120 300] [--seeds 0 1 2 3 4 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from tipsprog import store
from tipsprog.fusion import FuseTrainOptions, run_fuse_train
from tipsprog.fusion.assembly import assemble
from tipsprog.fusion.clinical_cox import cox_coefficients
from tipsprog.fusion.config import load_config
from tipsprog.fusion.data import ModalityPreprocessor
from tipsprog.fusion.splits import cv_splits
from tipsprog.radiomics import RadiomicsOptions, run_radiomics
from tipsprog.segment import SegmentOptions, run_segment
from tipsprog.survival import harrell_c
from tipsprog.synth import CohortSpec, make_cohort
from tipsprog.synth.cohort import complete_clinical, imaging_findings, latents, outcomes_and_truth

FOLDS = 5
SIGNALS = {"present": True, "none": False}


def _ridge_cox_c(features: np.ndarray, outcomes: pd.DataFrame, centers: np.ndarray, penalizer: float) -> float:
    """Out-of-fold Harrell's C of a penalised Cox on fuse-train's folds, preprocessing fitted in each training fold."""
    time, event = outcomes["time"].to_numpy(float), outcomes["event"].to_numpy(float)
    risk = np.zeros(len(time))
    for train, test in cv_splits(event, centers, FOLDS, "kfold", 0):
        scaler = ModalityPreprocessor.fit(features[train], [str(i) for i in range(features.shape[1])])
        coefficients = cox_coefficients(scaler.transform_flat(features[train]), time[train], event[train], penalizer)
        risk[test] = scaler.transform_flat(features[test]) @ coefficients
    return harrell_c(time, event, risk)


def _fused(folder: Path, stores: list[Path], outcomes_csv: Path, name: str) -> dict:
    """fuse-train's metrics for the default config on the given stores."""
    return run_fuse_train(
        stores,
        folder / "cohort" / "clinical.csv",
        outcomes_csv,
        folder / name,
        FuseTrainOptions(load_config(folds=FOLDS), device="cpu"),
    )


def _outcomes_without_signal(spec: CohortSpec, path: Path) -> None:
    """The cohort's outcomes drawn again with every imaging term left out (same patients, same draws)."""
    lat = latents(spec)
    full = complete_clinical(lat, spec)
    outcomes, _ = outcomes_and_truth(lat, full, imaging_findings(full, spec), dataclasses.replace(spec, imaging_signal=False))
    outcomes.to_csv(path, index=False)


def cohort_rows(n: int, seed: int) -> list[dict]:
    """Every model's C on one cohort, for both outcome sets."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        spec = CohortSpec(n=n, centers=3, seed=seed)
        make_cohort(folder / "cohort", spec, workers=2)
        _outcomes_without_signal(spec, folder / "outcomes-none.csv")
        run_segment(folder / "cohort" / "cohort.csv", folder / "seg.h5", SegmentOptions(workers=2))
        run_radiomics(folder / "seg.h5", folder / "radiomics.h5", RadiomicsOptions(workers=2))
        with store.open_store(folder / "seg.h5") as h5:
            patients = store.read_patients(h5)
            biomarkers = store.read_features(h5)["biomarkers"].values
        clinical = assemble(
            [folder / "radiomics.h5"], folder / "cohort" / "clinical.csv", folder / "cohort" / "outcomes.csv", ("clinical",)
        ).data
        order = {pid: row for row, pid in enumerate(clinical.patient_ids)}
        clinical_matrix = clinical.matrices["clinical"][[order[p] for p in patients]]
        for signal, outcomes_csv in (("present", folder / "cohort" / "outcomes.csv"), ("none", folder / "outcomes-none.csv")):
            default = _fused(folder, [folder / "seg.h5", folder / "radiomics.h5"], outcomes_csv, f"default-{signal}")
            without = _fused(folder, [folder / "radiomics.h5"], outcomes_csv, f"without-{signal}")
            outcomes = pd.read_csv(outcomes_csv).set_index("patient_id").loc[patients]
            centers = pd.read_csv(folder / "cohort" / "cohort.csv").set_index("patient_id").loc[patients, "center"].to_numpy()
            rows.append(
                {
                    "n": n,
                    "seed": seed,
                    "signal": signal,
                    "clinical Cox": default["harrell_c"]["clinical-cox"]["estimate"],
                    "clinical + biomarkers (ridge Cox)": _ridge_cox_c(
                        np.hstack([clinical_matrix, biomarkers]), outcomes, centers, 0.1
                    ),
                    "fused without biomarkers": without["harrell_c"]["model"]["estimate"],
                    "fused (default)": default["harrell_c"]["model"]["estimate"],
                    "weights": default.get("residual_weight_by_fold", []),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[120, 300])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    args = parser.parse_args()
    table = pd.DataFrame([row for n in args.sizes for seed in args.seeds for row in cohort_rows(n, seed)])
    models = ["clinical Cox", "clinical + biomarkers (ridge Cox)", "fused without biomarkers", "fused (default)"]
    for (n, signal), rows in table.groupby(["n", "signal"], sort=False):
        print(
            f"\nn = {n}, imaging signal {signal}, {FOLDS}-fold CV, generator seeds {args.seeds}: out-of-fold Harrell's C, "
            "mean over seeds (paired Δ vs clinical Cox: mean, min to max)"
        )
        for model in models:
            delta = rows[model] - rows["clinical Cox"]
            print(f"  {model:<36}{rows[model].mean():.3f}  Δ {delta.mean():+.3f} ({delta.min():+.3f} to {delta.max():+.3f})")
        weights = np.concatenate([np.asarray(w, float) for w in rows["weights"]])
        print(
            f"  residual weight of the default per fold: mean {weights.mean():.2f}, zero in {np.mean(weights == 0):.0%} of folds"
        )


if __name__ == "__main__":
    main()
