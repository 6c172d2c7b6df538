"""Per-scan extraction: crop each ROI with the margin its filters need, run pyradiomics, tag the features."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from tipsprog import outputs, store
from tipsprog.errors import InputError
from tipsprog.images import read_image
from tipsprog.radiomics.params import CropPlan, crop_plan, make_extractor

REQUIRED_ROIS = ("liver", "spleen")
PYRADIOMICS_LOCK = threading.Lock()  # pyradiomics is not thread-safe (its parameter check shares a YAML parser)


@dataclass
class PatientFeatures:
    """One patient's features (name → value), what went wrong if anything, and the digest of its inputs."""

    patient_id: str
    values: dict[str, float]
    status: str
    reason: str
    input_sha256: str = ""


@dataclass(frozen=True)
class PatientJob:
    """Everything a worker (local process or Dask) needs for one patient, and the digest of its inputs."""

    patient_id: str
    ct_path: str
    series_uid: str | None
    labels: sitk.Image | None
    params: dict
    input_sha256: str


def feature_group(roi: str, key: str) -> str:
    """Granularity tag roi/image-type/feature-class from a pyradiomics key like wavelet-LLH_glcm_Contrast."""
    image_type, feature_class, _ = key.split("_", 2)
    return f"{roi}/{image_type}/{feature_class}"


def extraction_inputs_digest(ct_path: str, series_uid: str | None, labels: sitk.Image | None) -> str:
    """SHA-256 of the CT (its path and bytes: a file or DICOM folder rewritten in place is new), its DICOM series and
    the label image (voxels and geometry): what --resume compares."""
    digest = hashlib.sha256(bytes.fromhex(outputs.inputs_sha256([series_uid or ""], [ct_path])))
    if labels is not None:
        digest.update(sitk.GetArrayViewFromImage(labels).tobytes())
        digest.update(repr((labels.GetOrigin(), labels.GetSpacing(), labels.GetDirection())).encode("utf-8"))
    return digest.hexdigest()


def crop_to_roi(ct: sitk.Image, labels: sitk.Image, label: int, plan: CropPlan) -> tuple[sitk.Image, sitk.Image]:
    """Image and labels cut to the ROI's bounding box plus the plan's margin per axis.

    Where the margin reaches past the image border, a circular filter would wrap onto the opposite border,
    so that axis is kept whole; otherwise the crop is clipped to the image.
    """
    present = np.nonzero(sitk.GetArrayViewFromImage(labels) == label)
    size = np.array(ct.GetSize())
    lower = np.array([index.min() for index in present][::-1])
    upper = np.array([index.max() for index in present][::-1]) + 1
    start, stop = lower - plan.margin, upper + plan.margin
    if plan.circular:
        whole = (start < 0) | (stop > size)
        start, stop = np.where(whole, 0, start), np.where(whole, size, stop)
    start, stop = np.maximum(start, 0), np.minimum(stop, size)
    region = tuple(slice(int(a), int(b)) for a, b in zip(start, stop))
    return ct[region], labels[region]


def extract_scan(ct: sitk.Image, labels: sitk.Image, params: dict) -> tuple[dict[str, float], list[str]]:
    """Features of every ROI of one scan (`roi/<pyradiomics key>`), and the ROIs that failed with why."""
    extractor = make_extractor(params)
    plan = crop_plan(params, ct.GetSpacing())
    values, failures = {}, []
    label_array = sitk.GetArrayViewFromImage(labels)
    for roi, label in store.ROI_LABELS.items():
        if not (label_array == label).any():
            failures.append(f"{roi}: empty mask")
            continue
        image, mask = (ct, labels) if plan is None else crop_to_roi(ct, labels, label, plan)
        try:
            result = extractor.execute(image, mask, label=label)
        except (ValueError, RuntimeError) as err:
            failures.append(f"{roi}: {str(err).splitlines()[0]}")
            continue
        for key, value in result.items():
            if not key.startswith("diagnostics_"):
                values[f"{roi}/{key}"] = float(value)
    return values, failures


def extract_from_file(
    ct_path: str, labels: sitk.Image, params: dict, series_uid: str | None = None
) -> tuple[dict[str, float], list[str]]:
    """extract_scan on the CT as stored (DICOM series `series_uid` of a folder holding several), so features equal
    pyradiomics run on the file itself.

    tipsprog's masks live on the canonical LPS grid; they are mapped back onto the stored grid (a pure axis
    permutation, so nearest-neighbour is exact) because wavelet features change when axes flip, and the image
    keeps its stored pixel type because pyradiomics filters an integer file in float64, not float32.
    """
    image = read_image(ct_path, series_uid)
    native_labels = sitk.Resample(labels, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    with PYRADIOMICS_LOCK:  # a Dask worker may run several patients in threads of one process
        return extract_scan(image, native_labels, params)


def extract_patient(job: PatientJob) -> PatientFeatures:
    """Read one CT and extract its features; a bad scan becomes a failed record, not an exception."""
    digest = job.input_sha256
    if job.labels is None:
        return PatientFeatures(job.patient_id, {}, "failed", "no segmentation", digest)
    try:
        values, failures = extract_from_file(job.ct_path, job.labels, job.params, job.series_uid)
    except InputError as err:
        return PatientFeatures(job.patient_id, {}, "failed", str(err), digest)
    nan_features = [name for name, value in values.items() if not np.isfinite(value)]
    fatal = [f for f in failures if f.split(":")[0] in REQUIRED_ROIS]
    reasons = failures + ([f"{len(nan_features)} non-finite features"] if nan_features else [])
    return PatientFeatures(job.patient_id, values, "failed" if fatal else "ok", "; ".join(reasons), digest)
