"""Model inputs: modality matrices from stores and the clinical table, and per-fold preprocessing."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA

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
class ModalityPreprocessor:
    """Median imputation, standardisation and optional whitened PCA of one modality, fitted on training rows only."""

    keep: list[int]
    median: list[float]
    mean: list[float]
    scale: list[float]
    components: list[list[float]] = field(default_factory=list)
    component_scale: list[float] = field(default_factory=list)

    @classmethod
    def fit(cls, train: np.ndarray, max_components: int = 0) -> "ModalityPreprocessor":
        """Drop all-missing or constant columns, impute, standardise; reduce to max_components if more columns."""
        finite = np.where(np.isfinite(train), train, np.nan)
        with np.errstate(all="ignore"):
            median = np.nanmedian(finite, axis=0)
        imputed = np.where(np.isnan(finite), median, finite)
        std = imputed.std(axis=0)
        keep = np.flatnonzero(np.isfinite(median) & (std > 1e-8))
        fitted = cls(keep.tolist(), median[keep].tolist(), imputed[:, keep].mean(axis=0).tolist(), std[keep].tolist())
        components = min(max_components, len(keep), len(train) - 1)
        if max_components and len(keep) > max_components and components > 0:
            pca = PCA(n_components=components, svd_solver="full").fit(fitted._standardise(train))
            fitted.components = pca.components_.tolist()
            fitted.component_scale = np.sqrt(np.maximum(pca.explained_variance_, 1e-12)).tolist()
        return fitted

    def _standardise(self, values: np.ndarray) -> np.ndarray:
        selected = np.where(np.isfinite(values[:, self.keep]), values[:, self.keep], np.nan)
        imputed = np.where(np.isnan(selected), np.array(self.median), selected)
        return np.clip((imputed - np.array(self.mean)) / np.array(self.scale), -CLIP_SD, CLIP_SD)

    @property
    def width(self) -> int:
        """Number of output columns."""
        return len(self.components) or len(self.keep)

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Impute with training medians, standardise (clipped to ±5 SD), project onto whitened components."""
        standardised = self._standardise(values)
        if self.components:
            standardised = (standardised @ np.array(self.components).T) / np.array(self.component_scale)
        return standardised.astype(np.float32)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


def fit_preprocessors(matrices: dict[str, np.ndarray], train_rows: np.ndarray,
                      max_components: int = 0) -> dict[str, ModalityPreprocessor]:
    """One preprocessor per modality fitted on the training rows; imaging modalities may be PCA-reduced."""
    return {m: ModalityPreprocessor.fit(values[train_rows], 0 if m == "clinical" else max_components)
            for m, values in matrices.items()}


def transform_all(preprocessors: dict[str, ModalityPreprocessor], matrices: dict[str, np.ndarray],
                  rows: np.ndarray) -> dict[str, np.ndarray]:
    """Apply each modality's preprocessor to the selected rows."""
    return {m: preprocessors[m].transform(matrices[m][rows]) for m in preprocessors}
