"""segment stage: CT → ROI labels, crops and volumes in a feature store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch

from tipsprog import outputs, store
from tipsprog.devices import resolve_device
from tipsprog.errors import InputError
from tipsprog.images import read_ct
from tipsprog.journal import append, finished, forget, patient_journal
from tipsprog.outputs import writes_output
from tipsprog.parallel import map_ordered
from tipsprog.registry import SEGMENTATION_BACKENDS
from tipsprog.segment import acquisition, biomarkers, foundation, semi
from tipsprog.segment.backends import Backend, segment_scan, semi_model
from tipsprog.segment.crops import CROP_SHAPE, roi_crops, roi_volumes
from tipsprog.segment.masks import has_reference, reference_labels
from tipsprog.segment.portal import PORTAL_VEIN_FIELDS, PortalVein, portal_vein_measurements
from tipsprog.segment.qc import qc_reason, qc_status, quality_flags
from tipsprog.tables import COHORT_PATH_COLUMNS, read_cohort, read_id_list
from tipsprog.transductive import fitted_attr


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
    input_sha256: str = ""
    portal_vein: PortalVein = field(default_factory=PortalVein)
    biomarkers: np.ndarray = field(default_factory=lambda: np.full(len(biomarkers.NAMES), np.nan, np.float32))
    acquisition: np.ndarray = field(default_factory=lambda: np.full(len(acquisition.FIELDS), np.nan, np.float32))


def dice_per_roi(labels: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """Dice of each ROI against a reference label image (NaN where both are empty)."""
    produced, truth = sitk.GetArrayViewFromImage(labels), sitk.GetArrayViewFromImage(reference)
    scores = []
    for label in store.ROI_LABELS.values():
        a, b = produced == label, truth == label
        total = a.sum() + b.sum()
        scores.append(2.0 * (a & b).sum() / total if total else np.nan)
    return np.array(scores, dtype=np.float32)


def _segment_one(job: tuple[pd.Series, Backend]) -> ScanResult:
    """Segment one cohort row; bad scans become a failed result, not an exception."""
    row, backend = job
    result = ScanResult(patient_id=row["patient_id"], input_sha256=cohort_row_digest(row))
    try:
        ct = read_ct(row["ct"], row.get("series_uid"))
        result.labels = segment_scan(ct, backend, row)
        result.volumes = roi_volumes(result.labels)
        result.portal_vein = portal_vein_measurements(result.labels)
        result.acquisition = acquisition.describe(ct, result.labels)
        result.crops = roi_crops(ct, result.labels)
        if backend.name != "masks" and has_reference(row):
            result.dice = dice_per_roi(result.labels, reference_labels(row, ct))
    except InputError as err:
        result.status, result.reason = "failed", str(err)
        return result
    result.flags = quality_flags(ct, result.labels, result.volumes)
    result.status, result.reason = qc_status(result.flags), qc_reason(result.flags)
    if result.status == "ok":
        result.biomarkers, measure_flags = biomarkers.measure(ct, result.labels, result.volumes, result.portal_vein)
        result.flags += measure_flags
        result.reason = qc_reason(result.flags)
    return result


def _fit_unlabeled(
    cohort: pd.DataFrame, labeled_rows: pd.DataFrame, labeled_csv: Path, fit_ids: Path | None, cohort_name: str
) -> pd.DataFrame:
    """The cohort rows semi trains on unlabeled: those not in LABELED.csv, of the --fit-ids patients if given (which
    must list every labeled patient too)."""
    unlabeled_rows = cohort[~cohort["patient_id"].isin(labeled_rows["patient_id"])]
    if fit_ids is None:
        return unlabeled_rows
    known = list(dict.fromkeys([*cohort["patient_id"], *labeled_rows["patient_id"]]))
    listed = read_id_list(fit_ids, known, f"{cohort_name} or {labeled_csv}")
    unlisted = [pid for pid in labeled_rows["patient_id"] if pid not in set(listed)]
    if unlisted:
        raise InputError(
            f"{fit_ids}: patient {unlisted[0]} of {labeled_csv} is not listed; the labeled scans are part "
            "of the fit (list them, or leave them out of LABELED.csv)"
        )
    return unlabeled_rows[unlabeled_rows["patient_id"].isin(listed)]


def fit_semi(
    cohort: pd.DataFrame,
    labeled_csv: Path,
    model_path: Path,
    device: torch.device,
    settings: semi.SemiSettings,
    progress: Callable[[int, float, float], None] | None = None,
    fit_ids: Path | None = None,
    cohort_name: str = "the cohort",
) -> None:
    """Train the semi-supervised network on LABELED.csv plus the cohort's other scans (of the `fit_ids` patients
    only, if given); save it with the patients it was trained on."""
    labeled_rows = read_cohort(labeled_csv)
    unlabeled_rows = _fit_unlabeled(cohort, labeled_rows, labeled_csv, fit_ids, cohort_name)
    for _, row in labeled_rows.iterrows():
        if not has_reference(row):
            raise InputError(f"{labeled_csv}: patient {row['patient_id']}: no 'label' (or liver_mask/spleen_mask) to learn from")
    labeled = []
    for _, row in labeled_rows.iterrows():
        ct = read_ct(row["ct"], row.get("series_uid"))
        labeled.append(semi.prepare(ct, reference_labels(row, ct), settings))
    unlabeled = [semi.prepare(read_ct(row["ct"], row.get("series_uid")), None, settings) for _, row in unlabeled_rows.iterrows()]
    validation = labeled[-1:] if len(labeled) >= 4 else []
    training = labeled[:-1] if validation else labeled
    model = semi.fit(training, unlabeled, settings, device, validation, progress)
    semi.save_model(
        model,
        settings,
        model_path,
        [*labeled_rows["patient_id"], *unlabeled_rows["patient_id"]],
        labeled_rows["patient_id"].tolist(),
    )


def prepare_backend(
    name: str,
    cohort: pd.DataFrame,
    out: Path,
    fit_csv: Path | None,
    model_path: Path | None,
    device_name: str,
    semi_settings: semi.SemiSettings,
    fit_progress: Callable[[int, float, float], None] | None,
    fit_ids: Path | None = None,
    cohort_name: str = "the cohort",
) -> Backend:
    """Check the backend's requirements up front; for semi, train (--fit, on the --fit-ids patients if given) or
    locate (--model) the network."""
    if fit_ids is not None and fit_csv is None:
        raise InputError(f"--fit-ids {fit_ids}: chooses the patients `--backend semi --fit` trains on; give --fit too")
    SEGMENTATION_BACKENDS.check(name, "--backend")
    device = resolve_device(device_name)
    if name == "totalseg":
        missing = foundation.missing_requirements(fast=True)
        if missing:
            raise InputError("backend 'totalseg': " + "; ".join(missing))
    if name != "semi":
        if fit_csv or model_path:
            raise InputError(f"--fit and --model apply to backend 'semi' only, not '{name}'")
        return Backend(name, device=device.type)
    if fit_csv is None and model_path is None:
        raise InputError("backend 'semi' needs --fit LABELED.csv (to train) or --model PATH (a trained model)")
    model_path = Path(model_path or out.with_suffix(".semi.pt"))
    if fit_csv is not None:
        fit_semi(cohort, fit_csv, model_path, device, semi_settings, fit_progress, fit_ids, cohort_name)
    backend = Backend(name, str(model_path.resolve()), device.type)
    semi_model(backend.model_path, backend.device)
    return backend


def cohort_row_digest(row: pd.Series) -> str:
    """sha256 of a cohort row's CT and reference files (bytes) and its other values: what --resume compares."""
    paths = [str(row[c]) for c in COHORT_PATH_COLUMNS if isinstance(row.get(c), str)]
    texts = [f"{column}={value}" for column, value in row.items() if column not in COHORT_PATH_COLUMNS]
    return outputs.inputs_sha256(texts, paths)


