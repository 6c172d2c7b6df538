"""The HDF5 feature store (DESIGN §3): the only module that reads or writes its layout."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import h5py
import numpy as np
import SimpleITK as sitk

from tipsprog import __version__
from tipsprog.errors import InputError
from tipsprog.outputs import atomic_output

SCHEMA_VERSION = 1
ROI_LABELS = {"liver": 1, "spleen": 2, "portal_vein": 3}
STRING = h5py.string_dtype("utf-8")
PORTAL_VEIN, ACQUISITION = "segment/portal_vein", "segment/acquisition"  # per-patient named tables


@dataclass
class FeatureBlock:
    """One extractor's feature matrix with names, granularity tags, settings and per-patient input digests."""

    values: np.ndarray
    names: list[str]
    groups: list[str]
    attrs: dict[str, str] = field(default_factory=dict)
    input_sha256: list[str] = field(default_factory=list)


@contextmanager
def create_store(path: str | Path, patient_ids: list[str], centers: list[str]) -> Iterator[h5py.File]:
    """Create a store atomically with its root attributes, patient IDs and centers."""
    with atomic_output(path, "store") as tmp, h5py.File(tmp, "w") as store:
        store.attrs.update(
            schema_version=SCHEMA_VERSION,
            tipsprog_version=__version__,
            created_utc=datetime.now(UTC).isoformat(timespec="seconds"),
            command=" ".join(["tipsprog", *sys.argv[1:]]),
        )
        store.create_dataset("patients", data=np.array(patient_ids, dtype=object), dtype=STRING)
        store.create_dataset("centers", data=np.array(centers, dtype=object), dtype=STRING)
        yield store


def write_qc(store: h5py.File, status: list[str], reasons: list[str], flags: list[str] | None = None, backend: str = "") -> None:
    """Write per-patient ok|failed status and reason; segment also writes QC flags and its backend."""
    store.create_dataset("qc/status", data=np.array(status, dtype=object), dtype=STRING)
    store.create_dataset("qc/reason", data=np.array(reasons, dtype=object), dtype=STRING)
    if flags is not None:
        store.create_dataset("qc/flags", data=np.array(flags, dtype=object), dtype=STRING)
        store.create_dataset("qc/backend", data=np.array([backend] * len(flags), dtype=object), dtype=STRING)


def write_segment_info(
    store: h5py.File,
    backend: str,
    settings: str,
    ct_paths: list[str],
    series_uids: list[str],
    model_sha256: str = "",
    model_path: str = "",
) -> None:
    """Write the /segment attributes (backend, settings, model), the CT path of every patient and the DICOM series
    chosen in it ('' where none was)."""
    group = store.require_group("segment")
    group.attrs.update(backend=backend, settings=settings, model_sha256=model_sha256, model_path=model_path)
    group.create_dataset("ct_paths", data=np.array(ct_paths, dtype=object), dtype=STRING)
    group.create_dataset("series_uids", data=np.array(series_uids, dtype=object), dtype=STRING)


def write_mask(group: h5py.Group, key: str, mask: sitk.Image) -> None:
    """Write a uint8 label volume with its geometry at `key` under `group` (a store's /segment/masks/<patient>)."""
    data = sitk.GetArrayFromImage(mask).astype(np.uint8)
    dataset = group.create_dataset(
        key, data=data, compression="gzip", compression_opts=4, chunks=tuple(min(64, s) for s in data.shape)
    )
    dataset.attrs.update(spacing=mask.GetSpacing(), origin=mask.GetOrigin(), direction=mask.GetDirection())


def create_crops(store: h5py.File, roi: str, count: int, shape: tuple[int, int, int]) -> h5py.Dataset:
    """Create the float16 [N, 2, D, H, W] ROI crop dataset (CT channel, mask channel), filled row by row."""
    return store.create_dataset(
        f"segment/crops/{roi}", shape=(count, 2, *shape), dtype=np.float16, compression="gzip", chunks=(1, 2, *shape), fillvalue=0
    )


def write_volumes(store: h5py.File, volumes: np.ndarray, roi_names: list[str]) -> None:
    """Write ROI volumes in mL."""
    dataset = store.create_dataset("segment/volumes", data=volumes.astype(np.float32))
    dataset.attrs["names"] = roi_names


