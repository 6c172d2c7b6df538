"""Given masks: read label files named in the cohort and resample them to the CT grid."""

from __future__ import annotations

import numpy as np
import pandas as pd
import SimpleITK as sitk

from tipsprog.images import read_mask
from tipsprog.store import ROI_LABELS

TOTALSEGMENTATOR_IDS = {"liver": 5, "spleen": 1, "portal_vein": 64}
MULTI_LABEL_COLUMN = "label"
PER_ROI_COLUMNS = {"liver_mask": "liver", "spleen_mask": "spleen", "portal_vein_mask": "portal_vein"}


def has_reference(row: pd.Series) -> bool:
    """Whether a cohort row names a multi-label file or any per-ROI mask file."""
    columns = [MULTI_LABEL_COLUMN, *PER_ROI_COLUMNS]
    return any(isinstance(row.get(c), str) and row.get(c) for c in columns)


def map_labels(labels: sitk.Image, source_ids: dict[str, int]) -> sitk.Image:
    """Relabel a foreign label image (e.g. TotalSegmentator ids) to tipsprog's 1/2/3."""
    source = sitk.GetArrayViewFromImage(labels)
    mapped = np.zeros(source.shape, dtype=np.uint8)
    for roi, source_id in source_ids.items():
        mapped[source == source_id] = ROI_LABELS[roi]
    image = sitk.GetImageFromArray(mapped)
    image.CopyInformation(labels)
    return image


def reference_labels(row: pd.Series, ct: sitk.Image) -> sitk.Image:
    """Labels 1/2/3 on the CT grid from a `label` file or from per-ROI mask files."""
    if isinstance(row.get(MULTI_LABEL_COLUMN), str):
        return read_mask(row[MULTI_LABEL_COLUMN], ct)
    labels = np.zeros(sitk.GetArrayViewFromImage(ct).shape, dtype=np.uint8)
    for column, roi in PER_ROI_COLUMNS.items():
        if isinstance(row.get(column), str):
            labels[sitk.GetArrayFromImage(read_mask(row[column], ct)) > 0] = ROI_LABELS[roi]
    mask = sitk.GetImageFromArray(labels)
    mask.CopyInformation(ct)
    return mask
