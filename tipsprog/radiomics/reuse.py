"""The radiomics journal: each patient's features as a record of tipsprog.journal's per-scan journal, the features block
built from it one record at a time, and --resume's reuse of the records of an interrupted run or a finished store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np

from tipsprog import store
from tipsprog.errors import InputError
from tipsprog.journal import append, finished
from tipsprog.radiomics.extract import PatientFeatures


def journal_writer(record: PatientFeatures) -> Callable[[h5py.Group], None]:
    """Writer of one patient's features into a journal record."""

    def write(group: h5py.Group) -> None:
        group.attrs.update(status=record.status, reason=record.reason)
        group.create_dataset("names", data=np.array(list(record.values), dtype=object), dtype=store.STRING)
        group.create_dataset("values", data=np.array(list(record.values.values()), dtype=np.float64))

    return write


def feature_matrix(journal: h5py.File, record_names: list[str]) -> tuple[np.ndarray, list[str]]:
    """The records' features as one matrix (NaN where a patient lacks a feature) and the feature names, read
    record by record."""
    records = journal["records"]
    names = list(dict.fromkeys(name for record in record_names for name in store.read_strings(records[record], "names")))
    column = {name: index for index, name in enumerate(names)}
    values = np.full((len(record_names), len(names)), np.nan)
    for row, record in enumerate(record_names):
        columns = [column[name] for name in store.read_strings(records[record], "names")]
        values[row, columns] = records[record]["values"][()]
    return values, names


def _from_store(path: Path, settings_sha256: str) -> Iterator[PatientFeatures]:
    """Records of a finished output store with the same settings (none if it has other settings)."""
    if not path.is_file():
        return
    with store.open_store(path) as previous:
        block = store.read_features(previous).get("radiomics")
        if block is None:
            raise InputError(f"{path}: --resume: not a radiomics store (no /features/radiomics)")
        if block.attrs.get("settings_sha256") != settings_sha256 or not block.input_sha256:
            return
        status, reasons = store.read_qc(previous)
        ids = store.read_patients(previous)
    for pid, row, s, r, digest in zip(ids, block.values, status, reasons, block.input_sha256):
        yield PatientFeatures(pid, {n: float(v) for n, v in zip(block.names, row) if np.isfinite(v)}, s, r, digest)


def reusable(out: Path, settings_sha256: str, journal: h5py.File) -> dict[tuple[str, str], str]:
    """Journal records of successful patients keyed by (patient ID, input digest); the finished store's records
    with the same settings that the journal lacks are added to it first."""
    records = finished(journal)
    for record in _from_store(out, settings_sha256):
        if (record.patient_id, record.input_sha256) not in records:
            records[(record.patient_id, record.input_sha256)] = append(
                journal, record.patient_id, record.input_sha256, journal_writer(record)
            )
    return {key: name for key, name in records.items() if journal["records"][name].attrs["status"] == "ok"}
