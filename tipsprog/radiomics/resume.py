"""--resume: features already computed with the same settings, from the output store and from the journal.

While a run goes on, every finished patient is appended to `<out>.partial` (HDF5), so an interrupted run loses
at most the patients in flight. The output store itself is only ever written whole, by atomic rename.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from tipsprog import store
from tipsprog.errors import InputError
from tipsprog.radiomics.extract import PatientFeatures


def journal_path(out: Path) -> Path:
    """Where a run keeps the patients it has finished until the store is written."""
    return out.with_name(out.name + ".partial")


def open_journal(path: Path, settings_sha256: str) -> h5py.File:
    """A fresh journal for this run's settings."""
    journal = h5py.File(path, "w")
    journal.attrs["settings_sha256"] = settings_sha256
    return journal


def append(journal: h5py.File, record: PatientFeatures) -> None:
    """Add one finished patient and flush it to disk."""
    group = journal.require_group("records").create_group(str(len(journal["records"])))
    group.attrs.update({"patient_id": record.patient_id, "status": record.status, "reason": record.reason,
                        "input_sha256": record.input_sha256})
    group.create_dataset("names", data=np.array(list(record.values), dtype=object), dtype=store.STRING)
    group.create_dataset("values", data=np.array(list(record.values.values()), dtype=np.float64))
    journal.flush()


def _journal_record(group: h5py.Group) -> PatientFeatures:
    """One patient as `append` wrote it."""
    values = dict(zip(store.read_strings(group, "names"), group["values"][()].tolist()))
    return PatientFeatures(str(group.attrs["patient_id"]), values, str(group.attrs["status"]),
                           str(group.attrs["reason"]), str(group.attrs["input_sha256"]))


def _from_journal(path: Path, settings_sha256: str) -> list[PatientFeatures]:
    """Records of an interrupted run with the same settings (none if the journal is absent or unreadable)."""
    try:
        with h5py.File(path, "r") as journal:
            if journal.attrs.get("settings_sha256") != settings_sha256:
                return []
            return [_journal_record(group) for group in journal.get("records", {}).values()]
    except (OSError, KeyError):
        return []


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


def reusable(out: Path, settings_sha256: str) -> dict[tuple[str, str], PatientFeatures]:
    """Successful records keyed by (patient ID, input digest), from the store and then the newer journal."""
    records = _from_store(out, settings_sha256) + _from_journal(journal_path(out), settings_sha256)
    return {(r.patient_id, r.input_sha256): r for r in records if r.status == "ok"}
