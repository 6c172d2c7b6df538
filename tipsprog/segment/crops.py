"""Fixed-size ROI-centred crops and ROI volumes from a CT and its labels."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from tipsprog.store import ROI_LABELS

CROP_SHAPE = (32, 32, 32)
CROP_FIELD_MM = {"liver": 256.0, "spleen": 192.0, "portal_vein": 128.0}
HU_CENTER, HU_HALF_WIDTH = 50.0, 250.0


def scale_hu(hu: np.ndarray) -> np.ndarray:
    """Window −200…300 HU to −1…1."""
    return np.clip((hu - HU_CENTER) / HU_HALF_WIDTH, -1.0, 1.0)


def roi_volumes(labels: sitk.Image) -> np.ndarray:
    """Volume in mL of each ROI in ROI_LABELS order."""
    voxel_ml = float(np.prod(labels.GetSpacing())) / 1000.0
    counts = np.bincount(sitk.GetArrayViewFromImage(labels).ravel(), minlength=max(ROI_LABELS.values()) + 1)
    return np.array([counts[label] * voxel_ml for label in ROI_LABELS.values()], dtype=np.float32)


def _crop_grid(centre: np.ndarray, field_mm: float) -> sitk.Image:
    """An LPS reference grid of CROP_SHAPE voxels covering field_mm around a physical centre."""
    spacing = field_mm / np.array(CROP_SHAPE[::-1], dtype=float)
    grid = sitk.Image([int(n) for n in CROP_SHAPE[::-1]], sitk.sitkFloat32)
    grid.SetSpacing(tuple(spacing))
    grid.SetOrigin(tuple(centre - field_mm / 2.0 + spacing / 2.0))
    return grid


def roi_crops(ct: sitk.Image, labels: sitk.Image) -> dict[str, np.ndarray]:
    """Per ROI a float32 [2, D, H, W] crop: scaled CT and the ROI mask, centred on the ROI."""
    label_array = sitk.GetArrayViewFromImage(labels)
    crops = {}
    for roi, label in ROI_LABELS.items():
        voxels = np.argwhere(label_array == label)
        index = voxels.mean(axis=0)[::-1] if len(voxels) else (np.array(ct.GetSize()) - 1) / 2.0
        centre = np.array(ct.TransformContinuousIndexToPhysicalPoint(tuple(float(i) for i in index)))
        grid = _crop_grid(centre, CROP_FIELD_MM[roi])
        ct_crop = sitk.Resample(ct, grid, sitk.Transform(), sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
        roi_mask = sitk.Cast(labels == label, sitk.sitkFloat32)
        mask_crop = sitk.Resample(roi_mask, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        crops[roi] = np.stack([scale_hu(sitk.GetArrayFromImage(ct_crop)), sitk.GetArrayFromImage(mask_crop)])
    return crops
