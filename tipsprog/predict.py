"""predict stage: replay a bundle's feature pipeline on one scan and clinical row, then the ensemble."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tipsprog import store
from tipsprog.clinical import clinical_scores, read_clinical, schema
from tipsprog.devices import resolve_device
from tipsprog.embed import embedding_block, load_encoder
from tipsprog.errors import InputError
from tipsprog.evaluate.rows import read_oof
from tipsprog.fusion.bundle import Bundle, load_bundle
from tipsprog.fusion.data import clinical_features, modality_matrices, with_extras
from tipsprog.fusion.training import ensemble_survival, predict_members
from tipsprog.io import read_ct
from tipsprog.radiomics.extract import extract_from_file
from tipsprog.segment import Backend, qc_status, quality_flags, segment_scan
from tipsprog.segment.crops import roi_crops, roi_volumes


def _interval(values: np.ndarray) -> dict[str, float]:
    """Ensemble mean with the spread over members (2.5–97.5 percentiles)."""
    low, high = np.percentile(values, [2.5, 97.5])
    return {"estimate": float(np.mean(values)), "low": float(low), "high": float(high)}


def _image_blocks(bundle: Bundle, ct_path: Path | None, device_name: str) -> tuple[dict[str, store.FeatureBlock], dict]:
    """Feature blocks of one scan in the bundle's feature order, and its segmentation QC."""
    pipeline = bundle.manifest["pipeline"]
    if not pipeline["blocks"]:
        return {}, {}
    if ct_path is None:
        raise InputError("--ct is required: this bundle uses imaging features")
    segment = pipeline.get("segment") or {"backend": "classic"}
    if segment["backend"] == "masks":
        raise InputError(f"{bundle.path}: bundle was trained on given masks; predict needs an automatic backend")
    model = str(bundle.path / segment["model"]) if segment.get("model") else ""
    backend = Backend(segment["backend"], model, resolve_device(device_name).type)
    ct = read_ct(ct_path)
    labels = segment_scan(ct, backend)
    volumes = roi_volumes(labels)
    flags = quality_flags(labels, volumes)
    qc = {"backend": backend.name, "volumes_ml": {roi: round(float(v), 1) for roi, v in zip(store.ROI_LABELS, volumes)},
          "status": qc_status(flags), "flags": flags}
    blocks = {}
    for name, entry in pipeline["blocks"].items():
        if entry["extractor"] == "pyradiomics":
            values, _ = extract_from_file(str(ct_path), labels, entry["params"])
            row = np.array([[values.get(feature, np.nan) for feature in entry["names"]]])
            blocks[name] = store.FeatureBlock(row, entry["names"], [])
        elif "encoder" in entry:
            encoder = load_encoder(entry["encoder"], bundle.path / entry["weights"])
            crops = {roi: crop[None] for roi, crop in roi_crops(ct, labels).items()}
            blocks[name] = embedding_block(encoder, crops, resolve_device(device_name), entry["pooling"], {})
        else:
            raise InputError(f"{bundle.path}: cannot replay feature block '{name}'")
    return blocks, qc


def _clinical_row(bundle: Bundle, clinical_csv: Path):
    """The single clinical row, its feature vector and the variables that will be imputed."""
    table = read_clinical(clinical_csv)
    if len(table) != 1:
        raise InputError(f"{clinical_csv}: expected one patient row, found {len(table)}")
    extras = bundle.manifest["clinical"]["extras"]
    table = with_extras(table, extras)
    imputed = [name for name in [*schema(), *extras] if table[name].isna().iloc[0]]
    matrix, names = clinical_features(table, extras)
    return table, matrix, names, imputed


def predict_one(bundle: Bundle, ct_path: Path | None, clinical_csv: Path, device_name: str = "auto") -> dict:
    """Risk, percentile, group, survival at horizons, OHE, ppg_post, clinical scores and QC for one patient."""
    table, clinical_matrix, clinical_names, imputed = _clinical_row(bundle, clinical_csv)
    blocks, qc = _image_blocks(bundle, ct_path, device_name)
    wanted = tuple(bundle.manifest["modalities"])
    matrices, _, _ = modality_matrices(blocks, np.array([0]), clinical_matrix, clinical_names, wanted)
    device = resolve_device(device_name)
    horizons = np.array(bundle.config.horizons_days, dtype=float)
    output = predict_members(bundle.members, matrices, np.array([0]), bundle.config, device)
    risks = output["risk"][:, 0]
    survival = ensemble_survival(bundle.members, output["risk"], horizons)[:, 0]
    risk = float(np.mean(risks))
    reference = read_oof(bundle.path / "oof.h5").oof["risk"]
    reference = reference[np.isfinite(reference)]
    cut = bundle.manifest["risk_groups"]["cut"]
    scores = clinical_scores(table).iloc[0]
    return {
        "patient_id": str(table["patient_id"].iloc[0]),
        "risk_score": _interval(risks),
        "risk_percentile": float(100.0 * np.mean(reference <= risk)),
        "risk_group": "high" if risk > cut else "low",
        "survival": {f"{int(h)}d": _interval(survival[:, i]) for i, h in enumerate(horizons)},
        "ohe_probability": _interval(output["ohe_probability"][:, 0]),
        "ppg_post_mmhg": _interval(output["ppg_post"][:, 0]),
        "clinical_scores": {name: round(float(value), 3) for name, value in scores.items() if np.isfinite(value)},
        "imputed": imputed,
        "segmentation": qc,
        "members": len(bundle.members),
    }


def run_predict(bundle_path: Path, ct_path: Path | None, clinical_csv: Path, device_name: str = "auto") -> dict:
    """Load a bundle and predict one patient."""
    return predict_one(load_bundle(bundle_path), ct_path, clinical_csv, device_name)
