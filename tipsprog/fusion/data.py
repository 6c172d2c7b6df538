"""Model inputs: modality matrices from stores and the clinical table, and per-fold preprocessing."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA

from tipsprog.clinical import extra_columns, schema
from tipsprog.store import FeatureBlock

MODALITIES = ("clinical", "radiomics", "embed", "biomarkers")
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


def with_extras(table: pd.DataFrame, extras: list[str]) -> pd.DataFrame:
    """The table with every extra column a model expects; absent ones are empty, so they are imputed."""
    return table.assign(**{column: np.nan for column in extras if column not in table.columns})


def clinical_token(column: str) -> str:
    """The clinical variable a column belongs to (one-hot levels share their variable's token)."""
    return column.split("=", 1)[0]


def modality_matrices(
    blocks: dict[str, FeatureBlock],
    row_index: np.ndarray,
    clinical: np.ndarray,
    clinical_names: list[str],
    wanted: tuple[str, ...],
) -> tuple[dict[str, np.ndarray], dict[str, list[str]], dict[str, list[str]]]:
    """Group feature blocks into modality matrices (rows selected): matrices, column names and column token groups."""
    matrices: dict[str, list[np.ndarray]] = {}
    names: dict[str, list[str]] = {}
    groups: dict[str, list[str]] = {}
    if "clinical" in wanted:
        matrices["clinical"], names["clinical"] = [clinical], list(clinical_names)
        groups["clinical"] = [clinical_token(name) for name in clinical_names]
    for block_name, block in blocks.items():
        modality = modality_of(block_name)
        if modality not in wanted:
            continue
        matrices.setdefault(modality, []).append(block.values[row_index].astype(np.float64))
        names.setdefault(modality, []).extend(block.names)
        groups.setdefault(modality, []).extend(block.groups or [block_name] * len(block.names))
    return {m: np.concatenate(parts, axis=1) for m, parts in matrices.items()}, names, groups


@dataclass
class ModalityPreprocessor:
    """Per-modality imputation, standardisation and per-token whitened PCA, fitted on training rows only.

    The output is a fixed layout [patients, tokens, width]: one token per feature group (a clinical variable, a
    radiomics ROI/filter/class, an embedding ROI/pooling), each holding at most `width` whitened components of its
    group (zero-padded), so every fold of a cross-validation produces the same shape.
    """

    median: list[float]
    mean: list[float]
    scale: list[float]
    token_names: list[str]
    token_columns: list[list[int]]
    token_components: list[list[list[float]]]
    token_scale: list[list[float]]
    width: int

    @classmethod
    def fit(cls, train: np.ndarray, column_groups: list[str], max_width: int = 0) -> ModalityPreprocessor:
        """Impute with medians, standardise, and reduce each group wider than `max_width` (0: no reduction)."""
        finite = np.where(np.isfinite(train), train, np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            median = np.nanmedian(finite, axis=0)
        imputed = np.where(np.isnan(finite), median, finite)
        std = imputed.std(axis=0)
        usable = np.isfinite(median) & (std > 1e-8)
        token_names = list(dict.fromkeys(column_groups))
        columns = [[c for c, g in enumerate(column_groups) if g == name and usable[c]] for name in token_names]
        group_width = max((column_groups.count(name) for name in token_names), default=1)  # not what this fold can use
        width = min(max_width, group_width) if max_width else group_width
        fitted = cls(
            np.where(usable, median, 0.0).tolist(),
            np.where(usable, imputed.mean(axis=0), 0.0).tolist(),
            np.where(usable, std, 1.0).tolist(),
            token_names,
            columns,
            [],
            [],
            max(width, 1),
        )
        standardised = fitted._standardise(train)
        for token_cols in columns:
            components, scale = _whitened_components(standardised[:, token_cols], fitted.width)
            fitted.token_components.append(components)
            fitted.token_scale.append(scale)
        return fitted

    def _standardise(self, values: np.ndarray) -> np.ndarray:
        finite = np.where(np.isfinite(values), values, np.nan)
        imputed = np.where(np.isnan(finite), np.array(self.median), finite)
        return np.clip((imputed - np.array(self.mean)) / np.array(self.scale), -CLIP_SD, CLIP_SD)

    def transform(self, values: np.ndarray) -> np.ndarray:
        """[patients, tokens, width] float32: standardised group columns or their whitened components, clipped to ±5 SD
        (a component nearly constant in training must not explode on a new patient)."""
        standardised = self._standardise(values)
        out = np.zeros((len(values), len(self.token_names), self.width), dtype=np.float32)
        for token, (cols, components, scale) in enumerate(zip(self.token_columns, self.token_components, self.token_scale)):
            if not cols:
                continue
            group = standardised[:, cols]
            if components:
                group = np.clip((group @ np.array(components).T) / np.array(scale), -CLIP_SD, CLIP_SD)
            out[:, token, : group.shape[1]] = group
        return out

    def transform_flat(self, values: np.ndarray) -> np.ndarray:
        """The token layout flattened to [patients, tokens × width]."""
        return self.transform(values).reshape(len(values), -1)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


def _whitened_components(group: np.ndarray, width: int) -> tuple[list[list[float]], list[float]]:
    """PCA rows and component SDs when a group has more columns than `width`; empty lists keep it as is."""
    if group.shape[1] <= width:
        return [], []
    count = min(width, len(group) - 1)
    pca = PCA(n_components=count, svd_solver="full").fit(group)
    return pca.components_.tolist(), np.sqrt(np.maximum(pca.explained_variance_, 1e-12)).tolist()


def fit_preprocessors(
    matrices: dict[str, np.ndarray], groups: dict[str, list[str]], train_rows: np.ndarray, imaging_width: int
) -> dict[str, ModalityPreprocessor]:
    """One preprocessor per modality fitted on the training rows; imaging token groups reduced to `imaging_width`."""
    return {
        m: ModalityPreprocessor.fit(values[train_rows], groups[m], 0 if m == "clinical" else imaging_width)
        for m, values in matrices.items()
    }


@dataclass
class TrainingData:
    """Raw (unscaled) modality matrices and labels of the training cohort."""

    patient_ids: list[str]
    centers: np.ndarray
    matrices: dict[str, np.ndarray]
    feature_names: dict[str, list[str]]
    feature_groups: dict[str, list[str]]
    time: np.ndarray
    event: np.ndarray
    ohe: np.ndarray
    ppg_post: np.ndarray
    acquisition: dict[str, np.ndarray] = field(default_factory=dict)  # how each scan was acquired (segment/acquisition.py)

    def subset(self, rows: np.ndarray) -> TrainingData:
        """The same cohort restricted to `rows`."""
        return TrainingData(
            [self.patient_ids[r] for r in rows],
            self.centers[rows],
            {m: v[rows] for m, v in self.matrices.items()},
            self.feature_names,
            self.feature_groups,
            self.time[rows],
            self.event[rows],
            self.ohe[rows],
            self.ppg_post[rows],
            {name: values[rows] for name, values in self.acquisition.items()},
        )

    def outcomes(self) -> dict[str, np.ndarray]:
        """Observed outcome columns."""
        return {"time": self.time, "event": self.event, "ohe": self.ohe, "ppg_post": self.ppg_post}
