"""Quality control of a scan's ROI labels: empty ROIs, implausible volumes, ROIs cut by the scan border, whether
enough of the liver is in view to measure it, and whether what was labelled liver can be the liver at all (a
chest-only or pelvis-only scan has none in view; where no liver was found, the scan's landmarks say whether it could hold one).

A liver cut off by both the first and the last slice of the scan, with a volume below any whole liver's, is a slab
of it (a scan of a few slices): its volume and features would describe the slab, not the organ, so the scan fails.
A liver cut off on one side only, or with a plausible volume, is flagged `truncated` and kept.

The anatomical checks read the CT's slice levels (landmarks.py: pelvic where the iliac wings are, thoracic where
the lungs are) on a grid of about 3 mm. A liver sits below the lungs and above the pelvis, so a "liver" with most
of its slices at either level, or one taller than any liver, is a failed segmentation or a scan without the liver.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from tipsprog.segment.landmarks import pelvis_top, slice_levels
from tipsprog.store import ROI_LABELS

VOLUME_RANGES_ML = {"liver": (600.0, 4000.0), "spleen": (50.0, 2000.0)}
REQUIRED_ROIS = ("liver", "spleen")
LIVER_MAX_EXTENT_MM = 280.0
QC_SPACING_MM = 3.0
MIN_ABOVE_PELVIS_MM = 40.0
FAILING_KINDS = ("partial_view", "implausible_extent", "in_pelvis", "in_chest")
FAILING_SCAN_FLAGS = ("scan:pelvis_only", "scan:chest_only")
EXPLANATIONS = {
    "pelvis_only": f"the scan ends less than {MIN_ABOVE_PELVIS_MM:.0f} mm above the iliac wings: no liver in view",
    "chest_only": "most of its slices are lung: no liver in view",
    "partial_view": "cut off by both the first and the last slice, and smaller than any whole liver: only a slab of "
    "it is in view",
    "empty": "no voxels",
    "implausible_volume": "volume outside the plausible range",
    "truncated": "touches the scan border",
    "implausible_extent": f"taller than any liver ({LIVER_MAX_EXTENT_MM:.0f} mm): the segmentation leaked",
    "in_pelvis": "most of its slices are at the level of the iliac wings: no liver in view",
    "in_chest": "most of its slices are lung: no liver in view",
    "no_vertebral_level": "no named lumbar vertebra in view: body composition not measured",
    "rib_anchored": "vertebral levels counted from the lowest rib, whose lateral end can lie a level lower",
    "unenhanced": "the liver reads under 75 HU, as without contrast: fluid-filled bowel reads as ascites, which may be "
    "overestimated",
    **{f"at_{level}": f"L3 out of view: body composition measured at {level}" for level in ("L1", "L2", "L4")},
}


def _touches_border(mask: np.ndarray) -> bool:
    """Whether a mask reaches the first or last slice of any array axis (the ROI is cut off)."""
    return any(np.take(mask, index, axis=axis).any() for axis in range(mask.ndim) for index in (0, -1))


def _cut_at_both_ends(mask: np.ndarray) -> bool:
    """Whether a mask reaches both the first and the last axial slice (it runs out of the scan above and below)."""
    return bool(mask[0].any() and mask[-1].any())


def _shrunk(ct: sitk.Image) -> sitk.Image:
    """The CT averaged down to about QC_SPACING_MM per axis (the nearest integer factors), as float."""
    factors = [max(1, round(QC_SPACING_MM / spacing)) for spacing in ct.GetSpacing()]
    return sitk.BinShrink(sitk.Cast(ct, sitk.sitkFloat32), factors)


def _levels(small: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """landmarks.slice_levels of a shrunk CT after an in-plane median (pelvic and thoracic slices)."""
    return slice_levels(sitk.GetArrayFromImage(sitk.Median(small, [1, 1, 0])), np.array(small.GetSpacing()[::-1]))


def liver_in_view_flags(ct: sitk.Image, labels: sitk.Image) -> list[str]:
    """`liver:implausible_extent`, `liver:in_pelvis` or `liver:in_chest` where the labelled liver cannot be one."""
    liver_slices = np.flatnonzero((sitk.GetArrayViewFromImage(labels) == ROI_LABELS["liver"]).any(axis=(1, 2)))
    if not len(liver_slices):
        return []
    extent_mm = (liver_slices[-1] - liver_slices[0] + 1) * labels.GetSpacing()[2]
    if extent_mm > LIVER_MAX_EXTENT_MM:
        return ["liver:implausible_extent"]
    small = _shrunk(ct)
    on_small = sitk.Resample(labels, small, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    liver_levels = np.flatnonzero((sitk.GetArrayViewFromImage(on_small) == ROI_LABELS["liver"]).any(axis=(1, 2)))
    if not len(liver_levels):
        return []
    first, last = int(liver_levels[0]), int(liver_levels[-1])
    pelvic, thoracic = _levels(small[:, :, first : last + 1])
    flags = []
    if pelvic[liver_levels - first].mean() > 0.5:
        flags.append("liver:in_pelvis")
    if thoracic[liver_levels - first].mean() > 0.5:
        flags.append("liver:in_chest")
    return flags


def no_liver_level_flags(ct: sitk.Image) -> list[str]:
    """Why a scan can hold no liver, where its landmarks tell: `scan:pelvis_only` (it ends at the pelvis) or
    `scan:chest_only` (most of its slices are lung)."""
    small = _shrunk(ct)
    pelvic, thoracic = _levels(small)
    slice_mm = small.GetSpacing()[2]
    top = pelvis_top(pelvic, slice_mm)
    if top is not None and (len(pelvic) - 1 - top) * slice_mm < MIN_ABOVE_PELVIS_MM:
        return ["scan:pelvis_only"]
    return ["scan:chest_only"] if thoracic.mean() > 0.5 else []


def quality_flags(ct: sitk.Image, labels: sitk.Image, volumes: np.ndarray) -> list[str]:
    """QC flags: where no liver was found, why (`scan:pelvis_only`, `scan:chest_only`); per ROI `roi:empty`,
    `roi:implausible_volume`, `roi:truncated`; and the liver-in-view flags."""
    array = sitk.GetArrayViewFromImage(labels)
    flags = no_liver_level_flags(ct) if volumes[0] <= 0 else []
    for (roi, label), volume in zip(ROI_LABELS.items(), volumes):
        if volume <= 0:
            flags.append(f"{roi}:empty")
            continue
        low, high = VOLUME_RANGES_ML.get(roi, (0.0, np.inf))
        if not low <= volume <= high:
            flags.append(f"{roi}:implausible_volume")
        if roi == "liver" and volume < low and _cut_at_both_ends(array == label):
            flags.append("liver:partial_view")
        if _touches_border(array == label):
            flags.append(f"{roi}:truncated")
    return flags + liver_in_view_flags(ct, labels)


def qc_status(flags: list[str]) -> str:
    """A scan is unusable ('failed') when the liver or the spleen is empty, or the liver cannot be one."""
    failing = [f"{roi}:empty" for roi in REQUIRED_ROIS] + [f"liver:{kind}" for kind in FAILING_KINDS] + list(FAILING_SCAN_FLAGS)
    return "failed" if any(flag in failing for flag in flags) else "ok"


def qc_reason(flags: list[str]) -> str:
    """The flags with what each means, those that fail the scan first (for /qc/reason and error messages)."""
    ordered = sorted(flags, key=lambda flag: qc_status([flag]) != "failed")
    return "; ".join(f"{flag} ({EXPLANATIONS[flag.split(':', 1)[1]]})" for flag in ordered)
