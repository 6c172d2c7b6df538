"""--resume for radiomics: features already computed with the same settings and inputs, from the journal of an
interrupted run (tipsprog.resume) or from the finished output store."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from tipsprog import store
from tipsprog.errors import InputError
from tipsprog.radiomics.extract import PatientFeatures
from tipsprog.resume import finished


def journal_writer(record: PatientFeatures) -> Callable[[h5py.Group], None]:
    """Writer of one patient's features into a journal record."""
    def write(group: h5py.Group) -> None:
        group.attrs.update(status=record.status, reason=record.reason)
        group.create_dataset("names", data=np.array(list(record.values), dtype=object), dtype=store.STRING)
        group.create_dataset("values", data=np.array(list(record.values.values()), dtype=np.float64))
    return write


def _journal_record(group: h5py.Group) -> PatientFeatures:
    """One patient as `journal_writer` wrote it."""
    values = dict(zip(store.read_strings(group, "names"), group["values"][()].tolist()))
    return PatientFeatures(str(group.attrs["patient_id"]), values, str(group.attrs["status"]),
                           str(group.attrs["reason"]), str(group.attrs["input_sha256"]))


def _from_store(path: Path, settings_sha256: str) -> list[PatientFeatures]:
    """Records of a finished output store with the same settings (none if it has other settings)."""
    if not path.is_file():
        return []
    with store.open_store(path) as previous:
        block = store.read_features(previous).get("radiomics")
        if block is None:
            raise InputError(f"{path}: --resume: not a radiomics store (no /features/radiomics)")
        if block.attrs.get("settings_sha256") != settings_sha256 or not block.input_sha256:
            return []
        status, reasons = store.read_qc(previous)
        ids = store.read_patients(previous)
    return [PatientFeatures(pid, {n: float(v) for n, v in zip(block.names, row) if np.isfinite(v)}, s, r, digest)
            for pid, row, s, r, digest in zip(ids, block.values, status, reasons, block.input_sha256)]


def reusable(out: Path, settings_sha256: str, journal: h5py.File) -> dict[tuple[str, str], PatientFeatures]:
    """Successful records keyed by (patient ID, input digest), from the store and then the newer journal."""
    records = _from_store(out, settings_sha256) + [_journal_record(group) for group in finished(journal).values()]
    return {(r.patient_id, r.input_sha256): r for r in records if r.status == "ok"}
