"""How a CT was acquired, read from the scan itself: voxel spacing, HU calibration and contrast phase. A model
trained on scans of one kind may not carry over to another (radiomics texture depends on the voxel size, every HU
feature on the calibration and the phase), so `predict` and `evaluate` warn where a scan lies beyond the training
scans (fusion/ood.py).

- Spacing: the in-plane pixel size and the slice spacing [mm].
- HU calibration: the level of the air around the body, which reads −1000 HU on a calibrated scanner; its offset
  from −1000 [HU]. Air is what lies between AIR_MIN_HU and AIR_MAX_HU more than AIR_MARGIN_MM outside the body
  (the largest component above BODY_HU on each slice, holes filled: the skin's partial volume and the lungs are
  left out), less the padding outside the reconstructed field of view (voxels whose whole 3 × 3 neighbourhood
  holds one value, and their neighbours; air has noise). Its level is the peak of its histogram (AIR_BIN_HU bins,
  smoothed over AIR_PEAK_BINS), not the median: foam cushions and mattresses (about −950 HU) lie outside the body
  too, in some scans over a third of it. Voxels at the lowest value are left out (a scanner clips air there, often
  at −1024: a spike, not the level); where the peak of the rest lies within AIR_PEAK_BINS bins of that value, most
  of the air was clipped and its level is not readable (NaN).
- Contrast phase: the liver's median attenuation [HU] (about 55 HU unenhanced, 90–130 HU in the portal venous
  phase) and the portal vein's median over the liver's (about 0 unenhanced, 30–100 HU portal venous).

A descriptor that cannot be read is NaN (no air in view, no portal vein found) and is not checked.

Each CHECK allows a margin beyond the range of the training scans before it warns: 25% of the spacing (resampling
by more changes what a texture feature measures), 10 HU of air offset (CT acceptance testing holds water within
±7 HU of 0; the scanners of a cohort spread a few HU around it), 20 HU of liver attenuation and 25 HU of portal-vein
contrast (a third to a half of the portal venous enhancement: a late arterial or an unenhanced scan lies further).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from tipsprog.store import ROI_LABELS

AIR_MIN_HU, AIR_MAX_HU, BODY_HU = -1100.0, -900.0, -500.0
AIR_MARGIN_MM = 10.0
AIR_BIN_HU, AIR_PEAK_BINS = 2.0, 5
MIN_AIR_VOXELS = 1000


@dataclass(frozen=True)
class Check:
    """One acquisition descriptor, the check it belongs to, its unit, and the margin beyond the training scans'
    range that is still accepted (a share of the range's ends if `relative`, else in the descriptor's unit)."""

    field: str
    check: str
    unit: str
    margin: float
    relative: bool = False


CHECKS = (
    Check("in_plane_spacing", "spacing", "mm", 0.25, relative=True),
    Check("slice_spacing", "spacing", "mm", 0.25, relative=True),
    Check("air_offset", "HU calibration", "HU", 10.0),
    Check("liver_attenuation", "contrast phase", "HU", 20.0),
    Check("portal_vein_over_liver", "contrast phase", "HU", 25.0),
)
FIELDS = tuple(check.field for check in CHECKS)


def _air_on_slice(plane: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """The air voxels of one axial slice, as the module docstring defines them."""
    components, count = ndimage.label(plane > BODY_HU)
    if count == 0:
        return plane[(plane > AIR_MIN_HU) & (plane < AIR_MAX_HU)]
    body = ndimage.binary_fill_holes(components == np.argmax(np.bincount(components.ravel())[1:]) + 1)
    away = ndimage.distance_transform_edt(~body, sampling=spacing) > AIR_MARGIN_MM
    flat = ndimage.maximum_filter(plane, size=3) == ndimage.minimum_filter(plane, size=3)
    padding = ndimage.binary_dilation(flat)  # with its border, whose neighbourhood reaches the air
    return plane[away & ~padding & (plane > AIR_MIN_HU) & (plane < AIR_MAX_HU)]


def air_offset_hu(ct: sitk.Image) -> float:
    """The level of the air around the body less −1000, on every eighth axial slice; NaN without enough air or
    where the scanner clipped it."""
    hu = sitk.GetArrayViewFromImage(ct)[:: max(1, ct.GetDepth() // 8)]
    spacing = np.array(ct.GetSpacing()[1::-1])
    air = np.concatenate([_air_on_slice(plane, spacing) for plane in hu])
    if air.size <= MIN_AIR_VOXELS:
        return np.nan
    lowest = float(air.min())
    counts, edges = np.histogram(air[air > lowest], bins=np.arange(lowest, AIR_MAX_HU + AIR_BIN_HU, AIR_BIN_HU))
    peak = int(np.argmax(np.convolve(counts, np.ones(AIR_PEAK_BINS), mode="same")))
    return np.nan if peak < AIR_PEAK_BINS else float(edges[peak] + AIR_BIN_HU / 2 + 1000.0)


def _median_hu(hu: np.ndarray, mask: np.ndarray) -> float:
    """Median HU inside a mask; NaN where it is empty."""
    return float(np.median(hu[mask])) if mask.any() else np.nan


def roi_median_hu(ct: sitk.Image, labels: sitk.Image, roi: str) -> float:
    """An ROI's median attenuation (labels on the CT's grid); NaN where it is empty."""
    return _median_hu(sitk.GetArrayViewFromImage(ct), sitk.GetArrayViewFromImage(labels) == ROI_LABELS[roi])


def describe(ct: sitk.Image, labels: sitk.Image) -> np.ndarray:
    """The scan's acquisition descriptors, in FIELDS order (labels on the CT's grid)."""
    spacing = ct.GetSpacing()
    liver, portal_vein = roi_median_hu(ct, labels, "liver"), roi_median_hu(ct, labels, "portal_vein")
    values = (0.5 * (spacing[0] + spacing[1]), spacing[2], air_offset_hu(ct), liver, portal_vein - liver)
    return np.array(values, dtype=np.float32)


def record(values: np.ndarray) -> dict[str, float | None]:
    """A scan's descriptors by name for a JSON record, to 0.01 (None: not readable)."""
    return {name: round(float(value), 2) if np.isfinite(value) else None for name, value in zip(FIELDS, values)}