def _journal_scan(result: ScanResult) -> Callable[[h5py.Group], None]:
    """Writer of one scan's result into a journal record."""

    def write(group: h5py.Group) -> None:
        group.attrs.update(status=result.status, reason=result.reason, flags=";".join(result.flags))
        group.create_dataset("volumes", data=result.volumes)
        group.create_dataset("dice", data=result.dice)
        group.create_dataset("portal_vein", data=result.portal_vein.as_array())
        group.create_dataset("biomarkers", data=result.biomarkers)
        group.create_dataset("acquisition", data=result.acquisition)
        if result.labels is not None:
            store.write_mask(group, "labels", result.labels)
        for roi, crop in result.crops.items():
            group.create_dataset(f"crops/{roi}", data=crop.astype(np.float16))

    return write


def _journaled_portal_vein(group: h5py.Group) -> PortalVein:
    """The portal vein measurements a journal record holds (none measured where it holds none)."""
    if "portal_vein" not in group:
        return PortalVein()
    diameter, length, volume, extrahepatic = map(float, group["portal_vein"][()])
    return PortalVein(diameter, length, volume, extrahepatic)


def _journaled_scan(patient_id: str, group: h5py.Group) -> ScanResult:
    """A scan's result as a journal record holds it (labels and crops stay in the journal)."""
    flags = str(group.attrs["flags"])
    portal_vein = _journaled_portal_vein(group)
    measured = group["biomarkers"][()] if "biomarkers" in group else np.full(len(biomarkers.NAMES), np.nan, np.float32)
    described = group["acquisition"][()] if "acquisition" in group else np.full(len(acquisition.FIELDS), np.nan, np.float32)
    return ScanResult(
        patient_id,
        str(group.attrs["status"]),
        str(group.attrs["reason"]),
        volumes=group["volumes"][()],
        flags=flags.split(";") if flags else [],
        dice=group["dice"][()],
        portal_vein=portal_vein,
        biomarkers=measured,
        acquisition=described,
    )


