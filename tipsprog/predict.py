"""predict stage: replay a bundle's feature pipeline on scans and clinical rows, then the ensemble, with attributions.

One patient (`--ct` + a one-row clinical table) and a batch (`--cohort` + a clinical table) run the same code: the
per-scan stages (segmentation, radiomics, ROI crops) in parallel workers, then embeddings, the ensemble and
integrated gradients one patient at a time, so a patient's prediction never depends on the others in the batch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from tipsprog import embed, radiomics, store
from tipsprog.clinical import clinical_scores, read_clinical, schema
from tipsprog.devices import resolve_device
from tipsprog.errors import InputError
from tipsprog.fusion.attribution import integrated_gradients
from tipsprog.fusion.bundle import Bundle, load_bundle
from tipsprog.fusion.data import clinical_features, modality_matrices, with_extras
from tipsprog.fusion.ensemble import ensemble_survival, member_ensemble, predict_members
from tipsprog.fusion.ood import OOD_QUANTILE
from tipsprog.images import read_ct
from tipsprog.manifest import BlockEntry, SegmentEntry
from tipsprog.outputs import atomic_output, make_folder, writes_output
from tipsprog.parallel import map_ordered
from tipsprog.segment import Backend, acquisition, biomarkers, segment_scan
from tipsprog.segment.crops import roi_crops, roi_volumes
from tipsprog.segment.overlay import draw_overlay
from tipsprog.segment.portal import PORTAL_VEIN_FIELDS, PortalVein, portal_vein_measurements
from tipsprog.segment.qc import qc_reason, qc_status, quality_flags
from tipsprog.tables import read_cohort

PREDICTION_SCHEMA = "tipsprog-prediction-1"
TOP_FEATURES = 8
CURVE_STEP_DAYS = 30


@dataclass
class ScanFeatures:
    """What the per-scan stages give one patient: feature rows by block (radiomics, biomarkers), ROI crops and QC."""

    rows: dict[str, np.ndarray]
    crops: dict[str, np.ndarray]
    qc: dict


@dataclass
class ScanJob:
    """One scan to process: the bundle's feature blocks and backend, where its mask and overlay go (or None), and
    the DICOM series chosen in a folder holding several (or None)."""

    blocks: dict[str, BlockEntry]
    backend: Backend
    ct_path: str
    mask_path: Path | None
    overlay_path: Path | None
    series_uid: str | None = None


@dataclass
class PredictOptions:
    """Where predict writes its optional extras (None: not written) and how it runs."""

    save_masks: Path | None = None
    overlay: Path | None = None
    device: str = "auto"
    workers: int = 1
    trust: bool = False
    strict: bool = False
    scheduler: str | None = None  # a Dask scheduler address: scans run on that cluster instead of local workers


def _backend(bundle: Bundle, device_name: str) -> Backend:
    """The segmentation backend the bundle's features came from."""
    segment = bundle.manifest.segment or SegmentEntry()
    if segment.backend == "masks":
        raise InputError(f"{bundle.path}: bundle was trained on given masks; predict needs an automatic backend")
    model = str(bundle.path / segment.model) if segment.model else ""
    return Backend(segment.backend, model, resolve_device(device_name).type)


def scan_features(job: ScanJob) -> ScanFeatures:
    """Segment one scan, extract the bundle's radiomics blocks, cut the ROI crops embeddings need, and write the
    mask and overlay asked for. A scan whose segmentation fails quality control is refused: features of a liver
    that is not there would give a confident-looking prediction of nothing."""
    ct = read_ct(job.ct_path, job.series_uid)
    labels = segment_scan(ct, job.backend)
    volumes = roi_volumes(labels)
    flags = quality_flags(ct, labels, volumes)
    if qc_status(flags) == "failed":
        raise InputError(f"{job.ct_path}: segmentation ({job.backend.name}) failed quality control: {qc_reason(flags)}")
    portal_vein = portal_vein_measurements(labels)
    rows = {}
    for name, entry in job.blocks.items():
        if entry.extractor == "pyradiomics":  # each stage replays the block it recorded in the bundle
            rows[name] = radiomics.replay(entry, job.ct_path, labels, job.series_uid)
        elif entry.extractor == biomarkers.EXTRACTOR:
            rows[name], measure_flags = biomarkers.replay(entry, ct, labels, volumes, portal_vein)
            flags = flags + measure_flags
    qc = {
        "backend": job.backend.name,
        "volumes_ml": {roi: round(float(v), 1) for roi, v in zip(store.ROI_LABELS, volumes)},
        "status": qc_status(flags),
        "flags": flags,
        "portal_vein": portal_vein_record(portal_vein),
        "acquisition": acquisition.record(acquisition.describe(ct, labels)),
    }
    if job.mask_path is not None:
        make_folder(job.mask_path.parent)
        sitk.WriteImage(labels, str(job.mask_path), useCompression=True)
    if job.overlay_path is not None:
        draw_overlay(ct, labels, job.overlay_path)
    needs_crops = any(entry.encoder is not None for entry in job.blocks.values())
    return ScanFeatures(rows, roi_crops(ct, labels) if needs_crops else {}, qc)


