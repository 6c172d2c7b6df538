"""`semi` on real CT: leave-one-real-scan-out Dice per ROI, beside the network trained on phantoms alone.

Trains the `semi` network (supervised: no unlabeled scans) with two recipes and scores Dice per ROI on each real
labeled scan in ../shared (3D-IRCADb-01 1.1, portal venous, 512×512×129; the TotalSegmentator example,
non-contrast, 3 mm; its full-length example_ct is the same patient, so it is left out):
  - today's recipe: the phantoms' own HU, patches mirrored at random left-right and front-back;
  - shape recipe: randomised tissue intensities (`tissue_shift_hu`: each ROI shifted by its own random offset, then
    a random gamma, so the network must learn shape rather than the phantoms' HU) and no mirroring (`flip_axes=()`:
    scans are read in one canonical orientation, so the liver's side tells it from the spleen);
on the phantoms alone (one network per recipe, scored on every real scan) and on the phantoms plus every real
labeled scan but the one scored (drawn as often as all the phantoms together; one network per recipe and fold).
Trained networks stay in memory (IRCADb is CC BY-NC-ND: nothing derived from it is written into the project).

Measured with the defaults (16 `full` phantoms, seed 21, 1,600 iterations, ±150 HU) and --training-seeds 0 1 2,
1 CPU thread on the shared 2-core machine: 200-250 s per network, so about 8 minutes per fold (its two networks)
and 25 minutes per training seed (6 networks).

Usage: OMP_NUM_THREADS=1 python benchmarks/semi_real.py [--iterations 1600] [--phantoms 16] [--tissue-shift-hu 150]
                                                        [--training-seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch

from shared_data import IRCADB, REAL_CT
from tipsprog.images import read_ct, read_mask
from tipsprog.segment import dice_per_roi, semi
from tipsprog.segment.masks import TOTALSEGMENTATOR_IDS, map_labels, reference_labels
from tipsprog.store import ROI_LABELS
from tipsprog.synth import CohortSpec, make_cohort


def real_scans() -> dict[str, tuple[sitk.Image, sitk.Image]]:
    """Each real labeled scan (CT and tipsprog labels on its grid) that ../shared holds."""
    scans = {}
    if IRCADB.is_dir():
        masks = {"liver_mask": "liver", "spleen_mask": "spleen", "portal_vein_mask": "portalvein"}
        row = pd.Series({"ct": str(IRCADB / "ct.nii.gz"), **{k: str(IRCADB / f"{v}.nii.gz") for k, v in masks.items()}})
        ct = read_ct(row["ct"])
        scans["3D-IRCADb-01 1.1"] = ct, reference_labels(row, ct)
    if REAL_CT.is_dir():
        ct = read_ct(REAL_CT / "example_ct_sm.nii.gz")
        labels = map_labels(read_mask(REAL_CT / "example_seg.nii.gz", ct), TOTALSEGMENTATOR_IDS)
        scans["TotalSegmentator example"] = ct, labels
    return scans


def phantoms(folder: Path, count: int, size: str, seed: int, settings: semi.SemiSettings) -> list[dict]:
    """`count` synthetic phantoms prepared for the network."""
    make_cohort(folder, CohortSpec(n=count, centers=3, seed=seed, size=size), workers=1)
    cohort = pd.read_csv(folder / "cohort.csv")
    samples = []
    for ct_path, label_path in zip(cohort["ct"], cohort["label"]):
        ct = read_ct(folder / ct_path)
        samples.append(semi.prepare(ct, read_mask(folder / label_path, ct), settings))
    return samples


def train(labeled: list[dict], settings: semi.SemiSettings, name: str) -> torch.nn.Module:
    """Supervised training on CPU; print the time it took."""
    start = time.perf_counter()
    model = semi.fit(labeled, [], settings, torch.device("cpu"))
    print(f"  trained '{name}' in {time.perf_counter() - start:.0f} s", flush=True)
    return model


def dice(model: torch.nn.Module, scan: tuple[sitk.Image, sitk.Image], settings: semi.SemiSettings) -> np.ndarray:
    """Dice per ROI of the network's labels against the scan's reference."""
    ct, reference = scan
    return dice_per_roi(semi.segment_semi(ct, model, settings, torch.device("cpu")), reference)


def leave_one_out(
    synthetic: list[dict],
    real: dict[str, dict],
    scans: dict[str, tuple[sitk.Image, sitk.Image]],
    recipes: dict[str, semi.SemiSettings],
    seed: int,
) -> dict[str, dict[str, np.ndarray]]:
    """Dice per ROI on each held-out real scan for each training row, with one training seed."""
    rows: dict[str, dict[str, np.ndarray]] = {name: {} for name in scans}
    for recipe, base in recipes.items():
        settings = dataclasses.replace(base, seed=seed)
        model = train(synthetic, settings, f"phantoms, {recipe}, seed {seed}")
        for name, scan in scans.items():
            rows[name][f"phantoms, {recipe}"] = dice(model, scan, settings)
    for held_out, scan in scans.items():
        others = [sample for name, sample in real.items() if name != held_out]
        repeats = max(1, len(synthetic) // len(others))
        for recipe, base in recipes.items():
            settings = dataclasses.replace(base, seed=seed)
            model = train(synthetic + others * repeats, settings, f"+ other real, {recipe}, seed {seed}, {held_out} held out")
            rows[held_out][f"+ other real, {recipe}"] = dice(model, scan, settings)
    return rows


def print_table(title: str, runs: list[dict[str, dict[str, np.ndarray]]]) -> None:
    """Dice per held-out scan, training row and ROI: the value, or the mean (min–max) over training seeds."""
    print(f"\n{title}")
    width = 13 if len(runs) == 1 else 22
    print(f"{'held-out real scan':<26}{'training':<34}" + "".join(f"{roi:>{width}}" for roi in ROI_LABELS))
    for name, results in runs[0].items():
        for index, label in enumerate(results):
            values = np.array([run[name][label] for run in runs])
            cells = (
                f"{v:.3f}" if len(runs) == 1 else f"{v:.3f} ({lo:.2f}–{hi:.2f})"
                for v, lo, hi in zip(values.mean(axis=0), values.min(axis=0), values.max(axis=0))
            )
            print(f"{name if index == 0 else '':<26}{label:<34}" + "".join(f"{c:>{width}}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=1600)
    parser.add_argument("--phantoms", type=int, default=16)
    parser.add_argument("--size", default="full", choices=["small", "full"])
    parser.add_argument("--tissue-shift-hu", type=float, default=150.0)
    parser.add_argument("--seed", type=int, default=21, help="Seed of the synthetic phantoms.")
    parser.add_argument("--training-seeds", type=int, nargs="+", default=[0], help="Train every network with each seed.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    plain = semi.SemiSettings(iterations=args.iterations)
    shape = dataclasses.replace(plain, tissue_shift_hu=args.tissue_shift_hu, flip_axes=())
    recipes = {"today's recipe": plain, "shape recipe": shape}
    scans = real_scans()
    if len(scans) < 2:
        raise SystemExit(f"needs at least two real labeled scans in {IRCADB.parent}, found {len(scans)}")
    real = {name: semi.prepare(ct, labels, plain) for name, (ct, labels) in scans.items()}
    with tempfile.TemporaryDirectory() as folder:
        synthetic = phantoms(Path(folder) / "phantoms", args.phantoms, args.size, args.seed, plain)
    print(
        f"{args.phantoms} {args.size} phantoms, {args.iterations} iterations, tissue shift ±{args.tissue_shift_hu:g} HU",
        flush=True,
    )
    runs = []
    for seed in args.training_seeds:
        runs.append(leave_one_out(synthetic, real, scans, recipes, seed))
        print_table(f"Leave-one-real-scan-out Dice, training seed {seed} (the scan scored is never trained on)", runs[-1:])
    if len(runs) > 1:
        print_table(f"Mean (min–max) over training seeds {', '.join(map(str, args.training_seeds))}", runs)


if __name__ == "__main__":
    main()