def _fitted_attrs(backend: Backend) -> dict[str, str]:
    """segment_fitted_on / segment_fitted_labeled of a semi model (JSON lists, or 'unknown'); none for other backends."""
    if backend.name != "semi":
        return {}
    fitted_on, labeled = semi.model_fitted_on(Path(backend.model_path))
    return {"segment_fitted_on": fitted_attr(fitted_on), "segment_fitted_labeled": fitted_attr(labeled)}


def _write_segment_store(
    h5: h5py.File, journal: h5py.File, record_names: list[str], results: list[ScanResult], cohort: pd.DataFrame, backend: Backend
) -> None:
    """Fill a new segment store from the journal's records, one scan at a time."""
    crops = {roi: store.create_crops(h5, roi, len(record_names), CROP_SHAPE) for roi in store.ROI_LABELS}
    for index, (name, result) in enumerate(zip(record_names, results)):
        record = journal["records"][name]
        if "labels" in record:
            h5.copy(record["labels"], f"segment/masks/{result.patient_id}")
        for roi in record.get("crops", {}):
            crops[roi][index] = record[f"crops/{roi}"][()]
    model_sha = outputs.file_sha256(backend.model_path) if backend.model_path else ""
    series = cohort["series_uid"].fillna("").tolist() if "series_uid" in cohort.columns else [""] * len(cohort)
    store.write_segment_info(h5, backend.name, backend.settings(), cohort["ct"].tolist(), series, model_sha, backend.model_path)
    fitted = _fitted_attrs(backend)
    h5["segment"].attrs.update({key.removeprefix("segment_"): value for key, value in fitted.items()})
    store.write_volumes(h5, np.stack([r.volumes for r in results]), list(store.ROI_LABELS))
    store.write_dice(h5, np.stack([r.dice for r in results]), list(store.ROI_LABELS))
    store.write_named_table(
        h5, store.PORTAL_VEIN, np.stack([r.portal_vein.as_array() for r in results]), list(PORTAL_VEIN_FIELDS)
    )
    store.write_named_table(h5, store.ACQUISITION, np.stack([r.acquisition for r in results]), list(acquisition.FIELDS))
    provenance = {
        "segment_backend": backend.name,
        "segment_model_path": backend.model_path,
        "segment_model_sha256": model_sha,
        **fitted,
    }
    store.write_features(
        h5,
        "biomarkers",
        store.FeatureBlock(
            np.stack([r.biomarkers for r in results]),
            list(biomarkers.NAMES),
            biomarkers.groups(),
            {"extractor": biomarkers.EXTRACTOR, "version": biomarkers.VERSION, **provenance},
            [r.input_sha256 for r in results],
        ),
    )
    store.write_qc(
        h5,
        [r.status for r in results],
        [r.reason for r in results],
        flags=[";".join(r.flags) for r in results],
        backend=backend.name,
    )


