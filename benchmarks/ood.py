"""Out-of-distribution warnings (#24, tipsprog/fusion/ood.py): how often they fire where they should not and where
they should.

A synthetic training cohort (--n patients, small grid, seed 21) goes through synth → segment → radiomics; the OOD
reference is fitted on its first 75% (5 folds, as fuse-train does) on the clinical, biomarkers and radiomics
modalities. Printed, with the share of patients warned about (any modality) and per modality:
  1. the held-out 25% of the same cohort (false alarms; goal ≤ 2%);
  2. a cohort from other scanners (synth seed 22: other centers' spacing, noise, blur and HU offset; same anatomy
     and clinical generator), --n / 4 patients;
  3. the real CTs in ../shared (the imaging modalities only: they have no clinical rows), each on its own.
Then the acquisition checks (segment/acquisition.py) against the same 75%'s scans: the share of each group's scans
failing a check (spacing, HU calibration, contrast phase), and each real CT's failed checks.
Work folders are reused (--work). Usage: python benchmarks/ood.py [--n 600] [--work DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from shared_data import IRCADB, REAL_CT
from tipsprog.fusion.assembly import assemble
from tipsprog.fusion.data import modality_matrices
from tipsprog.fusion.ood import OodReference, fit_ood
from tipsprog.store import join_features

IMAGING = ("biomarkers", "radiomics")


def tipsprog(work: Path, output: str, *command: str) -> None:
    """Run one CLI step in `work` unless its output exists."""
    if (work / output).exists():
        return
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tipsprog", *command, "--quiet"], cwd=work, check=True)
    print(f"  {command[0]} ({work.name}): {time.perf_counter() - start:.0f} s", flush=True)


def synthetic(work: Path, n: int, seed: int) -> tuple[dict[str, np.ndarray], dict[str, list[str]], dict[str, np.ndarray]]:
    """A synthetic cohort's modality matrices (clinical, biomarkers, radiomics), their column names and its scans'
    acquisition descriptors."""
    work.mkdir(parents=True, exist_ok=True)
    tipsprog(work, "cohort", "synth", "--out", "cohort", "--n", str(n), "--centers", "3", "--seed", str(seed))
    tipsprog(work, "seg.h5", "segment", "cohort/cohort.csv", "--out", "seg.h5")
    tipsprog(work, "radiomics.h5", "radiomics", "seg.h5", "--out", "radiomics.h5")
    data = assemble(
        [work / "seg.h5", work / "radiomics.h5"], work / "cohort/clinical.csv", work / "cohort/outcomes.csv", None
    ).data
    return data.matrices, data.feature_names, data.acquisition


def real_scans(work: Path, names: dict[str, list[str]]) -> tuple[list[str], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The real CTs' imaging matrices, segmented and extracted as one cohort, in the training columns `names` (a
    feature the training scans never had, e.g. of a portal vein, is left out; one the real scan lacks is missing),
    and their acquisition descriptors."""
    work.mkdir(parents=True, exist_ok=True)
    scans = {
        "ircadb-1.1": IRCADB / "ct.nii.gz",
        "example_ct": REAL_CT / "example_ct.nii.gz",
        "example_ct_sm": REAL_CT / "example_ct_sm.nii.gz",
    }
    pd.DataFrame({"patient_id": list(scans), "ct": [str(p) for p in scans.values()]}).to_csv(work / "cohort.csv", index=False)
    tipsprog(work, "seg.h5", "segment", "cohort.csv", "--out", "seg.h5")
    tipsprog(work, "radiomics.h5", "radiomics", "seg.h5", "--out", "radiomics.h5")
    joined = join_features([work / "seg.h5", work / "radiomics.h5"])
    rows = np.arange(len(joined.patient_ids))
    matrices, found, _ = modality_matrices(joined.blocks, rows, np.zeros((len(rows), 0)), [], IMAGING)
    aligned = {}
    for modality in IMAGING:
        column = {name: index for index, name in enumerate(found[modality])}
        aligned[modality] = np.column_stack(
            [matrices[modality][:, column[name]] if name in column else np.full(len(rows), np.nan) for name in names[modality]]
        )
    return joined.patient_ids, aligned, joined.acquisition


