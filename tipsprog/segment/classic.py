"""Training-free segmentation: HU windows, morphology, connected components, anatomical priors (the organs are
searched above the pelvis, found by its iliac wings: landmarks.py)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from tipsprog.io import antialiased_resample
from tipsprog.segment.landmarks import pelvis_top, slice_levels
from tipsprog.store import ROI_LABELS

SETTINGS = {
    "working_spacing_mm": 3.0, "median_voxels": 3, "body_hu": -400.0, "wall_mm": 15.0, "liver_window_hu": 40.0, "liver_erosion_mm": 8.0,
    "spleen_erosion_mm": 9.0, "vessel_above_organs_hu": 30.0, "vessel_search_mm": 20.0,
    "vessel_core_mm": 7.0, "vessel_max_core_fraction": 0.3, "vessel_max_z_extent": 0.7,
}


def _erode(mask: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Exact erosion by a ball of radius_mm (Euclidean distance in mm)."""
    return ndimage.distance_transform_edt(mask, sampling=spacing) > radius_mm


def _dilate(mask: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Exact dilation by a ball of radius_mm."""
    return ndimage.distance_transform_edt(~mask, sampling=spacing) <= radius_mm


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """6-connected components."""
    return ndimage.label(mask)


def _largest(mask: np.ndarray) -> np.ndarray:
    """The largest connected component (empty if the mask is empty)."""
    labels, count = _components(mask)
    if count == 0:
        return mask.copy()
    sizes = np.bincount(labels.ravel())[1:]
    return labels == int(np.argmax(sizes)) + 1


def _pick_component(mask: np.ndarray, keep) -> np.ndarray:
    """The largest component whose index array satisfies `keep(indices)`."""
    labels, count = _components(mask)
    best, best_size = np.zeros_like(mask), 0
    for index, region in enumerate(ndimage.find_objects(labels), start=1):
        component = labels[region] == index
        size = int(component.sum())
        if size > best_size and keep(region, component):
            best = np.zeros_like(mask)
            best[region] = component
            best_size = size
    return best


def _body(hu: np.ndarray) -> np.ndarray:
    """Body outline: largest component above the air threshold, holes filled slice by slice."""
    body = _largest(hu > SETTINGS["body_hu"])
    return np.stack([ndimage.binary_fill_holes(s) for s in body])


def _centroid_index(region: tuple[slice, ...], component: np.ndarray) -> np.ndarray:
    """Centroid of a component in full-array voxel indices (z, y, x)."""
    return np.array(ndimage.center_of_mass(component)) + np.array([s.start for s in region])


def _liver(smooth: np.ndarray, body: np.ndarray, deep: np.ndarray, spacing: np.ndarray, mid_x: float) -> tuple[np.ndarray, float]:
    """Liver mask and its median HU: largest soft-tissue organ on the patient's right."""
    soft = deep & (smooth > -30) & (smooth < 250)
    core = _erode(soft, SETTINGS["liver_erosion_mm"], spacing)
    core[..., int(mid_x):] = False
    seed = _largest(core)
    if not seed.any():
        return seed, float("nan")
    liver_hu = float(np.median(smooth[seed]))
    window = body & (np.abs(smooth - liver_hu) < SETTINGS["liver_window_hu"])
    seed = _largest(_erode(window & deep, SETTINGS["liver_erosion_mm"], spacing) & _dilate(seed, 1.0, spacing))
    grown = _dilate(seed, SETTINGS["liver_erosion_mm"] + spacing.max(), spacing) & window
    return ndimage.binary_fill_holes(_largest(grown)), liver_hu


def _spleen(smooth: np.ndarray, body: np.ndarray, deep: np.ndarray, liver: np.ndarray, liver_hu: float,
            spacing: np.ndarray, mid: np.ndarray) -> np.ndarray:
    """Spleen: largest liver-like-HU component on the patient's left, posterior half, at the liver's levels."""
    window = body & ~_dilate(liver, 2.0 * spacing.max(), spacing) & (np.abs(smooth - liver_hu) < SETTINGS["liver_window_hu"])
    core = _erode(window & deep, SETTINGS["spleen_erosion_mm"], spacing)
    liver_levels = np.flatnonzero(liver.any(axis=(1, 2)))

    def beside_the_liver(region: tuple[slice, ...], component: np.ndarray) -> bool:
        z, y, x = _centroid_index(region, component)
        return x > mid[2] and y > mid[1] - 0.1 * body.shape[1] and liver_levels[0] <= z <= liver_levels[-1]

    seed = _pick_component(core, beside_the_liver)
    grown = _dilate(seed, SETTINGS["spleen_erosion_mm"] + spacing.max(), spacing) & window
    return ndimage.binary_fill_holes(grown) if seed.any() else seed


def _portal_vein(smooth: np.ndarray, liver: np.ndarray, spleen: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Portal vein: the largest tubular component brighter than liver and spleen, near them."""
    organ_hu = max(float(np.median(smooth[liver])), float(np.median(smooth[spleen])) if spleen.any() else -np.inf)
    low = organ_hu + SETTINGS["vessel_above_organs_hu"]
    near = _dilate(liver | spleen, SETTINGS["vessel_search_mm"], spacing)
    vessels = near & (smooth > low) & (smooth < low + 200.0)
    z_size = smooth.shape[0]

    def tubular(region: tuple[slice, ...], component: np.ndarray) -> bool:
        z_extent = (region[0].stop - region[0].start) / z_size
        core_fraction = _erode(np.pad(component, 1), SETTINGS["vessel_core_mm"], spacing).sum() / component.sum()
        return z_extent < SETTINGS["vessel_max_z_extent"] and core_fraction < SETTINGS["vessel_max_core_fraction"]

    return _pick_component(vessels, tubular)


def segment_classic(ct: sitk.Image) -> sitk.Image:
    """Label liver (1), spleen (2) and portal vein (3) on a canonical LPS CT.

    Segmentation runs on a grid no finer than 3 mm per axis, so inputs sampled finer than that all give
    (nearly) the same result; labels are mapped back onto the input grid.
    """
    spacing = tuple(max(s, SETTINGS["working_spacing_mm"]) for s in ct.GetSpacing())
    working = antialiased_resample(ct, spacing, -1024.0) if spacing != ct.GetSpacing() else ct
    labels = sitk.GetImageFromArray(_label_array(working))
    labels.CopyInformation(working)
    return sitk.Resample(labels, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def _label_array(ct: sitk.Image) -> np.ndarray:
    """Labels of a CT on its own grid."""
    spacing = np.array(ct.GetSpacing()[::-1])
    hu = sitk.GetArrayFromImage(ct).astype(np.float32)
    smooth = ndimage.median_filter(hu, size=SETTINGS["median_voxels"])
    body = _body(smooth)
    labels = np.zeros(hu.shape, dtype=np.uint8)
    top = pelvis_top(slice_levels(smooth, spacing)[0], float(spacing[0]))
    if top is not None:
        body[:top + 1] = False  # the liver and spleen lie above the pelvis
    if body.any():
        mid = np.array(ndimage.center_of_mass(body))
        deep = _erode(body, SETTINGS["wall_mm"], spacing)
        liver, liver_hu = _liver(smooth, body, deep, spacing, mid[2])
        if liver.any():
            spleen = _spleen(smooth, body, deep, liver, liver_hu, spacing, mid)
            portal = _portal_vein(smooth, liver, spleen, spacing)
            labels[liver] = ROI_LABELS["liver"]
            labels[spleen & ~liver] = ROI_LABELS["spleen"]
            labels[portal] = ROI_LABELS["portal_vein"]
    return labels