def training_ranges(values: dict[str, np.ndarray]) -> dict[str, list[float]]:
    """Each descriptor's [lowest, highest] over the training scans (a descriptor never read: absent)."""
    return {
        name: [float(np.nanmin(column)), float(np.nanmax(column))]
        for name, column in values.items()
        if name in FIELDS and np.isfinite(column).any()
    }


def _accepted(check: Check, low: float, high: float) -> tuple[float, float]:
    """The range a descriptor may take without a warning: the training range widened by the check's margin."""
    if check.relative:
        return low / (1.0 + check.margin), high * (1.0 + check.margin)
    return low - check.margin, high + check.margin


def failed_checks(values: dict[str, float | None], ranges: dict[str, list[float]]) -> list[tuple[Check, float]]:
    """The descriptors of a scan (None or NaN: not readable) that lie beyond the training scans' range and its
    margin, with their values."""
    failed = []
    for check in CHECKS:
        value = values.get(check.field)
        if check.field in ranges and value is not None and np.isfinite(value):
            low, high = _accepted(check, *ranges[check.field])
            if not low <= value <= high:
                failed.append((check, float(value)))
    return failed


def acquisition_warnings(values: dict[str, float | None], ranges: dict[str, list[float]]) -> list[str]:
    """One warning line per failed check of a scan."""
    lines = []
    for check, value in failed_checks(values, ranges):
        low, high = ranges[check.field]
        margin = f"{100 * check.margin:g}%" if check.relative else f"{check.margin:g} {check.unit}"
        lines.append(
            f"{check.check}: {check.field.replace('_', ' ')} {value:.3g} {check.unit} lies outside the training scans' "
            f"{low:.3g}–{high:.3g} {check.unit} (margin {margin}); the imaging features may not mean what they meant "
            "in training"
        )
    return lines