def percentile_rank(value: float, quantiles: list[float]) -> float:
    """Where `value` ranks among a cohort given by its 0th…100th percentiles: interpolated between them, and the
    middle of a run of equal percentiles for a value equal to them (mid-rank: 0 mL of ascites in a cohort where most
    have none ranks near the middle, not at the top of the run)."""
    levels = np.asarray(quantiles, dtype=float)
    distinct = np.unique(levels)
    first = np.searchsorted(levels, distinct, side="left")
    last = np.searchsorted(levels, distinct, side="right") - 1
    i = int(np.searchsorted(distinct, value))
    if i < len(distinct) and distinct[i] == value:
        return (first[i] + last[i]) / 2.0
    if i == 0 or i == len(distinct):
        return 0.0 if i == 0 else 100.0
    return float(np.interp(value, distinct[i - 1 : i + 1], [last[i - 1], first[i]]))


def biomarker_record(values: np.ndarray, entry: BlockEntry) -> dict[str, dict[str, float | None]]:
    """Each biomarker's value and its percentile among the training cohort's patients (None: not measured)."""
    record = {}
    for name, value in zip(entry.names, values):
        reference = (entry.training_percentiles or {})[name]
        measured = bool(np.isfinite(value))
        known = measured and reference[0] is not None
        record[name] = {
            "value": round(float(value), 2) if measured else None,
            "percentile": round(percentile_rank(value, reference), 1) if known else None,
        }
    return record


def portal_vein_record(measurements: PortalVein) -> dict[str, float | None]:
    """The portal vein measurements for the JSON record, to 0.1 (None: not measured)."""
    return {
        name: round(float(value), 1) if np.isfinite(value) else None
        for name, value in zip(PORTAL_VEIN_FIELDS, measurements.as_array())
    }


def portal_vein_line(record: dict[str, float | None]) -> str:
    """'main portal vein diameter X mm, volume Y mL', with 'not measured' for what was not."""
    diameter, volume = record.get("main_diameter_mm"), record.get("volume_ml")
    return (
        f"main portal vein diameter {'not measured' if diameter is None else f'{diameter:.1f} mm'}, "
        f"volume {'not measured' if volume is None else f'{volume:.1f} mL'}"
    )


def _usable_scan(job: ScanJob) -> ScanFeatures | str:
    """scan_features, or the one-line reason the scan cannot be used."""
    try:
        return scan_features(job)
    except InputError as err:
        return str(err)


def _image_paths(patient_ids: list[str], options: PredictOptions) -> tuple[list[Path | None], list[Path | None]]:
    """Per patient the --save-masks file and the --overlay PNG (a .png path for one patient, else a folder); the
    folders are made only when a file is written into them."""
    masks: list[Path | None] = [None] * len(patient_ids)
    overlays: list[Path | None] = [None] * len(patient_ids)
    if options.save_masks is not None:
        masks = [options.save_masks / f"{pid}_labels.nii.gz" for pid in patient_ids]
    if options.overlay is not None:
        if len(patient_ids) == 1 and options.overlay.suffix.lower() == ".png":
            overlays = [options.overlay]
        else:
            overlays = [options.overlay / f"{pid}.png" for pid in patient_ids]
    for path in [*masks, *overlays]:
        if path is not None and path.parent.exists() and not path.parent.is_dir():
            raise InputError(f"{path.parent}: is a file; masks and overlays need a folder here")
    return masks, overlays


