"""Radiomics throughput: `tipsprog radiomics --workers 2` against a sequential loop of plain pyradiomics.

Both run in one process tree on the same synthetic cohort (`--size full`) with the same parameters; the
plain loop calls pyradiomics' RadiomicsFeatureExtractor on the uncropped image and mask files, ROI by ROI,
as a user without tipsprog would. Prints patients/min for each, the ratio, and the largest relative
difference between the two feature tables (they must agree to 1e-6).

Usage: python benchmarks/radiomics_speed.py [--n 40] [--params standard] [--workers 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import SimpleITK as sitk

from tipsprog.radiomics.params import load_params, make_extractor
from tipsprog.store import ROI_LABELS


def plain_pyradiomics(cohort: Path, n: int, params: dict) -> dict[str, dict[str, float]]:
    """Features of every patient by a sequential loop of plain pyradiomics on the whole image."""
    extractor, table = make_extractor(params), {}
    for index in range(n):
        image = str(cohort / "images" / f"P{index:04d}.nii.gz")
        labels = sitk.ReadImage(str(cohort / "labels" / f"P{index:04d}.nii.gz"))
        present = set(np.unique(sitk.GetArrayViewFromImage(labels)).tolist())
        row = {}
        for roi, label in ROI_LABELS.items():
            if label in present:
                result = extractor.execute(image, str(cohort / "labels" / f"P{index:04d}.nii.gz"), label=label)
                row.update({f"{roi}/{k}": float(v) for k, v in result.items() if not k.startswith("diagnostics_")})
        table[f"P{index:04d}"] = row
    return table


def tipsprog(*args: object) -> None:
    """Run the CLI as a user would."""
    subprocess.run([str(Path(sys.executable).with_name("tipsprog")), *map(str, args)], check=True)


def largest_difference(store_path: Path, plain: dict[str, dict[str, float]]) -> float:
    """Largest relative difference between tipsprog's store (float32) and the plain loop's features."""
    with h5py.File(store_path) as h5:
        ids = [p.decode() for p in h5["patients"][()]]
        names = [n.decode() for n in h5["features/radiomics/names"][()]]
        values = h5["features/radiomics/values"][()]
    worst = 0.0
    for pid, row in zip(ids, values):
        reference = np.array([plain[pid].get(name, np.nan) for name in names]).astype(np.float32).astype(np.float64)
        finite = np.isfinite(reference) & np.isfinite(row)
        relative = np.abs(row[finite] - reference[finite]) / np.maximum(np.abs(reference[finite]), 1e-12)
        worst = max(worst, float(np.max(relative, initial=0.0)))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--params", default="standard")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=4)
    args = parser.parse_args()
    params = load_params(args.params)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        cohort = folder / "cohort"
        tipsprog("synth", "--out", cohort, "--n", args.n, "--size", "full", "--seed", args.seed, "--quiet")
        tipsprog("segment", cohort / "cohort.csv", "--backend", "masks", "--out", folder / "seg.h5", "--quiet")
        start = time.perf_counter()
        tipsprog(
            "radiomics",
            folder / "seg.h5",
            "--out",
            folder / "radiomics.h5",
            "--params",
            args.params,
            "--workers",
            args.workers,
            "--quiet",
        )
        ours = time.perf_counter() - start
        start = time.perf_counter()
        plain = plain_pyradiomics(cohort, args.n, params)
        baseline = time.perf_counter() - start
        features = len(next(iter(plain.values())))
        print(f"{args.n} synthetic patients at --size full, params '{args.params}' ({features} features per patient)")
        print(f"  tipsprog radiomics --workers {args.workers}: {ours:7.1f} s  {60 * args.n / ours:6.2f} patients/min")
        print(f"  plain pyradiomics, sequential:      {baseline:7.1f} s  {60 * args.n / baseline:6.2f} patients/min")
        print(f"  speed-up: {baseline / ours:.2f}x")
        print(
            f"  largest relative difference (both rounded to the store's float32): "
            f"{largest_difference(folder / 'radiomics.h5', plain):.2e}"
        )


if __name__ == "__main__":
    main()
