"""The model bundle (DESIGN §4): everything predict and evaluate need, portable as one folder."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import yaml

from tipsprog import __version__, outputs, store
from tipsprog.errors import InputError
from tipsprog.fusion.clinical_cox import ClinicalCoxFit
from tipsprog.fusion.config import TrainConfig
from tipsprog.fusion.crossval import CrossValidation
from tipsprog.fusion.data import ModalityPreprocessor, TrainingData
from tipsprog.fusion.ensemble import Member
from tipsprog.fusion.ood import OodReference, fit_ood
from tipsprog.manifest import Manifest

BUNDLE_FORMAT = 4
WEIGHTS_FORMAT = "tipsprog-fusion-2"
REQUIRED_FILES = ("bundle.yaml", "preprocess.json", "weights.pt", "oof.h5", "metrics.json", "model_card.md")


@dataclass
class Bundle:
    """A loaded bundle: its manifest, config and ensemble members."""

    path: Path
    manifest: Manifest
    config: TrainConfig
    members: list[Member]
    clinical_cox: ClinicalCoxFit | None
    ood: OodReference | None = None  # None: a bundle written before #24 (no ood.json)

    def out_of_fold_risk(self) -> np.ndarray:
        """The training patients' out-of-fold risks (oof.h5), those known."""
        with store.open_store(self.path / "oof.h5") as h5:
            risk = store.read_columns(h5, "oof")["risk"]
        return risk[np.isfinite(risk)]


@dataclass
class HeldOut:
    """Patients held out of training by --test: their outcomes, ensemble predictions and clinical scores."""

    data: TrainingData
    predictions: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]


def _member_payload(member: Member) -> dict:
    """The weights.pt entry of one member (preprocessing lives in preprocess.json)."""
    payload = asdict(member)
    payload.pop("preprocessors")
    return payload


def write_bundle(
    out: Path,
    data: TrainingData,
    cv: CrossValidation,
    config: TrainConfig,
    manifest: dict,
    scores: dict[str, np.ndarray],
    metrics: dict,
    model_card: str,
    copied: dict[str, Path],
    clinical_cox: ClinicalCoxFit | None = None,
    held_out: HeldOut | None = None,
) -> None:
    """Write the bundle folder atomically; files named in `copied` are copied in and hashed."""
    with outputs.atomic_output(out, "bundle") as tmp:
        tmp.mkdir(parents=True)
        for name, source in copied.items():
            shutil.copyfile(source, tmp / name)
        torch.save({"format": WEIGHTS_FORMAT, "members": [_member_payload(m) for m in cv.members]}, tmp / "weights.pt")
        (tmp / "preprocess.json").write_text(
            json.dumps(
                {
                    "members": [
                        {"fold": m.fold, "seed": m.seed, "preprocessors": {k: p.to_dict() for k, p in m.preprocessors.items()}}
                        for m in cv.members
                    ],
                    "clinical_cox": clinical_cox.to_dict() if clinical_cox is not None else None,
                }
            ),
            encoding="utf-8",
        )
        with store.create_store(tmp / "oof.h5", data.patient_ids, data.centers.tolist()) as h5:
            store.write_columns(h5, "outcomes", {**data.outcomes(), "fold": cv.folds[:, 0]})
            store.write_columns(h5, "oof", cv.oof)
            store.write_columns(h5, "repeats", {**cv.per_repeat, "fold": cv.folds})
            store.write_columns(h5, "scores", scores)
            for row, baselines in cv.baselines.items():
                store.write_baselines(h5, row, [(baseline.times, baseline.cumhaz) for baseline in baselines])
        if held_out is not None:
            with store.create_store(tmp / "held_out.h5", held_out.data.patient_ids, held_out.data.centers.tolist()) as h5:
                store.write_columns(h5, "outcomes", held_out.data.outcomes())
                store.write_columns(h5, "predictions", {k: v for k, v in held_out.predictions.items() if k != "member_risk"})
                store.write_columns(h5, "members", {"risk": held_out.predictions["member_risk"]})
                store.write_columns(h5, "scores", held_out.scores)
        (tmp / "ood.json").write_text(
            json.dumps(fit_ood(data.matrices, cv.folds[:, 0], data.acquisition).to_dict()), encoding="utf-8"
        )
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        (tmp / "model_card.md").write_text(model_card, encoding="utf-8")
        manifest = {
            **manifest,
            "bundle_format": BUNDLE_FORMAT,
            "tipsprog_version": __version__,
            "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "config": asdict(config),
        }
        manifest["files"] = {p.name: outputs.file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / "bundle.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")


def load_bundle(path: Path, trust: bool = False) -> Bundle:
    """Load and check a bundle folder (format, files, and their hashes unless `trust`)."""
    path = Path(path)
    if not (path / "bundle.yaml").is_file():
        raise InputError(f"{path}: not a model bundle (no bundle.yaml)")
    try:
        manifest = yaml.safe_load((path / "bundle.yaml").read_text(encoding="utf-8"))
    except yaml.YAMLError:
        raise InputError(f"{path / 'bundle.yaml'}: invalid YAML") from None
    if not isinstance(manifest, dict) or manifest.get("bundle_format") != BUNDLE_FORMAT:
        raise InputError(
            f"{path}: bundle format {manifest.get('bundle_format') if isinstance(manifest, dict) else '?'}, "
            f"this tipsprog {__version__} reads format {BUNDLE_FORMAT}"
        )
    for name, digest in manifest.get("files", {}).items():
        file = path / name
        if not file.is_file():
            raise InputError(f"{path}: bundle file {name} is missing")
        if not trust and outputs.file_sha256(file) != digest:
            raise InputError(
                f"{path}: bundle file {name} does not match its recorded sha256 (changed since training; --trust uses it anyway)"
            )
    payload = torch.load(path / "weights.pt", map_location="cpu", weights_only=True)
    preprocess = json.loads((path / "preprocess.json").read_text(encoding="utf-8"))
    members = []
    for entry, fitted in zip(payload["members"], preprocess["members"]):
        preprocessors = {k: ModalityPreprocessor(**v) for k, v in fitted["preprocessors"].items()}
        members.append(Member(**{**entry, "preprocessors": preprocessors}))
    clinical_cox = ClinicalCoxFit.from_dict(preprocess["clinical_cox"]) if preprocess.get("clinical_cox") else None
    ood_file = path / "ood.json"
    ood = OodReference.from_dict(json.loads(ood_file.read_text(encoding="utf-8"))) if ood_file.is_file() else None
    return Bundle(path, Manifest.from_dict(manifest), TrainConfig(**manifest["config"]), members, clinical_cox, ood)