def _missing_folders(path: Path) -> list[Path]:
    """The folders above `path` that do not exist yet, deepest first."""
    return [folder for folder in path.parents if not folder.exists()]


@contextmanager
def _removed_on_failure(files: list[Path]) -> Iterator[None]:
    """If the block fails, remove those of `files` it wrote and the folders it made for them: nothing is left."""
    made = {folder for path in files for folder in _missing_folders(path)}
    try:
        yield
    except BaseException:
        for path in files:
            if path.is_file():
                path.unlink()
        for folder in sorted(made, key=lambda f: len(f.parts), reverse=True):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise


def _feature_blocks(bundle: Bundle, scans: list[ScanFeatures], device_name: str) -> dict[str, store.FeatureBlock]:
    """The bundle's feature blocks for all scans: radiomics stacked, embeddings one crop at a time."""
    blocks = {}
    for name, entry in bundle.manifest.blocks.items():
        if entry.extractor in ("pyradiomics", biomarkers.EXTRACTOR):
            blocks[name] = store.FeatureBlock(np.stack([scan.rows[name] for scan in scans]), entry.names, [])
        elif entry.encoder is not None:
            crops = {roi: np.stack([scan.crops[roi] for scan in scans]) for roi in scans[0].crops}
            blocks[name] = embed.replay(entry, bundle.path, crops, resolve_device(device_name))
        else:
            raise InputError(f"{bundle.path}: cannot replay feature block '{name}'")
    return blocks


def _clinical_rows(bundle: Bundle, clinical_csv: Path, patient_ids: list[str] | None) -> pd.DataFrame:
    """Clinical rows of the patients to predict (all rows of the table when `patient_ids` is None), with the
    bundle's extra columns."""
    table = with_extras(read_clinical(clinical_csv), bundle.manifest.clinical_extras)
    if patient_ids is None:
        return table
    missing = [pid for pid in patient_ids if pid not in table.index]
    if missing:
        raise InputError(f"{clinical_csv}: patient {missing[0]} of the cohort has no clinical row ({len(missing)} missing)")
    return table.loc[patient_ids]


def _interval(values: np.ndarray) -> dict[str, float]:
    """Ensemble mean with the spread over members (2.5–97.5 percentiles)."""
    low, high = np.percentile(values, [2.5, 97.5])
    return {"estimate": float(np.mean(values)), "low": float(low), "high": float(high)}


def _scans(
    bundle: Bundle,
    ct_paths: list[str] | None,
    options: PredictOptions,
    series_uids: list[str | None] | None,
    images: tuple[list[Path | None], list[Path | None]],
) -> tuple[list[ScanFeatures], dict[int, str]]:
    """Each row's scan features (none when the bundle uses no imaging) and, unless strict, the rows whose scan could
    not be used with the reason; when no scan can be used, the first reason is the error."""
    if not bundle.manifest.blocks:
        return [], {}
    if ct_paths is None:
        raise InputError("--ct is required: this bundle uses imaging features")
    backend = _backend(bundle, options.device)
    masks, overlays = images
    series_uids = series_uids or [None] * len(ct_paths)
    jobs = [
        ScanJob(bundle.manifest.blocks, backend, path, mask, overlay, series)
        for path, mask, overlay, series in zip(ct_paths, masks, overlays, series_uids)
    ]
    outcomes = list(
        map_ordered(scan_features if options.strict else _usable_scan, jobs, min(options.workers, len(jobs)), options.scheduler)
    )
    failed = {row: outcome for row, outcome in enumerate(outcomes) if isinstance(outcome, str)}
    if len(failed) == len(outcomes):
        raise InputError(failed[0])
    return [outcome for outcome in outcomes if not isinstance(outcome, str)], failed


