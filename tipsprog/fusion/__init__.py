"""fuse-train stage: join stores with the clinical table and outcomes, cross-validate, write a bundle."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tipsprog import embed, radiomics, store
from tipsprog.clinical import score_notes
from tipsprog.devices import resolve_device
from tipsprog.errors import InputError
from tipsprog.fusion.assembly import assemble, score_columns
from tipsprog.fusion.bundle import HeldOut, write_bundle
from tipsprog.fusion.clinical_cox import fit_clinical_cox
from tipsprog.fusion.config import TrainConfig
from tipsprog.fusion.crossval import cross_validate
from tipsprog.fusion.data import TrainingData
from tipsprog.fusion.ensemble import Member, predict_cohort
from tipsprog.journal import TrainingJournal
from tipsprog.outputs import verified_file, writes_output
from tipsprog.segment import biomarkers
from tipsprog.survival import harrell_c, harrell_c_with_ci
from tipsprog.tables import read_id_list
from tipsprog.transductive import fitted_steps

PROVENANCE = ("segment_backend", "segment_model_sha256", "settings_sha256", "weights_sha256")  # evaluate --test compares


def pipeline_manifest(blocks: dict[str, store.FeatureBlock]) -> tuple[dict, dict[str, Path]]:
    """How to replay the feature pipeline on a new scan, and the weight files to copy into the bundle."""
    sources = {(b.attrs.get("segment_backend", ""), b.attrs.get("segment_model_sha256", "")) for b in blocks.values()}
    sources.discard(("", ""))
    if len(sources) > 1:
        raise InputError(f"feature stores come from different segmentations: {sorted(sources)}")
    pipeline: dict = {"segment": None, "blocks": {}}
    copied: dict[str, Path] = {}
    if sources:
        block = next(iter(blocks.values()))
        pipeline["segment"] = {"backend": block.attrs["segment_backend"]}
        if block.attrs.get("segment_model_path"):
            copied["segment-model.pt"] = verified_file(
                Path(block.attrs["segment_model_path"]), block.attrs["segment_model_sha256"]
            )
            pipeline["segment"]["model"] = "segment-model.pt"
    for name, block in blocks.items():
        entry: dict = {
            "extractor": block.attrs.get("extractor", name),
            "names": block.names,
            "provenance": {key: block.attrs[key] for key in PROVENANCE if key in block.attrs},
        }
        if entry["extractor"] == "pyradiomics":  # each stage records what it needs to replay its block
            entry.update(radiomics.manifest_entry(block))
        elif entry["extractor"] == biomarkers.EXTRACTOR:
            entry.update(biomarkers.manifest_entry(block))
        elif "weights_path" in block.attrs:
            recorded, weights = embed.manifest_entry(name, block)
            entry.update(recorded)
            copied.update(weights)
        pipeline["blocks"][name] = entry
    return pipeline, copied


def model_card(data: TrainingData, config: TrainConfig, metrics: dict, cv_mode: str) -> str:
    """Markdown model card: data, endpoints, cross-validated metrics with CIs, intended use, limits."""
    rows = "\n".join(
        f"| {name} | {m['estimate']:.3f} | {m['low']:.3f}–{m['high']:.3f} |" for name, m in metrics["harrell_c"].items()
    )
    return f"""# tipsprog model card

- Model: `{config.model}` over modalities {", ".join(sorted(data.matrices))}; ensemble of {config.folds} folds × {config.seeds} seeds.
- Data: {len(data.patient_ids)} patients, {int(np.nansum(data.event))} deaths, centers {", ".join(sorted(set(data.centers)))}.
- Endpoints: survival (Cox, Efron ties), overt hepatic encephalopathy (BCE), portal pressure gradient after TIPS (Huber).
- Validation: {cv_mode} cross-validation; preprocessing and early stopping inside each training fold.

| Harrell's C (out-of-fold) | estimate | 95% CI |
|---|---|---|
{rows}

Intended use: research on prognosis after TIPS. Not a medical device; not validated for clinical decisions.
Limits: performance outside the training centers is unknown until evaluated with `tipsprog evaluate --test`.
"""


def held_out_positions(test_csv: Path, patient_ids: list[str]) -> np.ndarray:
    """Rows of the patients listed in a --test table (any CSV with a patient_id column, e.g. a cohort.csv)."""
    listed = read_id_list(test_csv, patient_ids, "the training inputs (features, clinical row and outcome)")
    position = {pid: row for row, pid in enumerate(patient_ids)}
    if len(listed) > len(patient_ids) // 2:
        raise InputError(f"{test_csv}: {len(listed)} held-out patients leave too few of {len(patient_ids)} to train on")
    return np.array(sorted(position[pid] for pid in listed), dtype=int)


def _c_rows(data: TrainingData, predictions: dict[str, np.ndarray]) -> dict[str, dict]:
    """Harrell's C with CI of the model and, where present, the clinical Cox on one cohort."""
    rows = {"model": harrell_c_with_ci(data.time, data.event, predictions["risk"])}
    if np.isfinite(predictions.get("clinical_cox_risk", np.array([np.nan]))).all():
        rows["clinical-cox"] = harrell_c_with_ci(data.time, data.event, predictions["clinical_cox_risk"])
    return rows


def residual_weights(members: list[Member]) -> list[float]:
    """Each fold's weight of the imaging residual on the clinical Cox (empty for unguided models)."""
    by_fold = {m.fold: float(m.state_dict["residual_weight"]) for m in members if "residual_weight" in m.state_dict}
    return [by_fold[fold] for fold in sorted(by_fold)]


