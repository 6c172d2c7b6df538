"""segment stage: CT → ROI labels, crops and volumes in a feature store."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import SimpleITK as sitk
import yaml

from tipsprog import store
from tipsprog.errors import InputError
from tipsprog.io import read_cohort, read_ct
from tipsprog.parallel import map_ordered
from tipsprog.segment import classic
from tipsprog.segment.crops import CROP_SHAPE, roi_crops, roi_volumes
from tipsprog.segment.masks import has_reference, reference_labels

BACKENDS = ("classic", "masks")
VOLUME_RANGES_ML = {"liver": (600.0, 4000.0), "spleen": (50.0, 2000.0)}
REQUIRED_ROIS = ("liver", "spleen")


@dataclass
class ScanResult:
    """Everything segment produces for one patient."""

    patient_id: str
    status: str = "ok"
    reason: str = ""
    labels: sitk.Image | None = None
    crops: dict[str, np.ndarray] = field(default_factory=dict)
    volumes: np.ndarray = field(default_factory=lambda: np.full(len(store.ROI_LABELS), np.nan, np.float32))
    flags: list[str] = field(default_factory=list)
    dice: np.ndarray = field(default_factory=lambda: np.full(len(store.ROI_LABELS), np.nan, np.float32))


def backend_settings(backend: str) -> str:
    """The settings of a backend as YAML text (recorded in stores and bundles)."""
    settings = {"backend": backend, **(classic.SETTINGS if backend == "classic" else {})}
    return yaml.safe_dump(settings, sort_keys=True)


def segment_scan(ct: sitk.Image, backend: str, row: pd.Series | None = None) -> sitk.Image:
    """Label one canonical CT with the chosen backend."""
    if backend == "classic":
        return classic.segment_classic(ct)
    if backend == "masks":
        if row is None or not has_reference(row):
            raise InputError("backend 'masks' needs a 'label', 'liver_mask' or 'spleen_mask' column in the cohort")
        return reference_labels(row, ct)
    raise InputError(f"unknown segmentation backend '{backend}' (choose from {', '.join(BACKENDS)})")


def dice_per_roi(labels: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """Dice of each ROI against a reference label image (NaN where both are empty)."""
    produced, truth = sitk.GetArrayViewFromImage(labels), sitk.GetArrayViewFromImage(reference)
    scores = []
    for label in store.ROI_LABELS.values():
        a, b = produced == label, truth == label
        total = a.sum() + b.sum()
        scores.append(2.0 * (a & b).sum() / total if total else np.nan)
    return np.array(scores, dtype=np.float32)


def _touches_border(mask: np.ndarray) -> bool:
    """Whether a mask reaches the first or last slice of any array axis (the ROI is cut off)."""
    return any(np.take(mask, index, axis=axis).any() for axis in range(mask.ndim) for index in (0, -1))


def quality_flags(labels: sitk.Image, volumes: np.ndarray) -> list[str]:
    """QC flags per ROI: `roi:empty`, `roi:implausible_volume`, `roi:truncated`."""
    array = sitk.GetArrayViewFromImage(labels)
    flags = []
    for (roi, label), volume in zip(store.ROI_LABELS.items(), volumes):
        if volume <= 0:
            flags.append(f"{roi}:empty")
            continue
        low, high = VOLUME_RANGES_ML.get(roi, (0.0, np.inf))
        if not low <= volume <= high:
            flags.append(f"{roi}:implausible_volume")
        if _touches_border(array == label):
            flags.append(f"{roi}:truncated")
    return flags


def qc_status(flags: list[str]) -> str:
    """A scan is unusable ('failed') when the liver or the spleen is empty."""
    return "failed" if any(f"{roi}:empty" in flags for roi in REQUIRED_ROIS) else "ok"


def _segment_one(job: tuple[pd.Series, str]) -> ScanResult:
    """Segment one cohort row; bad scans become a failed result, not an exception."""
    row, backend = job
    result = ScanResult(patient_id=row["patient_id"])
    try:
        ct = read_ct(row["ct"])
        result.labels = segment_scan(ct, backend, row)
        result.volumes = roi_volumes(result.labels)
        result.crops = roi_crops(ct, result.labels)
        if backend != "masks" and has_reference(row):
            result.dice = dice_per_roi(result.labels, reference_labels(row, ct))
    except InputError as err:
        result.status, result.reason = "failed", str(err)
        return result
    result.flags = quality_flags(result.labels, result.volumes)
    result.status, result.reason = qc_status(result.flags), "; ".join(result.flags)
    return result


def run_segment(cohort_csv: Path, out: Path, backend: str = "classic", workers: int = 1, strict: bool = False,
                progress: Callable[[ScanResult], None] | None = None) -> list[ScanResult]:
    """Segment every CT of a cohort and write seg.h5 (masks, crops, volumes, QC, Dice)."""
    if backend not in BACKENDS:
        raise InputError(f"unknown segmentation backend '{backend}' (choose from {', '.join(BACKENDS)})")
    cohort = read_cohort(cohort_csv)
    ids = cohort["patient_id"].tolist()
    results: list[ScanResult] = []
    with store.create_store(out, ids, cohort["center"].tolist()) as h5:
        crops = {roi: store.create_crops(h5, roi, len(ids), CROP_SHAPE) for roi in store.ROI_LABELS}
        jobs = [(row, backend) for _, row in cohort.iterrows()]
        for index, result in enumerate(map_ordered(_segment_one, jobs, workers)):
            if strict and result.status != "ok":
                raise InputError(f"{cohort_csv}: patient {result.patient_id}: {result.reason}")
            if result.labels is not None:
                store.write_mask(h5, result.patient_id, result.labels)
            for roi, crop in result.crops.items():
                crops[roi][index] = crop.astype(np.float16)
            result.labels, result.crops = None, {}
            results.append(result)
            if progress:
                progress(result)
        store.write_segment_info(h5, backend, backend_settings(backend), cohort["ct"].tolist())
        store.write_volumes(h5, np.stack([r.volumes for r in results]), list(store.ROI_LABELS))
        store.write_dice(h5, np.stack([r.dice for r in results]), list(store.ROI_LABELS))
        store.write_qc(h5, [r.status for r in results], [r.reason for r in results],
                       flags=[";".join(r.flags) for r in results], backend=backend)
    return results
