"""Model inputs: modality matrices from stores and the clinical table, and per-fold preprocessing."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from tipsprog.clinical import extra_columns, schema
from tipsprog.store import FeatureBlock

MODALITIES = ("clinical", "radiomics", "embed")
CLIP_SD = 5.0


def modality_of(block_name: str) -> str:
    """Which modality a feature block belongs to (radiomics, embed-*, or its own name)."""
    return "embed" if block_name.startswith("embed") else block_name


def clinical_features(table: pd.DataFrame, extras: list[str]) -> tuple[np.ndarray, list[str]]:
    """Numeric clinical matrix: schema numerics (log where flagged), one-hot categoricals, extra columns."""
    columns, names = [], []
    for name, variable in schema().items():
        if variable.kind == "numeric":
            values = table[name].to_numpy(dtype=float)
            columns.append(np.log(values) if variable.log else values)
            names.append(f"log_{name}" if variable.log else name)
        else:
            observed = table[name].notna().to_numpy()
            for level in variable.levels:
                columns.append(np.where(observed, (table[name] == level).to_numpy(dtype=float), np.nan))
                names.append(f"{name}={level}")
    for name in extras:
        columns.append(pd.to_numeric(table[name], errors="coerce").to_numpy(dtype=float))
        names.append(name)
    return np.column_stack(columns).astype(np.float64), names


def numeric_extras(table: pd.DataFrame) -> list[str]:
    """Extra clinical columns that hold numbers (others cannot be used as features)."""
    return [c for c in extra_columns(table) if pd.to_numeric(table[c], errors="coerce").notna().any()]


def modality_matrices(blocks: dict[str, FeatureBlock], row_index: np.ndarray, clinical: np.ndarray,
                      clinical_names: list[str], wanted: tuple[str, ...]) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Group feature blocks into modality matrices (rows selected), restricted to the wanted modalities."""
    matrices: dict[str, list[np.ndarray]] = {}
    names: dict[str, list[str]] = {}
    if "clinical" in wanted:
        matrices["clinical"], names["clinical"] = [clinical], list(clinical_names)
    for block_name, block in blocks.items():
        modality = modality_of(block_name)
        if modality not in wanted:
            continue
        matrices.setdefault(modality, []).append(block.values[row_index].astype(np.float64))
        names.setdefault(modality, []).extend(block.names)
    return {m: np.concatenate(parts, axis=1) for m, parts in matrices.items()}, names


@dataclass
class ColumnScaler:
    """Median imputation and standardisation of one modality, fitted on training rows only."""

    keep: list[int]
    median: list[float]
    mean: list[float]
    scale: list[float]

    @classmethod
    def fit(cls, train: np.ndarray) -> "ColumnScaler":
        """Fit on training rows: drop all-missing or constant columns, then impute and standardise."""
        finite = np.where(np.isfinite(train), train, np.nan)
        with np.errstate(all="ignore"):
            median = np.nanmedian(finite, axis=0)
        imputed = np.where(np.isnan(finite), median, finite)
        std = imputed.std(axis=0)
        keep = np.flatnonzero(np.isfinite(median) & (std > 1e-8))
        return cls(keep.tolist(), median[keep].tolist(), imputed[:, keep].mean(axis=0).tolist(), std[keep].tolist())

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Impute with training medians, standardise with training moments, clip to ±5 SD."""
        selected = np.where(np.isfinite(values[:, self.keep]), values[:, self.keep], np.nan)
        imputed = np.where(np.isnan(selected), np.array(self.median), selected)
        return np.clip((imputed - np.array(self.mean)) / np.array(self.scale), -CLIP_SD, CLIP_SD).astype(np.float32)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


def fit_scalers(matrices: dict[str, np.ndarray], train_rows: np.ndarray) -> dict[str, ColumnScaler]:
    """One scaler per modality, fitted on the training rows."""
    return {m: ColumnScaler.fit(values[train_rows]) for m, values in matrices.items()}


def transform_all(scalers: dict[str, ColumnScaler], matrices: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """Apply each modality's scaler to the selected rows."""
    return {m: scalers[m].transform(matrices[m][rows]) for m in scalers}
