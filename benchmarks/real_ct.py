"""The default (classic) backend on every real CT in ../shared: Dice per ROI against the reference masks, volumes,
the main portal vein diameter (mm) measured on the segmentation and on the reference labels, QC status and
reason, and seconds for read + segment + QC; then the false-refusal count (real scans with the liver
in view that QC fails: must be 0) and the refusal of a pelvis-only crop (must fail, with the right reason); last,
the seconds of `tipsprog segment` end to end (read, segment, crops, QC, write the store) on a 512×512×150 CT:
ircadb-1.1 resampled to 150 slices in a temporary folder (the #20 goal: at most 15 s on 2 cores).

Usage: python benchmarks/real_ct.py

Scans: 3D-IRCADb-01 1.1 (portal-venous, 0.57×0.57×1.6 mm; its portal-vein mask holds the portal venous system,
so 'portal vein, outside the liver' scores the extrahepatic part alone), the TotalSegmentator example (non-contrast,
3 mm; the reference labels cover its top 30 slices, also placed on the full pelvis-to-abdomen scan, where Dice is
computed on those 30 slices: the liver continues below them, unlabelled), and the same small scan re-stored as a
DICOM series.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from shared_data import IRCADB, REAL_CT
from tipsprog.images import read_ct, read_mask, resample_to_spacing
from tipsprog.segment import Backend, dice_per_roi, run_segment, segment_scan
from tipsprog.segment.crops import roi_volumes
from tipsprog.segment.masks import TOTALSEGMENTATOR_IDS, map_labels
from tipsprog.segment.portal import portal_vein_measurements
from tipsprog.segment.qc import qc_reason, qc_status, quality_flags
from tipsprog.store import ROI_LABELS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import write_dicom_series  # noqa: E402  (the tests' DICOM writer: one way to write a series)


@dataclass
class Case:
    """One real scan: where to read it, how to build its reference labels on the read grid, whether a liver is in view."""

    name: str
    ct: Path
    reference: object
    liver_in_view: bool = True
    labelled_slices: slice = field(
        default_factory=lambda: slice(None)
    )  # the slices the reference covers (Dice is computed on these)


def ircadb_reference(ct: sitk.Image) -> np.ndarray:
    """IRCAD's manual liver (1), spleen (2) and portal-vein (3) masks on the CT's grid."""
    labels = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8)
    for name, label in (("liver", 1), ("spleen", 2), ("portalvein", 3)):
        labels[sitk.GetArrayFromImage(read_mask(IRCADB / f"{name}.nii.gz", ct)) > 0] = label
    return labels


def totalseg_reference(ct: sitk.Image) -> np.ndarray:
    """TotalSegmentator's labels of example_ct_sm placed on the top slices of a scan that ends where it ends."""
    small = read_ct(REAL_CT / "example_ct_sm.nii.gz")
    top = sitk.GetArrayFromImage(map_labels(read_mask(REAL_CT / "example_seg.nii.gz", small), TOTALSEGMENTATOR_IDS))
    labels = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8)
    labels[-top.shape[0] :] = top
    return labels


def extrahepatic_dice(labels: np.ndarray, reference: np.ndarray) -> float:
    """Dice of the portal vein outside the reference liver (the trunk, splenic and mesenteric veins)."""
    outside = reference != ROI_LABELS["liver"]
    a, b = (labels == ROI_LABELS["portal_vein"]) & outside, (reference == ROI_LABELS["portal_vein"]) & outside
    return 2.0 * (a & b).sum() / (a.sum() + b.sum()) if a.sum() + b.sum() else float("nan")


