"""Segmentation backends: Dice and HD95 per ROI, semi-supervised value, seconds per scan.

Prints, for each backend available here (classic, semi; totalseg when installed with weights):
  - Dice and 95th-percentile Hausdorff distance (mm) per ROI on held-out synthetic scans and on the real CT;
  - semi-supervised value: mean teacher on 8 labeled + 80 unlabeled scans against the same network trained
    on the 8 labeled alone, mean Dice on 40 held-out scans, side by side, over several training seeds: when the
    unlabeled and held-out scans come from the labeled scans' scanners (with the ceiling that all 88 labels reach),
    and when they come from another scanner (the cohort to segment was acquired elsewhere);
  - seconds per scan (CPU here; pass --device cuda on a GPU machine);
  - how much Dice moves on the real CT when it is resampled to other grids.

Usage: python benchmarks/segment_backends.py [--iterations 1600] [--device cpu] [--training-seeds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.metrics import compute_hausdorff_distance

from shared_data import REAL_CT
from tipsprog.images import read_ct, read_mask, resample_to_spacing
from tipsprog.segment import Backend, dice_per_roi, segment_scan, semi
from tipsprog.segment.foundation import missing_requirements
from tipsprog.segment.masks import TOTALSEGMENTATOR_IDS, map_labels
from tipsprog.store import ROI_LABELS
from tipsprog.synth import CohortSpec, make_cohort

LABELED, UNLABELED, HELD_OUT = 8, 80, 40


def hd95_per_roi(labels: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """95th-percentile Hausdorff distance in mm per ROI (MONAI), NaN where either mask is empty."""
    predicted, truth = sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(reference)
    spacing = reference.GetSpacing()[::-1]
    values = []
    for label in ROI_LABELS.values():
        a, b = predicted == label, truth == label
        if not a.any() or not b.any():
            values.append(np.nan)
            continue
        distance = compute_hausdorff_distance(
            torch.from_numpy(a)[None, None],
            torch.from_numpy(b)[None, None],
            include_background=True,
            percentile=95,
            spacing=spacing,
        )
        values.append(float(distance))
    return np.array(values)


def score(backend: Backend, cases: list[tuple[Path, Path]]) -> tuple[np.ndarray, np.ndarray, float]:
    """Dice [cases, ROI], HD95 [cases, ROI] and seconds per scan of a backend."""
    dice, hd95, seconds = [], [], 0.0
    for ct_path, label_path in cases:
        ct = read_ct(ct_path)
        start = time.perf_counter()
        labels = segment_scan(ct, backend)
        seconds += time.perf_counter() - start
        reference = read_mask(label_path, ct)
        dice.append(dice_per_roi(labels, reference))
        hd95.append(hd95_per_roi(labels, reference))
    return np.array(dice), np.array(hd95), seconds / len(cases)


def held_out_cases(cohort: Path, images: str = "images") -> list[tuple[Path, Path]]:
    """The 40 held-out scans (from the cohort folder `images`) with their reference labels."""
    return [
        (cohort / images / f"P{i:04d}.nii.gz", cohort / "labels" / f"P{i:04d}.nii.gz")
        for i in range(LABELED + UNLABELED, LABELED + UNLABELED + HELD_OUT)
    ]


def train_semi(
    cohort: Path,
    settings: semi.SemiSettings,
    device: torch.device,
    model_path: Path,
    labeled_count: int = LABELED,
    unlabeled_count: int = UNLABELED,
    unlabeled_images: str = "images",
) -> Backend:
    """Train on the first `labeled_count` scans with labels (and the next `unlabeled_count` without); save; return the backend.

    Unlabeled scans are read from `unlabeled_images` (a folder of the cohort), labeled ones from images/.
    Without unlabeled scans this is supervised training with the same network, augmentation and weight averaging:
    on the 8 labeled it is the baseline the unlabeled loss must beat, on all 88 the ceiling labels could reach.
    """

    def sample(index: int, with_label: bool) -> dict:
        ct = read_ct(cohort / ("images" if with_label else unlabeled_images) / f"P{index:04d}.nii.gz")
        labels = read_mask(cohort / "labels" / f"P{index:04d}.nii.gz", ct) if with_label else None
        return semi.prepare(ct, labels, settings)

    labeled = [sample(i, True) for i in range(labeled_count)]
    unlabeled = [sample(i, False) for i in range(labeled_count, labeled_count + unlabeled_count)]
    model = semi.fit(labeled, unlabeled, settings, device)
    semi.save_model(model, settings, model_path)
    return Backend("semi", str(model_path), device.type)


def other_scanner(cohort: Path, indices: range, seed: int) -> str:
    """Re-acquire scans as on another scanner into the folder returned (of the cohort).

    A softer reconstruction kernel (1.5 mm Gaussian), another HU calibration (×0.75 − 40 HU) and a lower dose
    (35 HU more noise) inside the body: beyond what the labeled scans' augmentation covers.
    """
    target = cohort / "images_other_scanner"
    target.mkdir()
    rng = np.random.default_rng(seed)
    for index in indices:
        name = f"P{index:04d}.nii.gz"
        ct = sitk.SmoothingRecursiveGaussian(sitk.Cast(sitk.ReadImage(str(cohort / "images" / name)), sitk.sitkFloat32), 1.5)
        hu = sitk.GetArrayFromImage(ct)
        body = hu > -500.0
        acquired = sitk.GetImageFromArray(
            np.where(body, 0.75 * hu - 40.0 + rng.normal(0.0, 35.0, hu.shape), hu).astype(np.float32)
        )
        acquired.CopyInformation(ct)
        sitk.WriteImage(acquired, str(target / name))
    return target.name


def semi_value(
    cohort: Path, settings: semi.SemiSettings, device: torch.device, folder: Path, seeds: range, images: str = "images"
) -> list[tuple[float, float]]:
    """Mean held-out Dice of the mean teacher and of the supervised baseline for each training seed.

    Unlabeled and held-out scans are read from `images`; the 8 labeled ones always from images/.
    """
    held_out = held_out_cases(cohort, images)
    pairs = []
    for seed in seeds:
        seeded = dataclasses.replace(settings, seed=seed)
        pair = tuple(
            float(
                np.nanmean(
                    score(
                        train_semi(
                            cohort,
                            seeded,
                            device,
                            folder / f"{images}-{name}{seed}.pt",
                            unlabeled_count=unlabeled,
                            unlabeled_images=images,
                        ),
                        held_out,
                    )[0]
                )
            )
            for name, unlabeled in (("mt", UNLABELED), ("sup", 0))
        )
        print(f"  training seed {seed}: {pair[0]:.3f} vs {pair[1]:.3f}")
        pairs.append(pair)
    return pairs


def print_difference(pairs: list[tuple[float, float]]) -> None:
    """Mean teacher minus supervised, averaged over training seeds."""
    differences = [mt - sup for mt, sup in pairs]
    means = np.mean(pairs, axis=0)
    print(
        f"  over {len(pairs)} training seeds: {means[0]:.3f} vs {means[1]:.3f}, difference mean {np.mean(differences):+.3f}, "
        f"range {min(differences):+.3f} to {max(differences):+.3f}"
    )


def real_case(folder: Path) -> tuple[Path, Path]:
    """The real CT and its reference relabelled to tipsprog's 1/2/3."""
    reference = folder / "real_labels.nii.gz"
    sitk.WriteImage(map_labels(sitk.ReadImage(str(REAL_CT / "example_seg.nii.gz")), TOTALSEGMENTATOR_IDS), str(reference))
    return REAL_CT / "example_ct_sm.nii.gz", reference