def rates(flagged: list[list[str]], modalities: tuple[str, ...]) -> str:
    """Share of patients warned about, overall and per modality."""
    cells = [f"{100 * np.mean([bool(f) for f in flagged]):5.1f}%"]
    cells += [f"{100 * np.mean([m in f for f in flagged]):5.1f}%" for m in modalities]
    return "".join(f"{c:>13}" for c in cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--work", type=Path, default=Path("benchmarks/.ood-work"))
    args = parser.parse_args()
    cohort, names, acquired = synthetic(args.work / "train", args.n, 21)
    other, other_names, other_acquired = synthetic(args.work / "other-scanners", args.n // 4, 22)
    assert other_names == names, "the two synthetic cohorts' feature columns differ"
    ids, real, real_acquired = real_scans(args.work / "real", names)
    train = int(0.75 * args.n)
    modalities = tuple(cohort)
    reference = fit_ood(
        {m: v[:train] for m, v in cohort.items()}, np.arange(train) % 5, {k: v[:train] for k, v in acquired.items()}
    )
    imaging = fit_ood({m: cohort[m][:train] for m in IMAGING}, np.arange(train) % 5)
    print(f"OOD warnings: reference fitted on {train} synthetic patients (seed 21), threshold {reference.threshold:.2f}")
    print(f"{'patients':<44}{'any':>13}" + "".join(f"{m:>13}" for m in modalities))
    print(
        f"{f'held out, same cohort ({args.n - train})':<44}{rates(reference.flagged({m: v[train:] for m, v in cohort.items()}), modalities)}"
    )
    print(
        f"{f'other scanners (synth seed 22, {len(next(iter(other.values())))})':<44}{rates(reference.flagged(other), modalities)}"
    )
    print(f"\nimaging modalities only (reference threshold {imaging.threshold:.2f}); distance on the common scale:")
    distances = imaging.distances(real)
    for row, patient in enumerate(ids):
        cells = "".join(f"{m} {distances[m][row]:9.3g}   " for m in IMAGING)
        print(
            f"  {patient:<20}{cells}{'warned' if any(distances[m][row] > imaging.threshold for m in IMAGING) else 'not warned'}"
        )
    acquisition_table(reference, {k: v[train:] for k, v in acquired.items()}, other_acquired, ids, real_acquired)


def acquisition_table(
    reference: OodReference,
    held_out: dict[str, np.ndarray],
    other: dict[str, np.ndarray],
    ids: list[str],
    real: dict[str, np.ndarray],
) -> None:
    """The acquisition checks: the share of each synthetic group's scans failing any check and each check, and
    the real CTs' failed checks with their descriptors."""
    checks = ("spacing", "HU calibration", "contrast phase")
    ranges = ", ".join(f"{k} {low:.3g}–{high:.3g}" for k, (low, high) in reference.acquisition.items())
    print(f"\nacquisition checks against the training scans' ranges ({ranges}):")
    print(f"{'scans':<44}{'any':>13}" + "".join(f"{c:>16}" for c in checks))
    for label, values in (("held out, same cohort", held_out), ("other scanners (synth seed 22)", other)):
        failed = reference.acquisition_flagged(values)
        cells = f"{100 * np.mean([bool(f) for f in failed]):12.1f}%" + "".join(
            f"{100 * np.mean([c in f for f in failed]):15.1f}%" for c in checks
        )
        print(f"{f'{label} ({len(failed)})':<44}{cells}")
    for row, patient in enumerate(ids):
        described = {k: round(float(v[row]), 2) for k, v in real.items()}
        failed = reference.acquisition_flagged({k: v[row : row + 1] for k, v in real.items()})[0]
        print(f"  {patient:<20}{', '.join(failed) or 'no check failed':<45}{described}")


if __name__ == "__main__":
    main()
