"""The clinical Cox model fitted with lifelines (a penalised Cox on the clinical variables, and the in-fold ridge
penalties that guide the networks' clinical path)."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
from lifelines import CoxPHFitter
from lifelines.exceptions import ConvergenceError, ConvergenceWarning
from sklearn.model_selection import StratifiedKFold

from tipsprog.errors import InputError
from tipsprog.fusion.data import ModalityPreprocessor, TrainingData
from tipsprog.fusion.losses import SurvivalIndex, cox_efron_nll
from tipsprog.fusion.models import GUIDE_MODALITIES
from tipsprog.survival import BreslowBaseline

RESIDUAL_MARGIN_NATS = 1.92  # half the 95% quantile of χ²(1): a likelihood-ratio test for the one added weight
BIOMARKER_PENALTIES = (np.inf, 1.0, 0.3, 0.1)  # ridge penalties the guide chooses among for the biomarkers (inf: left out)
INNER_FOLDS = 5
CONSTANT_SD = 1e-6  # a standardised column varying less than this is constant up to float32 rounding


def cox_coefficients(standardised: np.ndarray, time: np.ndarray, event: np.ndarray, penalizer: float | np.ndarray) -> np.ndarray:
    """Penalised Cox (lifelines, Efron ties) coefficients over standardised columns, from the rows with a known
    outcome; `penalizer` per column or for all (an infinite penalty leaves a column out); zero for constant columns
    (all zero without an event). Where a few patients separate a column, the penalty is raised ten- then hundredfold."""
    known = np.isfinite(time) & np.isfinite(event)
    standardised, time, event = standardised[known], time[known], event[known]
    penalizer = np.broadcast_to(np.asarray(penalizer, dtype=float), standardised.shape[1])
    coefficients = np.zeros(standardised.shape[1])
    used = np.flatnonzero((standardised.std(axis=0) > CONSTANT_SD) & np.isfinite(penalizer))
    if event.sum() < 1 or not len(used):
        return coefficients
    table = pd.DataFrame(standardised[:, used], columns=[f"x{i}" for i in used]).assign(time=time, event=event)
    for strength in (1.0, 10.0, 100.0):  # a few patients can separate a column: then penalise harder
        try:
            with warnings.catch_warnings():  # lifelines' advice on separation; a hard failure is retried below
                warnings.simplefilter("ignore", ConvergenceWarning)
                fitted = CoxPHFitter(penalizer=strength * penalizer[used]).fit(table, "time", "event")
        except ConvergenceError:
            continue
        coefficients[used] = fitted.params_.to_numpy()
        return coefficients
    raise InputError(
        f"the penalised Cox does not converge on {len(time)} patients with {int(event.sum())} events; "
        "add patients or leave out the clinical columns that separate them"
    )


def _inner_cv_nll(standardised: np.ndarray, time: np.ndarray, event: np.ndarray, penalizer: np.ndarray) -> float:
    """Cox NLL of the pooled inner-cross-validated linear predictors (5 folds stratified by event): how well a
    penalty generalises within a training fold."""
    known = np.isfinite(time) & np.isfinite(event)
    standardised, time, event = standardised[known], time[known], event[known]
    risk = np.zeros(len(time))
    for fit, held in StratifiedKFold(INNER_FOLDS, shuffle=True, random_state=0).split(standardised, event):
        risk[held] = standardised[held] @ cox_coefficients(standardised[fit], time[fit], event[fit], penalizer)
    return float(cox_efron_nll(torch.from_numpy(risk), SurvivalIndex.build(time, event)))


def guide_penalties(
    standardised: dict[str, np.ndarray], time: np.ndarray, event: np.ndarray, clinical_penalizer: float
) -> np.ndarray:
    """Per column of the guide's modalities, its ridge penalty: the clinical one from the config; the biomarkers'
    chosen among BIOMARKER_PENALTIES by inner cross-validation on these (training) rows, kept in the guide only when
    their cross-validated NLL beats leaving them out by the likelihood-ratio margin (safety first: a chance
    inclusion costs the clinical Cox's discrimination)."""
    clinical = np.full(standardised["clinical"].shape[1], clinical_penalizer)
    if "biomarkers" not in standardised:
        return clinical
    columns = np.hstack([standardised[m] for m in GUIDE_MODALITIES if m in standardised])
    candidates = [np.concatenate([clinical, np.full(standardised["biomarkers"].shape[1], p)]) for p in BIOMARKER_PENALTIES]
    losses = [_inner_cv_nll(columns, time, event, c) for c in candidates]
    best = int(np.argmin(losses))
    return candidates[best] if losses[0] - losses[best] > RESIDUAL_MARGIN_NATS else candidates[0]


@dataclass
class ClinicalCoxFit:
    """Penalised lifelines Cox on the clinical variables of some training rows, with its Breslow baseline and
    median risk cut. Coefficients are over the preprocessor's flattened output (zero for padding columns)."""

    preprocessor: ModalityPreprocessor
    coefficients: list[float]
    baseline_times: list[float]
    baseline_cumhaz: list[float]
    cut: float

    def risk(self, clinical: np.ndarray) -> np.ndarray:
        """Linear predictor of raw clinical rows."""
        return self.preprocessor.transform_flat(clinical) @ np.array(self.coefficients)

    @property
    def baseline(self) -> BreslowBaseline:
        """Its Breslow baseline (from its training rows)."""
        return BreslowBaseline.from_lists(self.baseline_times, self.baseline_cumhaz)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {**asdict(self), "preprocessor": self.preprocessor.to_dict()}

    @classmethod
    def from_dict(cls, values: dict) -> ClinicalCoxFit:
        """Inverse of to_dict."""
        return cls(**{**values, "preprocessor": ModalityPreprocessor(**values["preprocessor"])})


def fit_clinical_cox(data: TrainingData, train_rows: np.ndarray, penalizer: float) -> ClinicalCoxFit:
    """Fit the clinical-only Cox model on training rows (patients with a known follow-up)."""
    scaler = ModalityPreprocessor.fit(data.matrices["clinical"][train_rows], data.feature_groups["clinical"])
    standardised = scaler.transform_flat(data.matrices["clinical"][train_rows])
    coefficients = cox_coefficients(standardised, data.time[train_rows], data.event[train_rows], penalizer)
    train_risk = standardised @ coefficients
    baseline = BreslowBaseline.fit(train_risk, data.time[train_rows], data.event[train_rows])
    return ClinicalCoxFit(
        scaler, coefficients.tolist(), baseline.times.tolist(), baseline.cumhaz.tolist(), float(np.median(train_risk))
    )
