"""radiomics stage: pyradiomics features per ROI with granularity tags, patients in parallel."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk
import yaml

from tipsprog import store
from tipsprog.errors import InputError
from tipsprog.io import read_ct
from tipsprog.parallel import map_ordered

PRESETS = {
    "fast": {
        "setting": {"binWidth": 25, "minimumROIDimensions": 2, "minimumROISize": 8},
        "imageType": {"Original": {}},
        "featureClass": {name: None for name in ("shape", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")},
    },
}
REQUIRED_ROIS = ("liver", "spleen")


@dataclass
class PatientFeatures:
    """One patient's features (name → value) and what went wrong, if anything."""

    patient_id: str
    values: dict[str, float]
    status: str
    reason: str


def load_params(params: str) -> dict:
    """A preset name or a pyradiomics YAML parameter file, as a parameter dictionary."""
    if params in PRESETS:
        return PRESETS[params]
    path = Path(params)
    if not path.is_file():
        raise InputError(f"--params {params}: not a preset ({', '.join(PRESETS)}) and no such file")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise InputError(f"{path}: invalid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(loaded, dict) or not set(loaded) <= {"setting", "imageType", "featureClass", "voxelSetting"}:
        raise InputError(f"{path}: not a pyradiomics parameter file (keys setting, imageType, featureClass)")
    return loaded


def _extractor(params: dict):
    """A quiet pyradiomics extractor for the parameter dictionary."""
    import radiomics
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    radiomics.setVerbosity(logging.ERROR)
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    return RadiomicsFeatureExtractor(params)


def feature_group(roi: str, key: str) -> str:
    """Granularity tag roi/image-type/feature-class from a pyradiomics key like wavelet-LLH_glcm_Contrast."""
    image_type, feature_class, _ = key.split("_", 2)
    return f"{roi}/{image_type}/{feature_class}"


def extract_scan(ct: sitk.Image, labels: sitk.Image, params: dict) -> tuple[dict[str, float], list[str]]:
    """Features of every ROI of one scan, and the ROIs that failed with why."""
    extractor = _extractor(params)
    values, failures = {}, []
    label_array = sitk.GetArrayViewFromImage(labels)
    for roi, label in store.ROI_LABELS.items():
        if not (label_array == label).any():
            failures.append(f"{roi}: empty mask")
            continue
        try:
            result = extractor.execute(ct, labels, label=label)
        except (ValueError, RuntimeError) as err:
            failures.append(f"{roi}: {str(err).splitlines()[0]}")
            continue
        for key, value in result.items():
            if not key.startswith("diagnostics_"):
                values[f"{roi}/{key}"] = float(value)
    return values, failures


def _extract_one(job: tuple[str, str, sitk.Image | None, dict]) -> PatientFeatures:
    """Read one CT, extract its features; failures become a failed record."""
    patient_id, ct_path, labels, params = job
    if labels is None:
        return PatientFeatures(patient_id, {}, "failed", "no segmentation")
    try:
        values, failures = extract_scan(read_ct(ct_path), labels, params)
    except InputError as err:
        return PatientFeatures(patient_id, {}, "failed", str(err))
    nan_features = [name for name, value in values.items() if not np.isfinite(value)]
    fatal = [f for f in failures if f.split(":")[0] in REQUIRED_ROIS]
    reasons = failures + ([f"{len(nan_features)} non-finite features"] if nan_features else [])
    return PatientFeatures(patient_id, values, "failed" if fatal else "ok", "; ".join(reasons))


def to_block(records: list[PatientFeatures], params: dict, names: list[str] | None = None,
             provenance: dict[str, str] | None = None) -> store.FeatureBlock:
    """Assemble per-patient records into a feature matrix (NaN where a feature is missing)."""
    if names is None:
        names = list(dict.fromkeys(name for record in records for name in record.values))
    values = np.array([[record.values.get(name, np.nan) for name in names] for record in records], dtype=np.float64)
    groups = [feature_group(*name.split("/", 1)) for name in names]
    settings = yaml.safe_dump(params, sort_keys=True)
    return store.FeatureBlock(values.reshape(len(records), len(names)), names, groups,
                              {"extractor": "pyradiomics", "settings": settings, **(provenance or {})})


def run_radiomics(seg_path: Path, out: Path, params_name: str = "fast", workers: int = 1,
                  progress: Callable[[PatientFeatures], None] | None = None) -> list[PatientFeatures]:
    """Extract radiomics for every patient of a segment store and write radiomics.h5."""
    params = load_params(params_name)
    with store.open_store(seg_path) as seg:
        if "segment/ct_paths" not in seg:
            raise InputError(f"{seg_path}: not a segment store (no /segment)")
        ids, centers = store.read_patients(seg), store.read_centers(seg)
        ct_paths, provenance = store.read_ct_paths(seg), store.segment_provenance(seg)
        masks = seg["segment/masks"]
        jobs = [(pid, path, store.read_mask(seg, pid) if pid in masks else None, params)
                for pid, path in zip(ids, ct_paths)]
    records = []
    for record in map_ordered(_extract_one, jobs, workers):
        records.append(record)
        if progress:
            progress(record)
    with store.create_store(out, ids, centers) as h5:
        store.write_features(h5, "radiomics", to_block(records, params, provenance=provenance))
        store.write_qc(h5, [r.status for r in records], [r.reason for r in records])
    return records