def write_dice(store: h5py.File, dice: np.ndarray, roi_names: list[str]) -> None:
    """Write Dice per ROI against the cohort's reference masks (NaN where none)."""
    dataset = store.create_dataset("segment/dice", data=dice.astype(np.float32))
    dataset.attrs["names"] = roi_names


def write_named_table(store: h5py.File, key: str, values: np.ndarray, names: list[str]) -> None:
    """Write a per-patient table (PORTAL_VEIN, ACQUISITION): one row per patient, one named column each (NaN: not
    measured)."""
    dataset = store.create_dataset(key, data=values.astype(np.float32))
    dataset.attrs["names"] = names


def read_named_table(store: h5py.File, key: str) -> dict[str, np.ndarray]:
    """A table written by write_named_table by column name, one value per patient (none in a store written before
    the table was)."""
    if key not in store:
        return {}
    dataset = store[key]
    return {str(name): dataset[:, column] for column, name in enumerate(dataset.attrs["names"])}


def read_roi_table(store: h5py.File, key: str) -> tuple[np.ndarray, list[str]]:
    """Read a per-patient per-ROI table (/segment/volumes or /segment/dice) and its ROI names."""
    dataset = store[key]
    return dataset[()], [str(n) for n in dataset.attrs["names"]]


def read_ct_paths(store: h5py.File) -> list[str]:
    """CT path of every patient, as segment recorded it."""
    return read_strings(store, "segment/ct_paths")


def read_series_uids(store: h5py.File) -> list[str | None]:
    """The DICOM series segment read in each patient's CT folder (None: the folder's only series, or a file)."""
    if "segment/series_uids" not in store:
        return [None] * len(read_patients(store))
    return [uid or None for uid in read_strings(store, "segment/series_uids")]


def segment_provenance(store: h5py.File) -> dict[str, str]:
    """Which backend and model produced a segment store, and a semi model's fitted-on patients (carried into feature
    blocks and bundles)."""
    attrs = store["segment"].attrs
    provenance = {
        "segment_backend": str(attrs["backend"]),
        "segment_model_path": str(attrs.get("model_path", "")),
        "segment_model_sha256": str(attrs.get("model_sha256", "")),
    }
    provenance.update({f"segment_{key}": str(attrs[key]) for key in ("fitted_on", "fitted_labeled") if key in attrs})
    return provenance


def read_crops(store: h5py.File, roi: str) -> np.ndarray:
    """The float16 [N, 2, D, H, W] crops of one ROI."""
    return store[f"segment/crops/{roi}"][()]


def write_features(store: h5py.File, name: str, block: FeatureBlock) -> None:
    """Write one extractor's feature matrix under /features/<name>."""
    group = store.create_group(f"features/{name}")
    group.create_dataset("values", data=block.values.astype(np.float32))
    group.create_dataset("names", data=np.array(block.names, dtype=object), dtype=STRING)
    group.create_dataset("groups", data=np.array(block.groups, dtype=object), dtype=STRING)
    if block.input_sha256:
        group.create_dataset("input_sha256", data=np.array(block.input_sha256, dtype=object), dtype=STRING)
    group.attrs.update(block.attrs)


def open_store(path: str | Path) -> h5py.File:
    """Open a store read-only after checking that it is one and of this schema version."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: store not found")
    try:
        store = h5py.File(path, "r")
    except OSError:
        raise InputError(f"{path}: not an HDF5 file") from None
    version = store.attrs.get("schema_version")
    if version is None or "patients" not in store:
        store.close()
        raise InputError(f"{path}: not a tipsprog store (no schema_version or /patients)")
    if int(version) != SCHEMA_VERSION:
        store.close()
        raise InputError(f"{path}: store schema_version {int(version)}, this tipsprog reads {SCHEMA_VERSION}")
    return store


def read_strings(store: h5py.File, key: str) -> list[str]:
    """Read a utf-8 string dataset as a list of str."""
    return [v.decode() if isinstance(v, bytes) else str(v) for v in store[key][()]]


def read_patients(store: h5py.File) -> list[str]:
    """Patient IDs in row order."""
    return read_strings(store, "patients")


def read_centers(store: h5py.File) -> list[str]:
    """Center of each patient in row order."""
    return read_strings(store, "centers")


def read_qc(store: h5py.File) -> tuple[list[str], list[str]]:
    """Per-patient status and reason."""
    return read_strings(store, "qc/status"), read_strings(store, "qc/reason")


def mask_image(dataset: h5py.Dataset) -> sitk.Image:
    """A label volume written by write_mask, as a SimpleITK image with its geometry."""
    mask = sitk.GetImageFromArray(dataset[()])
    mask.SetSpacing(tuple(float(v) for v in dataset.attrs["spacing"]))
    mask.SetOrigin(tuple(float(v) for v in dataset.attrs["origin"]))
    mask.SetDirection(tuple(float(v) for v in dataset.attrs["direction"]))
    return mask


def patient_mask(store: h5py.File, patient_id: str) -> sitk.Image:
    """One patient's label volume from a segment store."""
    return mask_image(store[f"segment/masks/{patient_id}"])


