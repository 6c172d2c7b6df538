"""Imaging biomarkers (#21) on synthetic cohorts whose generator renders them (docs/synth.md).

Part 1 (agreement): one cohort of --n patients on the `full` grid (2 mm in plane) segmented by the default backend;
per biomarker, Pearson r between what `segment` measured and the generator's truth (truth.csv), with the mean
difference. Goal: r ≥ 0.9 for muscle area, ascites volume, spleen volume and portal vein diameter.

Part 2 of #21 (prognosis with and without the block at n = 120 and 300) is benchmarks/fusion_safety.py.

Usage: python benchmarks/biomarkers_synthetic.py [--n 40] [--seed 0]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from tipsprog import store
from tipsprog.segment import SegmentOptions, run_segment
from tipsprog.synth import CohortSpec, make_cohort

TRUTH_OF = {
    "muscle/l3_area[cm2]": "muscle_l3_area_cm2",
    "muscle/l3_density[HU]": "muscle_l3_hu",
    "fat/l3_subcutaneous_area[cm2]": "sat_l3_area_cm2",
    "fat/l3_visceral_area[cm2]": "vat_l3_area_cm2",
    "ascites/volume[mL]": "ascites_ml",
    "liver/volume[mL]": "liver_volume_ml",
    "liver/caudate_right_ratio[1]": "caudate_right_ratio",
    "liver/surface_roughness[mm]": "nodularity",
    "spleen/volume[mL]": "spleen_volume_ml",
    "spleen/length[mm]": "spleen_length_mm",
    "portal_vein/diameter[mm]": "pv_diameter_mm",
}
GOALS = ("muscle/l3_area[cm2]", "ascites/volume[mL]", "spleen/volume[mL]", "portal_vein/diameter[mm]")


def measured_biomarkers(folder: Path, spec: CohortSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A synthetic cohort segmented by the default backend: its biomarkers block (by patient) and truth.csv."""
    make_cohort(folder / "cohort", spec, workers=2)
    run_segment(folder / "cohort" / "cohort.csv", folder / "seg.h5", SegmentOptions(workers=2))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    agreement(args.n, args.seed)


if __name__ == "__main__":
    main()
