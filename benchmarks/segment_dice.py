"""Dice per ROI of the classic backend on a synthetic cohort and on the real CT.

Usage: python benchmarks/segment_dice.py [--n 40] [--seed 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from shared_data import REAL_CT
from tipsprog.images import read_ct, read_mask
from tipsprog.segment import Backend, dice_per_roi, segment_scan
from tipsprog.segment.masks import TOTALSEGMENTATOR_IDS, map_labels
from tipsprog.store import ROI_LABELS
from tipsprog.synth import CohortSpec, make_cohort


def synthetic_dice(n: int, seed: int) -> np.ndarray:
    """Dice [n, ROI] of the classic backend on a fresh synthetic cohort."""
    with tempfile.TemporaryDirectory() as folder:
        cohort = Path(folder) / "cohort"
        make_cohort(cohort, CohortSpec(n=n, centers=3, seed=seed), workers=2)
        scores = []
        for index in range(n):
            ct = read_ct(cohort / "images" / f"P{index:04d}.nii.gz")
            reference = read_mask(cohort / "labels" / f"P{index:04d}.nii.gz", ct)
            scores.append(dice_per_roi(segment_scan(ct, Backend("classic")), reference))
    return np.array(scores)


def real_dice() -> np.ndarray:
    """Dice per ROI of the classic backend on the TotalSegmentator example against its labels."""
    ct = read_ct(REAL_CT / "example_ct_sm.nii.gz")
    reference = map_labels(read_mask(REAL_CT / "example_seg.nii.gz", ct), TOTALSEGMENTATOR_IDS)
    return dice_per_roi(segment_scan(ct, Backend("classic")), reference)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    synthetic = synthetic_dice(args.n, args.seed)
    real = real_dice() if REAL_CT.is_dir() else np.full(len(ROI_LABELS), np.nan)
    print(f"classic backend Dice ({args.n} synthetic scans, seed {args.seed}; real CT = TotalSegmentator example_ct_sm)")
    print(f"{'ROI':<12} {'synthetic mean':>15} {'synthetic min':>14} {'real CT':>8}")
    for index, roi in enumerate(ROI_LABELS):
        print(f"{roi:<12} {np.nanmean(synthetic[:, index]):>15.3f} {np.nanmin(synthetic[:, index]):>14.3f} {real[index]:>8.3f}")
    print(f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
