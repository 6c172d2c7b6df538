"""Anatomical landmarks read slice by slice from a CT, to bound where organs can be and to check what was found.

A slice is pelvic when it holds the iliac wings: bone deep inside the body (more than BONE_DEPTH_MM from the skin
or the edge of the field of view) lying more than ILIAC_LATERAL_MM to each side of the body's midline, at least
ILIAC_WING_CM2 on both sides. Above the pelvis nothing that dense lies that far out but the ribs, which run close
to the skin; the spine itself, whose area depends on bone density and contrast (20-30 cm² of a young patient's
lumbar vertebra exceed 200 HU), is never counted. A slice is thoracic when air inside the body (the lungs) covers
more than LUNG_FRACTION of it. The liver and spleen lie above the pelvis.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

BODY_HU, BONE_HU, AIR_HU = -400.0, 200.0, -400.0
BONE_DEPTH_MM = 25.0
ILIAC_LATERAL_MM = 60.0
ILIAC_WING_CM2 = 4.0
LUNG_FRACTION = 0.3
PELVIS_MIN_MM = 9.0  # a run of pelvic slices shorter than this is a stray rib, not the pelvis
PELVIS_GAP_MM = 6.0  # pelvic slices this close belong to one run


def _holds_iliac_wings(plane: np.ndarray, body: np.ndarray, in_plane: np.ndarray) -> bool:
    """Whether an axial slice holds deep bone far out on both sides of the midline (the iliac wings)."""
    depth = ndimage.distance_transform_edt(np.pad(body, 1), sampling=in_plane)[1:-1, 1:-1]  # the FOV edge counts as skin
    deep_bone = (plane > BONE_HU) & (depth > BONE_DEPTH_MM)
    if not deep_bone.any():
        return False
    midline = ndimage.center_of_mass(body)[1]  # the spine (or sacrum) lies on the body's midline
    lateral_mm = (np.arange(plane.shape[1]) - midline) * in_plane[1]
    pixel_cm2 = float(np.prod(in_plane)) / 100.0
    right = (deep_bone & (lateral_mm < -ILIAC_LATERAL_MM)[None]).sum() * pixel_cm2
    left = (deep_bone & (lateral_mm > ILIAC_LATERAL_MM)[None]).sum() * pixel_cm2
    return min(left, right) >= ILIAC_WING_CM2


def slice_levels(hu: np.ndarray, spacing_zyx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per axial slice of a (z, y, x) HU array of a canonical CT: whether it is pelvic, and whether it is thoracic."""
    in_plane = np.asarray(spacing_zyx[1:], dtype=float)
    pelvic, thoracic = np.zeros(len(hu), bool), np.zeros(len(hu), bool)
    for z, plane in enumerate(hu):
        body = ndimage.binary_fill_holes(plane > BODY_HU)
        if not body.any():
            continue
        pelvic[z] = _holds_iliac_wings(plane, body, in_plane)
        thoracic[z] = ((plane < AIR_HU) & body).sum() > LUNG_FRACTION * body.sum()
    return pelvic, thoracic


def pelvis_top(pelvic: np.ndarray, slice_mm: float) -> int | None:
    """The highest slice of the pelvis (the longest run of pelvic slices, gaps up to PELVIS_GAP_MM bridged), or None
    where no run reaches PELVIS_MIN_MM."""
    gap = max(1, int(round(PELVIS_GAP_MM / slice_mm)))
    runs, count = ndimage.label(ndimage.binary_closing(pelvic, np.ones(gap + 1, bool)) | pelvic)
    best, best_length = None, 0.0
    for region in ndimage.find_objects(runs):
        length = (region[0].stop - region[0].start) * slice_mm
        if length >= PELVIS_MIN_MM and length > best_length:
            best, best_length = region[0].stop - 1, length
    return best
