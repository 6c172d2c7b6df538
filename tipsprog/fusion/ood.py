"""Out-of-distribution check: how far a patient's features lie from the training cohort, per modality.

Each modality's features are standardised (training median and SD; a missing value sits at the median) and
projected on the training cohort's leading principal components; the distance is the Mahalanobis distance in those
components (Hotelling's T²) plus the squared residual off them (the Q statistic, so a patient unlike the cohort in
a direction the cohort never varies in is seen too), each scaled by its median over the training patients, and the
sum over the median of the training patients' own sums measured out of fold (the reference fitted without their
cross-validation fold), so that modalities of any width and a new patient's out-of-sample distance are on one
scale. A patient is flagged where a modality's distance exceeds the threshold: the OOD_QUANTILE quantile, over the
training patients measured out of fold, of their largest distance over the modalities (the split-conformal one,
the ⌈(n + 1)·q⌉-th smallest of n), so that at most about 1 − OOD_QUANTILE of patients like the training cohort are
flagged at all, however many modalities the bundle has.
How each scan was acquired (spacing, HU calibration, contrast phase) is checked apart, against the range of the
training scans (segment/acquisition.py).
At most one component per PATIENTS_PER_COMPONENT training patients is kept (a covariance estimated from fewer is
noise).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from tipsprog.segment.acquisition import acquisition_warnings, failed_checks, training_ranges

OOD_QUANTILE = 0.99
MAX_COMPONENTS = 10
PATIENTS_PER_COMPONENT = 10


@dataclass
class ModalityReference:
    """One modality's training distribution: standardisation, principal components and the medians that scale
    the two distances."""

    centre: np.ndarray  # [p] training median
    scale: np.ndarray  # [p] training SD (1 where constant)
    components: np.ndarray  # [k, p] leading principal directions
    variances: np.ndarray  # [k] training variance along each
    t2_median: float
    q_median: float

    @classmethod
    def fit(cls, matrix: np.ndarray) -> ModalityReference:
        """The reference of a training matrix [n, p] (NaN: missing; a feature missing everywhere sits at 0)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            centre, scale = np.nanmedian(matrix, axis=0), np.nanstd(matrix, axis=0)
        centre = np.where(np.isfinite(centre), centre, 0.0)
        scale = np.where(np.isfinite(scale) & (scale > 1e-12), scale, 1.0)
        standard = _standardised(matrix, centre, scale)
        _, singular, directions = np.linalg.svd(standard - standard.mean(axis=0), full_matrices=False)
        keep = min(
            MAX_COMPONENTS,
            max(1, (len(matrix) - 1) // PATIENTS_PER_COMPONENT),
            int((singular > 1e-9 * singular.max(initial=0.0)).sum()),
        )
        variances = singular[:keep] ** 2 / max(len(matrix) - 1, 1)
        reference = cls(centre, scale, directions[:keep], variances, 1.0, 1.0)
        t2, q = reference._statistics(matrix)
        reference.t2_median, reference.q_median = max(float(np.median(t2)), 1e-12), max(float(np.median(q)), 1e-12)
        return reference

    def _statistics(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Hotelling's T² in the components and the squared residual off them, per row."""
        standard = _standardised(matrix, self.centre, self.scale)
        scores = standard @ self.components.T
        t2 = (scores**2 / self.variances).sum(axis=1)
        q = ((standard - scores @ self.components) ** 2).sum(axis=1)
        return t2, q

    def distance(self, matrix: np.ndarray) -> np.ndarray:
        """Each row's distance from the training cohort: T² and Q, each over its training median, summed."""
        t2, q = self._statistics(matrix)
        return t2 / self.t2_median + q / self.q_median

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {
            "centre": self.centre.tolist(),
            "scale": self.scale.tolist(),
            "components": self.components.tolist(),
            "variances": self.variances.tolist(),
            "t2_median": self.t2_median,
            "q_median": self.q_median,
        }

    @classmethod
    def from_dict(cls, values: dict) -> ModalityReference:
        """Inverse of to_dict."""
        p = len(values["centre"])
        return cls(
            np.array(values["centre"], float),
            np.array(values["scale"], float),
            np.array(values["components"], float).reshape(-1, p),
            np.array(values["variances"], float),
            float(values["t2_median"]),
            float(values["q_median"]),
        )


def _standardised(matrix: np.ndarray, centre: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(x − median) / SD, a missing value at the median (0)."""
    standard = (np.asarray(matrix, float) - centre) / scale
    return np.where(np.isfinite(standard), standard, 0.0)


@dataclass
class OodReference:
    """Every modality's reference, the out-of-fold median that puts its distances on the common scale, and the one
    threshold on their largest distance."""

    modalities: dict[str, ModalityReference]
    out_of_fold_medians: dict[str, float]
    threshold: float
    acquisition: dict[str, list[float]] = field(default_factory=dict)  # each descriptor's training [low, high]

    def distances(self, matrices: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each modality's distance of each row, on the common scale (1: a typical new patient)."""
        return {m: reference.distance(matrices[m]) / self.out_of_fold_medians[m] for m, reference in self.modalities.items()}

    def flagged(self, matrices: dict[str, np.ndarray]) -> list[list[str]]:
        """Per row, the modalities whose distance exceeds the threshold."""
        distances = self.distances(matrices)
        rows = len(next(iter(distances.values()))) if distances else 0
        return [[m for m, d in distances.items() if d[row] > self.threshold] for row in range(rows)]

    def acquisition_warnings(self, values: dict[str, float | None]) -> list[str]:
        """The acquisition checks one scan fails (its descriptors by name), one line each."""
        return acquisition_warnings(values, self.acquisition)

    def acquisition_flagged(self, acquisition: dict[str, np.ndarray]) -> list[list[str]]:
        """Per row of a cohort's acquisition descriptors (by name), the checks its scan fails."""
        rows = len(next(iter(acquisition.values()))) if acquisition else 0
        return [
            sorted({check.check for check, _ in failed_checks({k: v[row] for k, v in acquisition.items()}, self.acquisition)})
            for row in range(rows)
        ]

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {
            "quantile": OOD_QUANTILE,
            "threshold": self.threshold,
            "out_of_fold_medians": self.out_of_fold_medians,
            "modalities": {m: r.to_dict() for m, r in self.modalities.items()},
            "acquisition": self.acquisition,
        }

    @classmethod
    def from_dict(cls, values: dict) -> OodReference:
        """Inverse of to_dict."""
        return cls(
            {m: ModalityReference.from_dict(r) for m, r in values["modalities"].items()},
            {m: float(v) for m, v in values["out_of_fold_medians"].items()},
            float(values["threshold"]),
            values.get("acquisition", {}),  # a bundle written before the acquisition checks has none
        )


def fit_ood(matrices: dict[str, np.ndarray], folds: np.ndarray, acquisition: dict[str, np.ndarray] | None = None) -> OodReference:
    """The reference of the training cohort (all patients) with its scales and threshold, both from each training
    patient's distances measured against references fitted without its fold, and the range of its scans'
    acquisition descriptors."""
    out_of_fold = {m: np.zeros(len(folds)) for m in matrices}
    for fold in np.unique(folds):
        held, kept = folds == fold, folds != fold
        for m, matrix in matrices.items():
            out_of_fold[m][held] = ModalityReference.fit(matrix[kept]).distance(matrix[held])
    medians = {m: max(float(np.median(d)), 1e-12) for m, d in out_of_fold.items()}
    largest = np.max([d / medians[m] for m, d in out_of_fold.items()], axis=0)
    level = min(1.0, np.ceil((len(largest) + 1) * OOD_QUANTILE) / len(largest))  # the conformal quantile
    return OodReference(
        {m: ModalityReference.fit(matrix) for m, matrix in matrices.items()},
        medians,
        float(np.quantile(largest, level, method="higher")),
        training_ranges(acquisition or {}),
    )