def predict_patients(
    bundle: Bundle,
    table: pd.DataFrame,
    ct_paths: list[str] | None,
    options: PredictOptions,
    series_uids: list[str | None] | None = None,
) -> list[dict]:
    """Predictions for the rows of a clinical table (scans, and any DICOM series chosen in them, in the same order
    when the bundle uses imaging). A row whose scan cannot be used gets a record with its `error` (or, with
    options.strict, stops the run)."""
    masks, overlays = _image_paths(table["patient_id"].astype(str).tolist(), options)
    with _removed_on_failure([path for path in [*masks, *overlays] if path is not None]):
        scans, failed = _scans(bundle, ct_paths, options, series_uids, (masks, overlays))
        usable = [row for row in range(len(table)) if row not in failed]
        results = _predictions(bundle, table.iloc[usable], scans, options)
    for row, reason in failed.items():
        results.insert(row, {"schema": PREDICTION_SCHEMA, "patient_id": str(table["patient_id"].iloc[row]), "error": reason})
    return results


def _predictions(bundle: Bundle, table: pd.DataFrame, scans: list[ScanFeatures], options: PredictOptions) -> list[dict]:
    """Predictions for clinical rows whose scans (if the bundle uses imaging) were all usable."""
    blocks = _feature_blocks(bundle, scans, options.device) if scans else {}
    extras = bundle.manifest.clinical_extras
    clinical_matrix, clinical_names = clinical_features(table, extras)
    matrices, _, _ = modality_matrices(
        blocks, np.arange(len(table)), clinical_matrix, clinical_names, tuple(bundle.manifest.modalities)
    )
    device = resolve_device(options.device)
    ensemble = member_ensemble(bundle.members, bundle.config, device)
    attribution = integrated_gradients(bundle.members, matrices, bundle.config, device, ensemble)
    reference = bundle.out_of_fold_risk()
    scores = clinical_scores(table)
    unlike = bundle.ood.flagged(matrices) if bundle.ood is not None else [None] * len(table)
    results = []
    for row, patient_id in enumerate(table["patient_id"].astype(str)):
        output = predict_members(
            bundle.members, {m: v[row : row + 1] for m, v in matrices.items()}, np.array([0]), bundle.config, device, ensemble
        )
        imputed = [name for name in [*schema(), *extras] if pd.isna(table[name].iloc[row])]
        result = _patient_result(bundle, patient_id, output, reference, scores.iloc[row], imputed)
        result["attribution"] = {
            "method": "integrated gradients",
            "baseline": "training-fold mean patient",
            "risk_minus_baseline": round(float(attribution.risk[row] - attribution.baseline_risk[row]), 4),
            "by_modality": attribution.by_modality(row),
            "top": attribution.top(row, TOP_FEATURES),
        }
        result["segmentation"] = scans[row].qc if scans else {}
        entry = bundle.manifest.blocks.get("biomarkers")
        result["biomarkers"] = biomarker_record(scans[row].rows["biomarkers"], entry) if entry and scans else {}
        result["warnings"] = ood_warnings(unlike[row])
        if scans and bundle.ood is not None:
            result["warnings"] += bundle.ood.acquisition_warnings(scans[row].qc["acquisition"])
        results.append(result)
    return results


def ood_warnings(modalities: list[str] | None) -> list[str]:
    """The out-of-distribution warnings of one patient (fusion/ood.py), one line per modality flagged."""
    if modalities is None:
        return ["out-of-distribution check unavailable: the bundle predates it (no ood.json); retrain to add it"]
    return [
        f"{m} features lie beyond the training cohort ({100 * OOD_QUANTILE:.0f}th percentile of its patients' "
        "distance): this patient is unlike those the model learned from; read the prediction with care"
        for m in modalities
    ]


def _patient_result(
    bundle: Bundle, patient_id: str, output: dict[str, np.ndarray], reference: np.ndarray, scores: pd.Series, imputed: list[str]
) -> dict:
    """One patient's JSON record from the members' outputs on that patient."""
    horizons = np.array(bundle.config.horizons_days, dtype=float)
    curve_days = np.unique(np.concatenate([np.arange(CURVE_STEP_DAYS, horizons.max(), CURVE_STEP_DAYS), horizons]))
    risks = output["risk"][:, 0]
    survival = ensemble_survival(bundle.members, output["risk"], horizons)[:, 0]
    curve = ensemble_survival(bundle.members, output["risk"], curve_days)[:, 0].mean(axis=0)
    risk = float(np.mean(risks))
    return {
        "schema": PREDICTION_SCHEMA,
        "patient_id": patient_id,
        "risk_score": _interval(risks),
        "risk_percentile": float(100.0 * np.mean(reference <= risk)),
        "risk_group": "high" if risk > bundle.manifest.risk_cut else "low",
        "survival": {f"{int(h)}d": _interval(survival[:, i]) for i, h in enumerate(horizons)},
        "survival_curve": {"days": curve_days.tolist(), "survival": [round(float(s), 5) for s in curve]},
        "ohe_probability": _interval(output["ohe_probability"][:, 0]),
        "ppg_post_mmhg": _interval(output["ppg_post"][:, 0]),
        "clinical_scores": {name: round(float(value), 3) for name, value in scores.items() if np.isfinite(value)},
        "imputed": imputed,
        "members": len(bundle.members),
    }


