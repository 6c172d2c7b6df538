"""Imaging biomarkers (#21) on the real CTs in ../shared: each value beside the same measurement on the scan's
reference labels where they exist (IRCAD's manual liver, spleen and portal vein; TotalSegmentator's liver and spleen;
goal for the volumes: within 10%) and beside the published adult range, the vertebral levels and what named them,
and the seconds the measurement adds per scan (on top of segmentation).

Usage: python benchmarks/biomarkers.py
"""

from __future__ import annotations

import time

import numpy as np
import SimpleITK as sitk

from shared_data import IRCADB, REAL_CT
from tipsprog.images import read_ct, read_mask
from tipsprog.segment import Backend, segment_scan
from tipsprog.segment.biomarkers import NAMES, measure
from tipsprog.segment.crops import roi_volumes
from tipsprog.segment.masks import TOTALSEGMENTATOR_IDS, map_labels
from tipsprog.segment.portal import portal_vein_measurements
from tipsprog.segment.vertebrae import vertebral_levels

PUBLISHED_RANGES = {  # adults; cirrhosis widens the organ ranges
    "muscle/l3_area[cm2]": (80, 250),
    "muscle/l3_density[HU]": (-10, 90),
    "fat/l3_subcutaneous_area[cm2]": (10, 600),
    "fat/l3_visceral_area[cm2]": (5, 400),
    "ascites/volume[mL]": (0, 10000),
    "liver/volume[mL]": (800, 3500),
    "liver/caudate_right_ratio[1]": (0.2, 1.2),
    "liver/surface_roughness[mm]": (0, 10),
    "spleen/volume[mL]": (50, 2000),
    "spleen/length[mm]": (60, 250),
    "portal_vein/diameter[mm]": (8, 25),
}


def reference_labels(name: str, ct: sitk.Image) -> sitk.Image:
    """The scan's reference labels on its grid: IRCAD's manual liver, spleen and portal vein masks, or
    TotalSegmentator's liver and spleen."""
    if name == "ircadb-1.1":
        array = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8)
        for roi, label in (("liver", 1), ("spleen", 2), ("portalvein", 3)):
            array[sitk.GetArrayFromImage(read_mask(IRCADB / f"{roi}.nii.gz", ct)) > 0] = label
        labels = sitk.GetImageFromArray(array)
        labels.CopyInformation(ct)
        return labels
    return map_labels(read_mask(REAL_CT / "example_seg.nii.gz", ct), TOTALSEGMENTATOR_IDS)


def main() -> None:
    scans = {
        "ircadb-1.1": IRCADB / "ct.nii.gz",
        "example_ct (pelvis to abdomen)": REAL_CT / "example_ct.nii.gz",
        "example_ct_sm": REAL_CT / "example_ct_sm.nii.gz",
    }
    for name, path in scans.items():
        ct = read_ct(path)
        labels = segment_scan(ct, Backend("classic"))
        volumes, portal = roi_volumes(labels), portal_vein_measurements(labels)
        start = time.perf_counter()
        values, flags = measure(ct, labels, volumes, portal)
        seconds = time.perf_counter() - start
        levels = vertebral_levels(ct)
        reference = None
        if name != "example_ct (pelvis to abdomen)":  # its reference covers the top 30 slices only
            truth = reference_labels(name, ct)
            reference, _ = measure(ct, truth, roi_volumes(truth), portal_vein_measurements(truth))
        print(
            f"\n{name}: {seconds:.1f} s; vertebrae {'-'.join(levels.names) or 'none named'} (anchor: {levels.anchor}); "
            f"flags: {', '.join(flags) or '-'}"
        )
        print(f"  {'biomarker':<32}{'value':>9}   {'on the reference labels':<25}published adult range")
        for column, (feature, value) in enumerate(zip(NAMES, values)):
            low, high = PUBLISHED_RANGES[feature]
            truth_value = "" if reference is None or np.isnan(reference[column]) else f"{reference[column]:.2f}"
            if truth_value and np.isfinite(value) and feature.split("/")[0] in ("liver", "spleen", "portal_vein"):
                truth_value += f" ({100 * (value / reference[column] - 1):+.1f}%)"
            check = "not measured" if np.isnan(value) else f"{'within' if low <= value <= high else 'OUTSIDE'} {low}-{high}"
            print(f"  {feature:<32}{value:>9.2f}   {truth_value:<25}{check}")


if __name__ == "__main__":
    main()