def training_digest(data: TrainingData, config: TrainConfig, cv_mode: str, seed: int, device: torch.device) -> str:
    """sha256 of everything training depends on (settings, device type, patients, features, outcomes): what
    --resume compares."""
    settings = {
        "config": asdict(config),
        "cv": cv_mode,
        "seed": seed,
        "device": device.type,
        "patients": data.patient_ids,
        "centers": data.centers.tolist(),
        "modalities": sorted(data.matrices),
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode("utf-8"))
    for array in [*(data.matrices[m] for m in sorted(data.matrices)), *data.outcomes().values()]:
        digest.update(np.ascontiguousarray(array, dtype=np.float64).data)
    return digest.hexdigest()


@dataclass(frozen=True)
class FuseTrainOptions:
    """How `fuse-train` runs: the validated config, the modalities kept (None: all the inputs provide), the
    cross-validation (kfold or center) and its seed, patients held out (--test), the device, whether to resume."""

    config: TrainConfig
    modalities: tuple[str, ...] | None = None
    cv: str = "kfold"
    seed: int = 0
    test_csv: Path | None = None
    device: str = "auto"
    resume: bool = False


@writes_output("bundle")
def run_fuse_train(
    stores: list[Path],
    clinical_csv: Path,
    outcomes_csv: Path,
    out: Path,
    options: FuseTrainOptions,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Cross-validate the fusion model (holding out the --test patients, if any) and write the bundle; return metrics.

    Training saves its state to `<out>.partial` every few seconds; with `options.resume` it continues from there
    when settings and data are the same."""
    config, cv_mode, seed, test_csv = options.config, options.cv, options.seed, options.test_csv
    assembled = assemble(stores, clinical_csv, outcomes_csv, options.modalities)
    if config.model == "clinical-cox" and "clinical" not in assembled.data.matrices:
        raise InputError("--model clinical-cox needs the clinical modality (add clinical to --modalities)")
    for note in assembled.notes:
        if progress:
            progress(note)
    device = resolve_device(options.device)
    data, clinical, blocks = assembled.data, assembled.clinical, assembled.blocks
    held_out = None
    if test_csv is not None:
        test_rows = held_out_positions(test_csv, data.patient_ids)
        train_rows = np.setdiff1d(np.arange(len(data.patient_ids)), test_rows)
        data, clinical = data.subset(train_rows), assembled.clinical.iloc[train_rows]
        blocks = {name: replace(block, values=block.values[train_rows]) for name, block in blocks.items()}
        held_out = HeldOut(assembled.data.subset(test_rows), {}, score_columns(assembled.clinical.iloc[test_rows]))
        if np.nansum(data.event) < 2:
            raise InputError(f"{outcomes_csv}: fewer than 2 events among the {len(train_rows)} training patients")
    journal = TrainingJournal(out, training_digest(data, config, cv_mode, seed, device), options.resume, progress)
    cv = cross_validate(data, config, cv_mode, device, seed, progress, journal)
    metrics: dict[str, Any] = {"harrell_c": _c_rows(data, cv.oof)}
    if config.repeats > 1:
        metrics["harrell_c_by_repeat"] = [harrell_c(data.time, data.event, risk) for risk in cv.per_repeat["risk"].T]
    clinical_cox = (
        fit_clinical_cox(data, np.arange(len(data.patient_ids)), config.clinical_cox_penalizer)
        if "clinical" in data.matrices
        else None
    )
    if held_out is not None:
        held_out.predictions = predict_cohort(cv.members, held_out.data.matrices, config, device, clinical_cox)
        metrics["held_out"] = {"patients": len(held_out.data.patient_ids), "events": int(np.nansum(held_out.data.event))}
        if np.nansum(held_out.data.event) >= 2:
            metrics["held_out"]["harrell_c"] = _c_rows(held_out.data, held_out.predictions)
    pipeline, copied = pipeline_manifest(blocks)
    missing_scores = {"out-of-fold": score_notes(clinical, clinical_csv.name)}  # what evaluate says of absent scores
    if held_out is not None:
        missing_scores["held-out"] = score_notes(
            assembled.clinical.loc[held_out.data.patient_ids], f"{clinical_csv.name} (held-out patients)"
        )
    ensemble_risk = predict_cohort(cv.members, data.matrices, config, device, None)["risk"]
    weights = residual_weights(cv.members)
    if weights:
        metrics["residual_weight_by_fold"] = weights
    manifest = {
        "pipeline": pipeline,
        "modalities": {m: assembled.data.feature_names[m] for m in data.matrices},
        "clinical": {"extras": assembled.extras, "score_notes": missing_scores},
        "training": {
            "patients": len(data.patient_ids),
            "events": int(np.nansum(data.event)),
            "cv": cv_mode,
            "repeats": config.repeats,
            "centers": sorted(set(data.centers.tolist())),
            "held_out": held_out.data.patient_ids if held_out is not None else [],
        },
        "risk_groups": {"cut": float(np.median(ensemble_risk)), "labels": ["low", "high"]},
        "transductive": fitted_steps(assembled.blocks),  # fitted feature steps and the patients whose scans they saw
    }
    write_bundle(
        out,
        data,
        cv,
        config,
        manifest,
        score_columns(clinical),
        metrics,
        model_card(data, config, metrics, cv_mode),
        copied,
        clinical_cox,
        held_out,
    )
    journal.discard()
    return metrics