def run_predict(
    bundle_path: Path, ct_path: Path | None, clinical_csv: Path, options: PredictOptions, series_uid: str | None = None
) -> dict:
    """Load a bundle and predict one patient (from DICOM series `series_uid` when its folder holds several)."""
    bundle = load_bundle(bundle_path, options.trust)
    table = _clinical_rows(bundle, clinical_csv, None)
    if len(table) != 1:
        raise InputError(f"{clinical_csv}: expected one patient row, found {len(table)} (use --cohort for a batch)")
    return predict_patients(bundle, table, [str(ct_path)] if ct_path is not None else None, options, [series_uid])[0]


CSV_INTERVALS = ("risk_score", "ohe_probability", "ppg_post_mmhg")


def flat_row(result: dict) -> dict:
    """One predictions.csv row: estimates with their member intervals, scores, QC and top features (or the error)."""
    row: dict = {"patient_id": result["patient_id"], "error": result.get("error", "")}
    if "error" in result:
        return row
    for key in CSV_INTERVALS:
        row.update({key: result[key]["estimate"], f"{key}_low": result[key]["low"], f"{key}_high": result[key]["high"]})
    row.update(risk_percentile=result["risk_percentile"], risk_group=result["risk_group"])
    for horizon, value in result["survival"].items():
        row.update(
            {
                f"survival_{horizon}": value["estimate"],
                f"survival_{horizon}_low": value["low"],
                f"survival_{horizon}_high": value["high"],
            }
        )
    row.update(result["clinical_scores"])
    segmentation = result["segmentation"]
    if segmentation:
        row.update(
            qc_status=segmentation["status"],
            qc_flags=";".join(segmentation["flags"]),
            **{f"{roi}_ml": volume for roi, volume in segmentation["volumes_ml"].items()},
            **{f"portal_vein_{name}": value for name, value in segmentation["portal_vein"].items()},
            **{f"acquisition_{name}": value for name, value in segmentation["acquisition"].items()},
        )
    for name, value in result["biomarkers"].items():
        row.update({f"biomarker_{name}": value["value"], f"biomarker_{name}_percentile": value["percentile"]})
    row.update(
        warnings=" | ".join(result["warnings"]),
        imputed=";".join(result["imputed"]),
        top_features=";".join(f"{t['group']}:{t['contribution']:+.3f}" for t in result["attribution"]["top"]),
    )
    return row


@writes_output("predictions")
def run_predict_batch(bundle_path: Path, cohort_csv: Path, clinical_csv: Path, out: Path, options: PredictOptions) -> list[dict]:
    """Predict every patient of a cohort.csv; write predictions.csv and predictions.jsonl into `out` atomically
    (masks and overlays, when asked for, into their own folders once every patient is predicted)."""
    bundle = load_bundle(bundle_path, options.trust)
    cohort = read_cohort(cohort_csv)
    ids = cohort["patient_id"].astype(str).tolist()
    table = _clinical_rows(bundle, clinical_csv, ids)
    series_uids = cohort["series_uid"].tolist() if "series_uid" in cohort.columns else None
    results = predict_patients(bundle, table, cohort["ct"].tolist(), options, series_uids)
    with atomic_output(out, "predictions") as tmp:
        tmp.mkdir(parents=True)
        pd.DataFrame([flat_row(r) for r in results]).to_csv(tmp / "predictions.csv", index=False)
        (tmp / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results), encoding="utf-8")
    return results