def run_case(case: Case) -> tuple[str, bool]:
    """Print one scan's row; return its QC status and whether the liver is in view."""
    start = time.perf_counter()
    ct = read_ct(case.ct)
    labels = segment_scan(ct, Backend("classic"))
    volumes = roi_volumes(labels)
    flags = quality_flags(ct, labels, volumes)
    seconds = time.perf_counter() - start
    status = qc_status(flags)
    diameter, reference_diameter = portal_vein_measurements(labels).main_diameter_mm, float("nan")
    if case.reference is None:
        dice, trunk = [float("nan")] * 3, float("nan")
    else:
        reference = case.reference(ct)
        image = sitk.GetImageFromArray(reference)
        image.CopyInformation(ct)
        dice = dice_per_roi(labels[:, :, case.labelled_slices], image[:, :, case.labelled_slices])
        trunk = extrahepatic_dice(sitk.GetArrayFromImage(labels)[case.labelled_slices], reference[case.labelled_slices])
        reference_diameter = portal_vein_measurements(image).main_diameter_mm
    size = "×".join(map(str, ct.GetSize()))
    print(
        f"{case.name:<34} {size:>13} {dice[0]:>6.3f} {dice[1]:>6.3f} {dice[2]:>6.3f} {trunk:>8.3f} "
        f"{diameter:>5.1f} {reference_diameter:>5.1f} {volumes[0]:>6.0f} {volumes[1]:>5.0f} {seconds:>5.1f}  "
        f"{status}: {qc_reason(flags) or '-'}"
    )
    return status, case.liver_in_view


def end_to_end_seconds(folder: Path, slices: int = 150) -> tuple[str, float]:
    """Size and wall-clock seconds of `tipsprog segment` (classic) on ircadb-1.1 resampled to `slices` slices."""
    ct = sitk.ReadImage(str(IRCADB / "ct.nii.gz"))
    spacing = (*ct.GetSpacing()[:2], ct.GetSpacing()[2] * ct.GetDepth() / slices)
    path = folder / "ct150.nii.gz"
    sitk.WriteImage(sitk.Cast(resample_to_spacing(ct, spacing, sitk.sitkLinear, -1024.0), sitk.sitkInt16), str(path))
    pd.DataFrame({"patient_id": ["IRCAD150"], "ct": [str(path)]}).to_csv(folder / "cohort.csv", index=False)
    start = time.perf_counter()
    run_segment(folder / "cohort.csv", folder / "seg.h5")
    return "×".join(map(str, sitk.ReadImage(str(path)).GetSize())), time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        small = read_ct(REAL_CT / "example_ct_sm.nii.gz")
        dicom = write_dicom_series(sitk.ReadImage(str(REAL_CT / "example_ct_sm.nii.gz")), Path(folder) / "dicom")
        pelvis = Path(folder) / "pelvis.nii.gz"
        sitk.WriteImage(read_ct(REAL_CT / "example_ct.nii.gz")[:, :, :40], str(pelvis))
        cases = [
            Case("ircadb-1.1 (portal venous)", IRCADB / "ct.nii.gz", ircadb_reference),
            Case("example_ct_sm (non-contrast)", REAL_CT / "example_ct_sm.nii.gz", totalseg_reference),
            Case("example_ct_sm as DICOM series", dicom, totalseg_reference),
            Case(
                "example_ct (pelvis to abdomen)",
                REAL_CT / "example_ct.nii.gz",
                totalseg_reference,
                labelled_slices=slice(read_ct(REAL_CT / "example_ct.nii.gz").GetDepth() - small.GetDepth(), None),
            ),
            Case("example_ct bottom 40 slices (pelvis)", pelvis, None, liver_in_view=False),
        ]
        print("classic backend on the real CTs in ../shared (Dice vs reference; PV-out = portal vein outside the liver)")
        print(
            f"{'scan':<34} {'voxels':>13} {'liver':>6} {'spleen':>6} {'PV':>6} {'PV-out':>8} {'PV Ø':>5} {'ref Ø':>5} "
            f"{'L mL':>6} {'S mL':>5} {'s':>5}  QC"
        )
        outcomes = [run_case(case) for case in cases]
    false_refusals = sum(status == "failed" for status, in_view in outcomes if in_view)
    missed = sum(status == "ok" for status, in_view in outcomes if not in_view)
    print(
        f"false refusals (liver in view, QC failed): {false_refusals} of {sum(v for _, v in outcomes)}; "
        f"scans without a liver passed: {missed} of {sum(not v for _, v in outcomes)}"
    )
    with tempfile.TemporaryDirectory() as folder:
        size, seconds = end_to_end_seconds(Path(folder))
    print(
        f"tipsprog segment end to end (read, segment, crops, QC, write) on ircadb-1.1 at {size}: {seconds:.1f} s "
        f"(goal: at most 15 s on 2 cores)"
    )


if __name__ == "__main__":
    main()
