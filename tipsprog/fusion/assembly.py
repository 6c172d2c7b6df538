"""Cohort assembly: join feature stores, the clinical table and outcomes on patient ID into model inputs."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from tipsprog import store
from tipsprog.clinical import clinical_scores, read_clinical
from tipsprog.errors import InputError
from tipsprog.fusion.data import (
    MODALITIES,
    TrainingData,
    clinical_features,
    modality_matrices,
    modality_of,
    numeric_extras,
    with_extras,
)
from tipsprog.manifest import Manifest
from tipsprog.tables import read_outcomes


@dataclass
class Assembled:
    """Training data plus what the bundle must remember about where it came from."""

    data: TrainingData
    clinical: pd.DataFrame
    extras: list[str]
    blocks: dict[str, store.FeatureBlock]
    notes: list[str]


def _describe(ids: list[str], limit: int = 3) -> str:
    shown = ", ".join(ids[:limit])
    return f"{len(ids)} ({shown}{', …' if len(ids) > limit else ''})"


def assemble(
    stores: list[Path],
    clinical_csv: Path,
    outcomes_csv: Path,
    modalities: tuple[str, ...] | None,
    extras: list[str] | None = None,
) -> Assembled:
    """Join stores, clinical table and outcomes on patient ID; report every unmatched ID.

    `modalities` None means every modality the stores and the clinical table provide; `extras` None means every
    numeric extra column of the clinical table (a bundle's own list when assembling a cohort to apply it to).
    """
    clinical = read_clinical(clinical_csv, outcomes_csv)
    outcomes = read_outcomes(outcomes_csv)
    notes = []
    if stores:
        joined = store.join_features(stores)
        notes += [f"{path}: {_describe(ids)} patients absent from another store" for path, ids in joined.unmatched.items()]
        ids, centers, blocks = joined.patient_ids, dict(zip(joined.patient_ids, joined.centers)), joined.blocks
        acquisition = joined.acquisition
    else:
        ids, centers, blocks, acquisition = clinical["patient_id"].tolist(), {}, {}, {}
    common = [pid for pid in ids if pid in clinical.index and pid in outcomes.index]
    if not common:
        sources = ", ".join(str(s) for s in stores) or str(clinical_csv)
        raise InputError(f"{outcomes_csv}: no patient in common with {sources}")
    for source, table in (("clinical", clinical), ("outcomes", outcomes)):
        absent = [pid for pid in ids if pid not in table.index]
        if absent:
            notes.append(f"{_describe(absent)} patients have no {source} row and are left out")
    matched = set(common)
    unused = [pid for pid in outcomes.index if pid not in matched]
    if unused:
        notes.append(f"{_describe(unused)} outcome rows have no matching features and are left out")
    extras = numeric_extras(clinical) if extras is None else extras
    table = with_extras(clinical.loc[common], extras)
    clinical_matrix, clinical_names = clinical_features(table, extras)
    available = {"clinical", *(modality_of(name) for name in blocks)}
    modalities = modalities or tuple(m for m in MODALITIES if m in available)
    missing = [m for m in modalities if m not in available]
    if missing:
        raise InputError(
            f"{' and '.join(missing)} features are needed but not in the given stores (available: {', '.join(sorted(available))})"
        )
    row_of = {pid: row for row, pid in enumerate(ids)}
    matrices, names, groups = modality_matrices(
        blocks, np.array([row_of[pid] for pid in common], dtype=int), clinical_matrix, clinical_names, modalities
    )
    center_column = table["center"].astype(str).to_numpy() if "center" in table.columns else np.full(len(common), "unknown")
    center = np.array([centers.get(pid, "unknown") for pid in common], dtype=object)
    center = np.where(center == "unknown", center_column, center).astype(str)
    labels = outcomes.loc[common]
    data = TrainingData(
        common,
        center,
        matrices,
        names,
        groups,
        labels["time"].to_numpy(float),
        labels["event"].to_numpy(float),
        labels["ohe"].to_numpy(float),
        labels["ppg_post"].to_numpy(float),
        {name: values[[row_of[pid] for pid in common]] for name, values in acquisition.items()},
    )
    if np.nansum(data.event) < 2:
        raise InputError(f"{outcomes_csv}: fewer than 2 events among the {len(common)} matched patients")
    rows = np.array([row_of[pid] for pid in common], dtype=int)  # blocks as trained on: store patients without
    used_blocks = {
        name: replace(block, values=block.values[rows])  # a clinical or outcome row are left out
        for name, block in blocks.items()
        if modality_of(name) in modalities
    }
    return Assembled(data, table, extras, used_blocks, notes)


def assemble_for_bundle(manifest: Manifest, stores: list[Path], clinical_csv: Path, outcomes_csv: Path) -> Assembled:
    """A new cohort assembled like a bundle's training data: its modalities, clinical extras and feature order."""
    expected = manifest.modalities
    assembled = assemble(stores, clinical_csv, outcomes_csv, tuple(expected), manifest.clinical_extras)
    data = assembled.data
    matrices, groups = {}, {}
    for modality, names in expected.items():
        column_of = {name: column for column, name in enumerate(data.feature_names[modality])}
        missing = [name for name in names if name not in column_of]
        if missing:
            sources = ", ".join(str(s) for s in stores) or str(clinical_csv)
            raise InputError(
                f"{sources}: feature '{missing[0]}' of the bundle's {modality} modality is missing "
                f"({len(missing)} of {len(names)} missing)"
            )
        columns = [column_of[name] for name in names]
        matrices[modality] = data.matrices[modality][:, columns]
        groups[modality] = [data.feature_groups[modality][c] for c in columns]
    assembled.data = replace(data, matrices=matrices, feature_names=dict(expected), feature_groups=groups)
    return assembled


def score_columns(clinical: pd.DataFrame) -> dict[str, np.ndarray]:
    """Every clinical score of a clinical table as float columns."""
    return {name: values.to_numpy(dtype=float) for name, values in clinical_scores(clinical).items()}