@dataclass(frozen=True)
class SegmentOptions:
    """How `segment` runs: the backend (for semi, the file to train on or the model to use), where the scans are
    processed (local processes or a Dask cluster), whether a failed scan stops the run, whether to resume."""

    backend: str = "classic"
    workers: int = 1
    strict: bool = False
    fit_csv: Path | None = None
    fit_ids: Path | None = None
    model_path: Path | None = None
    device: str = "auto"
    semi: semi.SemiSettings = field(default_factory=semi.SemiSettings)
    resume: bool = False
    scheduler: str | None = None


@writes_output("store")
def run_segment(
    cohort_csv: Path,
    out: Path,
    options: SegmentOptions = SegmentOptions(),
    progress: Callable[[ScanResult], None] | None = None,
    fit_progress: Callable[[int, float, float], None] | None = None,
) -> list[ScanResult]:
    """Segment every CT of a cohort and write seg.h5 (masks, crops, volumes, QC, Dice), on `options.workers`
    local processes or on the Dask cluster at `options.scheduler`.

    Each finished scan goes to the journal `<out>.partial` first; with `options.resume`, scans an interrupted
    run finished with the same backend settings and the same input files are taken from it.
    """
    cohort = read_cohort(cohort_csv)
    backend = prepare_backend(
        options.backend,
        cohort,
        out,
        options.fit_csv,
        options.model_path,
        options.device,
        options.semi,
        fit_progress,
        options.fit_ids,
        str(cohort_csv),
    )
    workers = 1 if backend.name in ("semi", "totalseg") and backend.device == "cuda" else options.workers
    settings_sha = outputs.inputs_sha256([backend.settings()], [backend.model_path] if backend.model_path else [])
    rows = [row for _, row in cohort.iterrows()]
    with patient_journal(out, settings_sha, options.resume) as journal:
        done = finished(journal)
        reused = {}
        if done:
            digests = ((row["patient_id"], cohort_row_digest(row)) for row in rows)
            reused = {pid: done[(pid, digest)] for pid, digest in digests if (pid, digest) in done}
        fresh = iter(
            map_ordered(
                _segment_one, [(row, backend) for row in rows if row["patient_id"] not in reused], workers, options.scheduler
            )
        )
        record_names, results = [], []
        for row in rows:
            if row["patient_id"] in reused:
                record_names.append(reused[row["patient_id"]])
            else:
                result = next(fresh)
                if options.strict and result.status != "ok":
                    kept = f" ({len(journal['records'])} finished scans kept for --resume)" if len(journal["records"]) else ""
                    raise InputError(f"{cohort_csv}: patient {result.patient_id}: {result.reason}{kept}")
                record_names.append(append(journal, result.patient_id, result.input_sha256, _journal_scan(result)))
            results.append(_journaled_scan(row["patient_id"], journal["records"][record_names[-1]]))
            if progress:
                progress(results[-1])
        if results and all(result.status != "ok" for result in results):
            forget(journal)
            raise InputError(f"{cohort_csv}: no scan could be segmented (patient {results[0].patient_id}: {results[0].reason})")
        with store.create_store(out, cohort["patient_id"].tolist(), cohort["center"].tolist()) as h5:
            _write_segment_store(h5, journal, record_names, results, cohort, backend)
    return results