def resampling_change(backend: Backend, case: tuple[Path, Path], folder: Path) -> dict[str, float]:
    """Largest change in liver/spleen Dice when the real CT is resampled to other grids."""
    reference = sitk.ReadImage(str(case[1]))
    raw = sitk.ReadImage(str(case[0]))
    base = _dice_on_reference(backend, case[0], reference)
    changes = {}
    for spacing in [(2.5, 2.5, 2.5), (1.5, 1.5, 3.0), (1.0, 1.0, 2.0), (2.0, 2.0, 1.5), (2.0, 2.0, 4.0)]:
        path = folder / f"resampled_{'x'.join(map(str, spacing))}.nii.gz"
        sitk.WriteImage(resample_to_spacing(raw, spacing, sitk.sitkBSpline, -1024.0), str(path))
        changes["×".join(f"{s:g}" for s in spacing) + " mm"] = float(
            np.nanmax(np.abs(_dice_on_reference(backend, path, reference) - base)[:2])
        )
    return changes


def _dice_on_reference(backend: Backend, ct_path: Path, reference: sitk.Image) -> np.ndarray:
    labels = segment_scan(read_ct(ct_path), backend)
    return dice_per_roi(
        sitk.Resample(labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8), reference
    )


def table(title: str, rows: dict[str, tuple[np.ndarray, np.ndarray, float]]) -> None:
    """Print Dice / HD95 per ROI and seconds per scan for each backend."""
    print(f"\n{title}")
    print(f"{'backend':<16}" + "".join(f"{roi + ' Dice':>17}{'HD95 mm':>9}" for roi in ROI_LABELS) + f"{'s/scan':>9}")
    for name, (dice, hd95, seconds) in rows.items():
        cells = "".join(f"{np.nanmean(dice[:, i]):>17.3f}{np.nanmean(hd95[:, i]):>9.1f}" for i in range(len(ROI_LABELS)))
        print(f"{name:<16}{cells}{seconds:>9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=semi.SemiSettings().iterations)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument(
        "--training-seeds",
        type=int,
        default=3,
        help="Train both networks this many times (seeds 0…N-1) for the semi-supervised comparison.",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        cohort = folder / "cohort"
        make_cohort(cohort, CohortSpec(n=LABELED + UNLABELED + HELD_OUT, centers=3, seed=args.seed), workers=2)
        held_out = held_out_cases(cohort)
        settings = semi.SemiSettings(iterations=args.iterations)
        start = time.perf_counter()
        backends = {
            "classic": Backend("classic"),
            "semi (MT)": train_semi(cohort, settings, device, folder / "mt.pt"),
            "supervised (8)": train_semi(cohort, settings, device, folder / "sup.pt", unlabeled_count=0),
            "supervised (88)": train_semi(cohort, settings, device, folder / "all.pt", LABELED + UNLABELED, 0),
        }
        print(f"trained the three networks in {time.perf_counter() - start:.0f} s ({args.iterations} iterations each, {device})")
        if not missing_requirements(fast=True):
            backends["totalseg"] = Backend("totalseg", device=device.type)
        else:
            print("totalseg: not measured here (" + "; ".join(missing_requirements(fast=True)) + ")")
        synthetic = {name: score(backend, held_out) for name, backend in backends.items()}
        table(f"Held-out synthetic scans ({HELD_OUT}, seed {args.seed})", synthetic)
        mt, sup, ceiling = (np.nanmean(synthetic[k][0], axis=0) for k in ("semi (MT)", "supervised (8)", "supervised (88)"))
        print(
            f"\nSemi-supervised value (mean Dice over ROIs, {LABELED} labeled + {UNLABELED} unlabeled, 40 held out), "
            "mean teacher vs the same network supervised on the 8 labeled:"
        )
        print(
            f"  training seed 0: {np.nanmean(mt):.3f} vs {np.nanmean(sup):.3f} "
            f"(liver {mt[0]:.3f}/{sup[0]:.3f}, spleen {mt[1]:.3f}/{sup[1]:.3f}, portal vein {mt[2]:.3f}/{sup[2]:.3f})"
        )
        print(
            f"  ceiling: the same network supervised on all {LABELED + UNLABELED} labels reaches {np.nanmean(ceiling):.3f} "
            f"(portal vein {ceiling[2]:.3f}): labelling the {UNLABELED} other scans would add {np.nanmean(ceiling) - np.nanmean(sup):+.3f}"
        )
        pairs = [(float(np.nanmean(mt)), float(np.nanmean(sup)))] + semi_value(
            cohort, settings, device, folder, range(1, args.training_seeds)
        )
        print_difference(pairs)
        print(
            f"\nSemi-supervised value when the {UNLABELED} unlabeled and {HELD_OUT} held-out scans come from another scanner "
            "(softer kernel, other HU calibration, lower dose; the 8 labeled are unchanged):"
        )
        images = other_scanner(cohort, range(LABELED, LABELED + UNLABELED + HELD_OUT), args.seed)
        print_difference(semi_value(cohort, settings, device, folder, range(args.training_seeds), images))
        if REAL_CT.is_dir():
            case = real_case(folder)
            table(
                "Real CT (TotalSegmentator example, its labels as reference)", {n: score(b, [case]) for n, b in backends.items()}
            )
            print(
                "\nLargest liver/spleen Dice change when the real CT (3 mm) is resampled with a cubic B-spline "
                "(the last grid is coarser along z, so it loses information):"
            )
            for name, backend in backends.items():
                changes = resampling_change(backend, case, folder)
                print(f"  {name:<16}" + ", ".join(f"{grid}: {value:.3f}" for grid, value in changes.items()))


if __name__ == "__main__":
    main()
