"""radiomics stage: pyradiomics features per ROI with granularity tags, patients in parallel, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from tipsprog import store
from tipsprog.store import writes_output
from tipsprog.errors import InputError
from tipsprog.parallel import map_ordered
from tipsprog.radiomics import resume
from tipsprog.radiomics.extract import PatientFeatures, PatientJob, extract_patient, feature_group, input_digest
from tipsprog.radiomics.params import load_params, settings_hash


def to_block(records: list[PatientFeatures], params: dict, provenance: dict[str, str]) -> store.FeatureBlock:
    """Assemble per-patient records into a feature matrix (NaN where a feature is missing)."""
    names = list(dict.fromkeys(name for record in records for name in record.values))
    values = np.array([[record.values.get(name, np.nan) for name in names] for record in records], dtype=np.float64)
    groups = [feature_group(*name.split("/", 1)) for name in names]
    attrs = {"extractor": "pyradiomics", "settings": yaml.safe_dump(params, sort_keys=True),
             "settings_sha256": settings_hash(params), **provenance}
    return store.FeatureBlock(values.reshape(len(records), len(names)), names, groups, attrs,
                              [record.input_sha256 for record in records])


def _jobs(seg_path: Path, params: dict) -> tuple[list[PatientJob], list[str], dict[str, str]]:
    """One job per patient of a segment store, its centers, and the segmentation's provenance."""
    with store.open_store(seg_path) as seg:
        if "segment/ct_paths" not in seg:
            raise InputError(f"{seg_path}: not a segment store (no /segment)")
        ids, centers = store.read_patients(seg), store.read_centers(seg)
        ct_paths, provenance = store.read_ct_paths(seg), store.segment_provenance(seg)
        masks = seg["segment/masks"]
        labels = [store.read_mask(seg, pid) if pid in masks else None for pid in ids]
    jobs = [PatientJob(pid, path, mask, params, input_digest(path, mask)) for pid, path, mask in zip(ids, ct_paths, labels)]
    return jobs, centers, provenance


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
    jobs, centers, provenance = _jobs(seg_path, params)
    done = resume.reusable(out, sha) if resume_previous else {}
    reused = {job.patient_id: done[(job.patient_id, job.input_sha256)] for job in jobs
              if (job.patient_id, job.input_sha256) in done}
    fresh = iter(map_ordered(extract_patient, [job for job in jobs if job.patient_id not in reused], workers, scheduler))
    journal_file = resume.journal_path(out)
    records = []
    with resume.open_journal(journal_file, sha) as journal:
        for job in jobs:
            record = reused.get(job.patient_id) or next(fresh)
            if job.patient_id not in reused:
                resume.append(journal, record)
            records.append(record)
            if progress:
                progress(record)
    with store.create_store(out, [job.patient_id for job in jobs], centers) as h5:
        store.write_features(h5, "radiomics", to_block(records, params, provenance))
        store.write_qc(h5, [r.status for r in records], [r.reason for r in records])
    journal_file.unlink()
    return records