def read_features(store: h5py.File) -> dict[str, FeatureBlock]:
    """Every /features/<name> block of a store."""
    blocks = {}
    for name, group in store.get("features", {}).items():
        blocks[name] = FeatureBlock(
            values=group["values"][()].astype(np.float32),
            names=read_strings(group, "names"),
            groups=read_strings(group, "groups"),
            attrs={k: str(v) for k, v in group.attrs.items()},
            input_sha256=read_strings(group, "input_sha256") if "input_sha256" in group else [],
        )
    return blocks


def write_columns(store: h5py.File, group: str, columns: dict[str, np.ndarray]) -> None:
    """Write float columns under /<group>/<name>, one row per patient (a 2-D column has one entry per repeat)."""
    for name, values in columns.items():
        store.create_dataset(f"{group}/{name}", data=np.asarray(values, dtype=np.float64))


def read_columns(store: h5py.File, group: str) -> dict[str, np.ndarray]:
    """Read a per-patient table written by write_columns."""
    return {name: dataset[()] for name, dataset in store.get(group, {}).items()}


def write_baselines(store: h5py.File, row: str, baselines: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Per-fold Breslow baselines (event times, cumulative hazard) of one prediction row."""
    for fold, (times, cumhaz) in enumerate(baselines):
        store.create_dataset(f"baselines/{row}/{fold}/times", data=np.asarray(times, dtype=np.float64))
        store.create_dataset(f"baselines/{row}/{fold}/cumhaz", data=np.asarray(cumhaz, dtype=np.float64))


def read_baselines(store: h5py.File, row: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-fold baselines of one prediction row, in fold order."""
    group = store.get(f"baselines/{row}", {})
    return [(group[str(fold)]["times"][()], group[str(fold)]["cumhaz"][()]) for fold in range(len(group))]


@dataclass
class JoinedFeatures:
    """Feature blocks of several stores joined on patient ID."""

    patient_ids: list[str]
    centers: list[str]
    blocks: dict[str, FeatureBlock]
    unmatched: dict[str, list[str]]
    acquisition: dict[str, np.ndarray] = field(default_factory=dict)  # of the segment store, by descriptor


def join_features(paths: Sequence[str | Path]) -> JoinedFeatures:
    """Join the feature blocks of several stores on patient ID (IDs missing anywhere are reported)."""
    per_store = []
    acquisition_of: dict[str, dict[str, float]] = {}
    for path in paths:
        with open_store(path) as store:
            ids, centers = read_patients(store), read_centers(store)
            per_store.append((str(path), ids, dict(zip(ids, centers)), read_features(store)))
            acquisition_of = acquisition_of or {
                name: dict(zip(ids, values)) for name, values in read_named_table(store, ACQUISITION).items()
            }
    common = set(per_store[0][1]).intersection(*(set(ids) for _, ids, _, _ in per_store[1:])) if per_store else set()
    order = [pid for pid in per_store[0][1] if pid in common] if per_store else []
    unmatched = {path: [pid for pid in ids if pid not in common] for path, ids, _, _ in per_store}
    blocks: dict[str, FeatureBlock] = {}
    for path, ids, _, features in per_store:
        position = {pid: row for row, pid in enumerate(ids)}
        rows = [position[pid] for pid in order]
        for name, block in features.items():
            if name in blocks:
                raise InputError(f"{path}: feature block '{name}' also present in another store")
            blocks[name] = FeatureBlock(block.values[rows], block.names, block.groups, block.attrs)
    centers = [per_store[0][2][pid] for pid in order] if per_store else []
    acquisition = {name: np.array([values[pid] for pid in order], np.float32) for name, values in acquisition_of.items()}
    return JoinedFeatures(order, centers, blocks, {p: ids for p, ids in unmatched.items() if ids}, acquisition)
