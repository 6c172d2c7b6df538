"""radiomics stage: pyradiomics features per ROI with granularity tags, patients in parallel, resumable."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import SimpleITK as sitk
import yaml

from tipsprog import store
from tipsprog.store import writes_output
from tipsprog.errors import InputError
from tipsprog.parallel import map_ordered
from tipsprog.radiomics import resume
from tipsprog.radiomics.extract import PatientFeatures, PatientJob, extract_patient, feature_group, input_digest
from tipsprog.radiomics.params import load_params, settings_hash
from tipsprog.resume import append, patient_journal


def to_block(records: list[PatientFeatures], params: dict, provenance: dict[str, str]) -> store.FeatureBlock:
    """Assemble per-patient records into a feature matrix (NaN where a feature is missing)."""
    names = list(dict.fromkeys(name for record in records for name in record.values))
    values = np.array([[record.values.get(name, np.nan) for name in names] for record in records], dtype=np.float64)
    groups = [feature_group(*name.split("/", 1)) for name in names]
    attrs = {"extractor": "pyradiomics", "settings": yaml.safe_dump(params, sort_keys=True),
             "settings_sha256": settings_hash(params), **provenance}
    return store.FeatureBlock(values.reshape(len(records), len(names)), names, groups, attrs,
                              [record.input_sha256 for record in records])


@dataclass
class SegmentedCohort:
    """The segment store's patients, centers, CT paths and segmentation provenance; label images stay in the store."""

    seg_path: Path
    patient_ids: list[str]
    centers: list[str]
    ct_paths: list[str]
    provenance: dict[str, str]

    def inputs(self) -> Iterator[tuple[str, str, sitk.Image | None]]:
        """Each patient's ID, CT path and label image, read one at a time (memory stays flat)."""
        with store.open_store(self.seg_path) as seg:
            masks = seg["segment/masks"]
            for pid, path in zip(self.patient_ids, self.ct_paths):
                yield pid, path, store.patient_mask(seg, pid) if pid in masks else None

    def reusable(self, done: dict) -> dict[str, PatientFeatures]:
        """Records of an earlier run (keyed by patient and input digest) that still match this store's inputs."""
        if not done:
            return {}
        digests = ((pid, input_digest(path, mask)) for pid, path, mask in self.inputs())
        return {pid: done[(pid, digest)] for pid, digest in digests if (pid, digest) in done}

    def jobs(self, params: dict, skip: set[str]) -> Iterator[PatientJob]:
        """One job per patient not in `skip`, its label image read only when the job is due."""
        for pid, path, mask in self.inputs():
            if pid not in skip:
                yield PatientJob(pid, path, mask, params, input_digest(path, mask))


def _cohort(seg_path: Path) -> SegmentedCohort:
    """Read a segment store's patient list, CT paths and provenance."""
    with store.open_store(seg_path) as seg:
        if "segment/ct_paths" not in seg:
            raise InputError(f"{seg_path}: not a segment store (no /segment)")
        return SegmentedCohort(seg_path, store.read_patients(seg), store.read_centers(seg), store.read_ct_paths(seg),
                               store.segment_provenance(seg))


@writes_output
def run_radiomics(seg_path: Path, out: Path, params_name: str = "fast", workers: int = 1,
                  progress: Callable[[PatientFeatures], None] | None = None, scheduler: str | None = None,
                  resume_previous: bool = False) -> list[PatientFeatures]:
    """Extract radiomics for every patient of a segment store and write radiomics.h5.

    Patients run on `workers` local processes, or on a Dask cluster when `scheduler` is an address; output
    order is the store's patient order either way. With `resume_previous`, patients whose features are in
    the output store or the journal of an interrupted run, with the same settings and inputs, are reused.
    """
    params = load_params(params_name)
    sha = settings_hash(params)
    cohort = _cohort(seg_path)
    with patient_journal(out, sha, resume_previous) as journal:
        reused = cohort.reusable(resume.reusable(out, sha, journal) if resume_previous else {})
        fresh = iter(map_ordered(extract_patient, cohort.jobs(params, set(reused)), workers, scheduler))
        records = []
        for pid in cohort.patient_ids:
            record = reused.get(pid) or next(fresh)
            if pid not in reused:
                append(journal, record.patient_id, record.input_sha256, resume.journal_writer(record))
            records.append(record)
            if progress:
                progress(record)
        with store.create_store(out, cohort.patient_ids, cohort.centers) as h5:
            store.write_features(h5, "radiomics", to_block(records, params, cohort.provenance))
            store.write_qc(h5, [r.status for r in records], [r.reason for r in records])
    return records
