"""radiomics stage: pyradiomics features per ROI with granularity tags, patients in parallel, resumable."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import SimpleITK as sitk
import yaml

from tipsprog import store
from tipsprog.errors import InputError
from tipsprog.journal import append, forget, patient_journal
from tipsprog.manifest import BlockEntry
from tipsprog.outputs import writes_output
from tipsprog.parallel import map_ordered
from tipsprog.radiomics import reuse
from tipsprog.radiomics.extract import PatientJob, extract_from_file, extract_patient, extraction_inputs_digest, feature_group
from tipsprog.radiomics.params import load_params, settings_hash


@dataclass(frozen=True)
class PatientStatus:
    """Whether a patient's features were extracted, and why not."""

    patient_id: str
    status: str
    reason: str


def features_block(journal: h5py.File, record_names: list[str], params: dict, provenance: dict[str, str]) -> store.FeatureBlock:
    """The radiomics block of the journal records, in the given order."""
    values, names = reuse.feature_matrix(journal, record_names)
    groups = [feature_group(*name.split("/", 1)) for name in names]
    attrs = {
        "extractor": "pyradiomics",
        "settings": yaml.safe_dump(params, sort_keys=True),
        "settings_sha256": settings_hash(params),
        **provenance,
    }
    return store.FeatureBlock(
        values, names, groups, attrs, [str(journal["records"][name].attrs["input_sha256"]) for name in record_names]
    )


@dataclass
class SegmentedCohort:
    """The segment store's patients, centers, CT paths and segmentation provenance; label images stay in the store."""

    seg_path: Path
    patient_ids: list[str]
    centers: list[str]
    ct_paths: list[str]
    series_uids: list[str | None]
    provenance: dict[str, str]

    def inputs(self) -> Iterator[tuple[str, str, str | None, sitk.Image | None]]:
        """Each patient's ID, CT path, DICOM series and label image, read one at a time (memory stays flat)."""
        with store.open_store(self.seg_path) as seg:
            masks = seg["segment/masks"]
            for pid, path, series in zip(self.patient_ids, self.ct_paths, self.series_uids):
                yield pid, path, series, store.patient_mask(seg, pid) if pid in masks else None

    def reusable(self, done: dict[tuple[str, str], str]) -> dict[str, str]:
        """Journal records of an earlier run (keyed by patient and input digest) that still match this store's inputs."""
        if not done:
            return {}
        digests = ((pid, extraction_inputs_digest(path, series, mask)) for pid, path, series, mask in self.inputs())
        return {pid: done[(pid, digest)] for pid, digest in digests if (pid, digest) in done}

    def jobs(self, params: dict, skip: set[str]) -> Iterator[PatientJob]:
        """One job per patient not in `skip`, its label image read only when the job is due."""
        for pid, path, series, mask in self.inputs():
            if pid not in skip:
                yield PatientJob(pid, path, series, mask, params, extraction_inputs_digest(path, series, mask))


def _cohort(seg_path: Path) -> SegmentedCohort:
    """Read a segment store's patient list, CT paths and provenance."""
    with store.open_store(seg_path) as seg:
        if "segment/ct_paths" not in seg:
            raise InputError(f"{seg_path}: not a segment store (no /segment)")
        return SegmentedCohort(
            seg_path,
            store.read_patients(seg),
            store.read_centers(seg),
            store.read_ct_paths(seg),
            store.read_series_uids(seg),
            store.segment_provenance(seg),
        )


@dataclass(frozen=True)
class RadiomicsOptions:
    """How `radiomics` runs: the parameters (a preset name or a YAML file), local workers or a Dask scheduler, and
    whether to resume."""

    params: str = "fast"
    workers: int = 1
    scheduler: str | None = None
    resume: bool = False


@writes_output("store")
def run_radiomics(
    seg_path: Path,
    out: Path,
    options: RadiomicsOptions = RadiomicsOptions(),
    progress: Callable[[PatientStatus], None] | None = None,
) -> list[PatientStatus]:
    """Extract radiomics for every patient of a segment store and write radiomics.h5.

    Patients run on `options.workers` local processes, or on a Dask cluster when `options.scheduler` is an address;
    output order is the store's patient order either way. Each patient's features go to the journal `<out>.partial`
    as they come, and the store is built from it, so memory does not grow with the cohort. With `options.resume`,
    patients whose features are in the output store or the journal of an interrupted run, with the same settings
    and inputs, are reused.
    """
    params = load_params(options.params)
    sha = settings_hash(params)
    cohort = _cohort(seg_path)
    with patient_journal(out, sha, options.resume) as journal:
        reused = cohort.reusable(reuse.reusable(out, sha, journal) if options.resume else {})
        fresh = iter(map_ordered(extract_patient, cohort.jobs(params, set(reused)), options.workers, options.scheduler))
        record_names, statuses = [], []
        for pid in cohort.patient_ids:
            if pid in reused:
                record_names.append(reused[pid])
            else:
                record = next(fresh)
                record_names.append(append(journal, record.patient_id, record.input_sha256, reuse.journal_writer(record)))
            attrs = journal["records"][record_names[-1]].attrs
            statuses.append(PatientStatus(pid, str(attrs["status"]), str(attrs["reason"])))
            if progress:
                progress(statuses[-1])
        if statuses and all(status.status != "ok" for status in statuses):
            forget(journal)
            raise InputError(
                f"{seg_path}: no patient's features could be extracted (patient {statuses[0].patient_id}: {statuses[0].reason})"
            )
        with store.create_store(out, cohort.patient_ids, cohort.centers) as h5:
            store.write_features(h5, "radiomics", features_block(journal, record_names, params, cohort.provenance))
            store.write_qc(h5, [s.status for s in statuses], [s.reason for s in statuses])
    return statuses


def manifest_entry(block: store.FeatureBlock) -> dict:
    """What a bundle records to extract this block from a new scan: pyradiomics' parameters."""
    return {"params": yaml.safe_load(block.attrs["settings"])}


def replay(entry: BlockEntry, ct_path: str, labels: sitk.Image, series_uid: str | None) -> np.ndarray:
    """A new scan's features in the bundle's order (NaN for one pyradiomics did not return)."""
    values, _ = extract_from_file(ct_path, labels, entry.params or {}, series_uid)
    return np.array([values.get(feature, np.nan) for feature in entry.names], dtype=float)
