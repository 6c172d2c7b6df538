"""`tipsprog info FILE`: what a feature store, a --resume journal or a model bundle holds (patients, blocks, QC
counts, provenance, settings digests), as a nested mapping that the CLI prints as YAML or JSON."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import h5py
import torch
import yaml

from tipsprog import outputs, store
from tipsprog.errors import InputError
from tipsprog.journal import TRAINING_FORMAT, finished


def describe(path: Path) -> dict:
    """What the file or bundle folder at `path` holds; InputError for anything else."""
    path = Path(path)
    if path.is_dir():
        if not (path / "bundle.yaml").is_file():
            raise InputError(f"{path}: a folder without bundle.yaml (not a model bundle)")
        return bundle_info(path)
    if not path.is_file():
        raise InputError(f"{path}: not found")
    if outputs.starts_with(path, outputs.HDF5_SIGNATURE):
        with h5py.File(path, "r") as h5:
            if "settings_sha256" in h5.attrs and "records" in h5:
                return journal_info(path, h5)
        return store_info(path)
    return training_state_info(path)


def _sha256(text: str) -> str:
    """SHA-256 of a settings text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _codes(texts: list[str]) -> dict[str, int]:
    """How often each code ('liver:truncated', 'scan:pelvis_only') occurs in '; '-joined 'code (why)' texts."""
    counts = Counter(part.split(" (")[0].strip() for text in texts for part in text.split(";") if part.strip())
    return dict(counts.most_common())


def store_info(path: Path) -> dict:
    """A feature store's patients, centers, QC counts, segmentation provenance and feature blocks."""
    with store.open_store(path) as h5:
        info: dict[str, Any] = {
            "kind": "store",
            "path": str(path),
            **{key: str(h5.attrs[key]) for key in ("tipsprog_version", "created_utc", "command") if key in h5.attrs},
            "schema_version": int(h5.attrs["schema_version"]),
            "patients": len(store.read_patients(h5)),
            "centers": dict(sorted(Counter(store.read_centers(h5)).items())),
        }
        if "qc/status" in h5:
            status, reasons = store.read_qc(h5)
            info["qc"] = {
                "status": dict(sorted(Counter(status).items())),
                "reasons": _codes([reason for reason, state in zip(reasons, status) if state != "ok"]),
            }
            if "qc/flags" in h5:
                info["qc"]["flags"] = _codes(store.read_strings(h5, "qc/flags"))
        if "segment" in h5:
            attrs = h5["segment"].attrs
            info["segment"] = {
                "backend": str(attrs["backend"]),
                "settings_sha256": _sha256(str(attrs["settings"])),
                **{key: str(attrs[key]) for key in ("model_path", "model_sha256") if str(attrs.get(key, ""))},
                "masks": len(h5["segment/masks"]) if "segment/masks" in h5 else 0,
                "crops": sorted(h5["segment/crops"]) if "segment/crops" in h5 else [],
            }
        info["blocks"] = {name: _block_info(block) for name, block in store.read_features(h5).items()}
    return info


def _block_info(block: store.FeatureBlock) -> dict:
    """A feature block's size and provenance (long settings texts as their digest)."""
    attrs = {key: value for key, value in block.attrs.items() if key not in ("settings", "encoder_fitted_on")}
    if "settings" in block.attrs and "settings_sha256" not in attrs:
        attrs["settings_sha256"] = _sha256(block.attrs["settings"])
    if "encoder_fitted_on" in block.attrs:
        attrs["encoder_fitted_on"] = f"{len(json.loads(block.attrs['encoder_fitted_on']))} patients"
    return {"features": len(block.names), "groups": len(set(block.groups)), **attrs}


def journal_info(path: Path, h5: h5py.File) -> dict:
    """A per-scan stage's --resume journal: its settings digest and the patients it has finished."""
    done = finished(h5)
    return {
        "kind": "journal",
        "path": str(path),
        "settings_sha256": str(h5.attrs["settings_sha256"]),
        "finished_patients": len(done),
        "records": len(h5["records"]),
        "output": str(path.with_name(path.name.removesuffix(".partial"))),
    }


def training_state_info(path: Path) -> dict:
    """A training stage's --resume state (embed --fit, fuse-train): its settings digest and where it stopped."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises many types for a file that is not a checkpoint
        payload = None
    if not isinstance(payload, dict) or payload.get("format") != TRAINING_FORMAT:
        raise InputError(f"{path}: not a tipsprog store, journal or bundle")
    return {
        "kind": "training journal",
        "path": str(path),
        "settings_sha256": str(payload["settings_sha256"]),
        "position": str(payload["position"]),
        "output": str(path.with_name(path.name.removesuffix(".partial"))),
    }


def bundle_info(path: Path) -> dict:
    """A model bundle's model, modalities, training cohort, cross-validated C and provenance (from its manifest and
    metrics.json, without loading the weights)."""
    try:
        manifest = yaml.safe_load((path / "bundle.yaml").read_text(encoding="utf-8"))
    except yaml.YAMLError:
        raise InputError(f"{path / 'bundle.yaml'}: invalid YAML") from None
    config, training = manifest.get("config", {}), manifest.get("training", {})
    metrics_file = path / "metrics.json"
    metrics = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.is_file() else {}
    info = {
        "kind": "bundle",
        "path": str(path),
        "bundle_format": manifest.get("bundle_format"),
        **{key: manifest[key] for key in ("tipsprog_version", "created_utc") if key in manifest},
        "model": config.get("model"),
        "config_sha256": _sha256(yaml.safe_dump(config, sort_keys=True)),
        "modalities": {name: len(names) for name, names in manifest.get("modalities", {}).items()},
        "training": {
            "patients": training.get("patients"),
            "events": training.get("events"),
            "centers": training.get("centers"),
            "cv": training.get("cv"),
            "held_out": len(training.get("held_out", [])),
        },
        "segment_backend": manifest.get("pipeline", {}).get("segment", {}).get("backend"),
    }
    if "harrell_c" in metrics:
        info["harrell_c"] = {
            row: f"{value['estimate']:.3f} ({value['low']:.3f}–{value['high']:.3f})"
            for row, value in metrics["harrell_c"].items()
        }
    transductive = manifest.get("transductive", {})
    if transductive:
        info["transductive"] = {
            step: f"{', '.join(entry.get('blocks', []))} fitted on {len(entry.get('fitted_on', []))} patients"
            for step, entry in transductive.items()
        }
    info["files"] = manifest.get("files", {})
    return info
