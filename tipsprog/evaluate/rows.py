"""Prediction rows to evaluate: the fused model, clinical-only Cox, clinical scores and the oracle."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from lifelines import CoxPHFitter
from lifelines.exceptions import ConvergenceError

from tipsprog import store
from tipsprog.clinical import FIPS_HIGH_RISK
from tipsprog.errors import InputError
from tipsprog.fusion.bundle import Bundle
from tipsprog.survival import BreslowBaseline
from tipsprog.tables import read_table


@dataclass
class PredictionRow:
    """One row of the report: risk for discrimination, survival on the evaluation grid and at each patient's own
    follow-up time (for Brier, calibration and D-calibration), optional OHE and PPG."""

    name: str
    risk: np.ndarray
    survival: np.ndarray
    own_survival: np.ndarray
    high_risk: np.ndarray
    ohe_probability: np.ndarray | None = None
    ohe_threshold: np.ndarray | None = None
    ppg_post: np.ndarray | None = None


@dataclass
class Cohort:
    """Evaluated patients: IDs, centers, observed outcomes and clinical scores."""

    patient_ids: list[str]
    centers: list[str]
    outcomes: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]


@dataclass
class OutOfFold(Cohort):
    """The bundle's training cohort with its out-of-fold predictions, per-repeat risks and per-fold baselines."""

    oof: dict[str, np.ndarray]
    repeats: dict[str, np.ndarray]
    baselines: dict[str, list[BreslowBaseline]]


def read_oof(path: Path) -> OutOfFold:
    """Read a bundle's oof.h5."""
    with store.open_store(path) as h5:
        return OutOfFold(
            store.read_patients(h5),
            store.read_centers(h5),
            store.read_columns(h5, "outcomes"),
            store.read_columns(h5, "scores"),
            store.read_columns(h5, "oof"),
            store.read_columns(h5, "repeats"),
            {row: [BreslowBaseline(*pair) for pair in store.read_baselines(h5, row)] for row in ("model", "clinical_cox")},
        )


def read_held_out(path: Path) -> tuple[Cohort, dict[str, np.ndarray]]:
    """Read a bundle's held_out.h5: the cohort and its ensemble predictions (member risks under `member_risk`)."""
    with store.open_store(path) as h5:
        cohort = Cohort(
            store.read_patients(h5), store.read_centers(h5), store.read_columns(h5, "outcomes"), store.read_columns(h5, "scores")
        )
        return cohort, {**store.read_columns(h5, "predictions"), "member_risk": store.read_columns(h5, "members")["risk"]}


def _survival_from_baselines(
    risk: np.ndarray, fold: np.ndarray, baselines: list[BreslowBaseline], grid: np.ndarray, time: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Survival on the grid and at each patient's own time, from the patient's test-fold baseline, averaged over
    repeats. `risk` and `fold` are [patients, repeats]; fold ids index `baselines`."""
    curves = np.full((risk.shape[1], len(risk), len(grid)), np.nan)
    own = np.full((risk.shape[1], len(risk)), np.nan)
    for index, baseline in enumerate(baselines):
        for repeat in range(risk.shape[1]):
            rows = (fold[:, repeat] == index) & np.isfinite(risk[:, repeat])
            curves[repeat, rows] = baseline.survival(risk[rows, repeat], grid)
            own[repeat, rows] = baseline.survival_at_own_time(risk[rows, repeat], time[rows])
    return curves.mean(axis=0), own.mean(axis=0)


def _usable(score: np.ndarray) -> bool:
    """A clinical score known for at least half the patients (and at least 5) is evaluated."""
    return np.isfinite(score).sum() >= max(5, len(score) / 2)


@dataclass
class _ScoreCox:
    """Univariate Cox model of a standardised clinical score, with its Breslow baseline."""

    centre: float
    spread: float
    coefficient: float
    baseline: BreslowBaseline

    def survival(self, score: np.ndarray, time: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Survival on the grid and at each patient's own time."""
        risk = self.coefficient * (score - self.centre) / self.spread
        return self.baseline.survival(risk, grid), self.baseline.survival_at_own_time(risk, time)


def _fit_score_cox(score: np.ndarray, time: np.ndarray, event: np.ndarray) -> _ScoreCox | None:
    """Fit the score's univariate Cox model on training patients (None when it does not converge)."""
    centre, spread = score.mean(), score.std() or 1.0
    standardised = (score - centre) / spread
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitter = CoxPHFitter(penalizer=1e-3).fit(
                pd.DataFrame({"s": standardised, "time": time, "event": event}), "time", "event"
            )
    except ConvergenceError:
        return None
    coefficient = float(fitter.params_["s"])
    return _ScoreCox(centre, spread, coefficient, BreslowBaseline.fit(coefficient * standardised, time, event))


def _survival_from_score(score: np.ndarray, data: OutOfFold, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-fold univariate Cox on a fixed score (fitted on training folds): grid and own-time survival, median cut."""
    time, event, fold = data.outcomes["time"], data.outcomes["event"], data.outcomes["fold"]
    curves, own, cut = np.full((len(score), len(grid)), np.nan), np.full(len(score), np.nan), np.full(len(score), np.nan)
    for index in np.unique(fold[fold >= 0]).astype(int):
        train = (fold != index) & np.isfinite(score) & np.isfinite(time)
        test = (fold == index) & np.isfinite(score)
        cut[test] = np.median(score[train])
        model = _fit_score_cox(score[train], time[train], event[train])
        if model is not None:
            curves[test], own[test] = model.survival(score[test], time[test], grid)
    return curves, own, cut


def _refitted(
    train_score: np.ndarray, training: Cohort, score: np.ndarray, time: np.ndarray, grid: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float] | None:
    """A fixed score's univariate Cox refitted on all training patients and applied to new ones: grid and own-time
    survival and the training median cut (None when the score is missing for most patients of either cohort)."""
    train_time, train_event = training.outcomes["time"], training.outcomes["event"]
    known = np.isfinite(train_score) & np.isfinite(train_time)
    model = _fit_score_cox(train_score[known], train_time[known], train_event[known]) if _usable(train_score) else None
    if model is None or not _usable(score):
        return None
    curves, own = model.survival(score, time, grid)
    return curves, own, float(np.median(train_score[known]))


def held_out_rows(
    bundle: Bundle,
    training: OutOfFold,
    cohort: Cohort,
    predictions: dict[str, np.ndarray],
    grid: np.ndarray,
    truth: pd.DataFrame | None = None,
) -> tuple[list[PredictionRow], list[str]]:
    """Rows for patients no member trained on (fuse-train --test or evaluate --test): the ensemble (survival
    averaged over members' baselines), the clinical Cox, each clinical score refitted on all training patients and,
    when `truth` covers both cohorts, the oracle."""
    time = cohort.outcomes["time"]
    member_risk = predictions["member_risk"]
    curves = np.mean([m.baseline.survival(member_risk[:, i], grid) for i, m in enumerate(bundle.members)], axis=0)
    own = np.mean([m.baseline.survival_at_own_time(member_risk[:, i], time) for i, m in enumerate(bundle.members)], axis=0)
    risk = predictions["risk"]
    rows = [
        PredictionRow(
            "model",
            risk,
            curves,
            own,
            risk > bundle.manifest.risk_cut,
            predictions["ohe_probability"],
            predictions["ohe_threshold"],
            predictions["ppg_post"],
        )
    ]
    if bundle.clinical_cox is not None and "clinical_cox_risk" in predictions:
        cox, cox_risk = bundle.clinical_cox, predictions["clinical_cox_risk"]
        rows.append(
            PredictionRow(
                "clinical-cox",
                cox_risk,
                cox.baseline.survival(cox_risk, grid),
                cox.baseline.survival_at_own_time(cox_risk, time),
                cox_risk > cox.cut,
            )
        )
    notes = []
    for name, score in cohort.scores.items():
        refitted = _refitted(training.scores.get(name, np.full(len(training.patient_ids), np.nan)), training, score, time, grid)
        if refitted is None:
            notes.append(f"{name}: skipped on new patients, its inputs are missing for most patients")
            continue
        curves, own, cut = refitted
        high = score >= FIPS_HIGH_RISK if name == "FIPS" else score > cut
        rows.append(PredictionRow(name, score, curves, own, np.where(np.isfinite(score), high, np.nan), ohe_probability=score))
    if truth is not None:
        training_truth, cohort_truth = truth_for(truth, training.patient_ids), truth_for(truth, cohort.patient_ids)
        refitted = None
        if training_truth is not None and cohort_truth is not None:
            refitted = _refitted(
                training_truth["linear_predictor"].to_numpy(float),
                training,
                cohort_truth["linear_predictor"].to_numpy(float),
                time,
                grid,
            )
        if refitted is None or cohort_truth is None:
            notes.append("oracle: skipped on new patients, the truth tables lack some of them or of the training patients")
        else:
            curves, own, cut = refitted
            rows.append(_oracle(cohort_truth, curves, own, cohort_truth["linear_predictor"].to_numpy(float) > cut))
    return rows, notes


def prediction_rows(data: OutOfFold, grid: np.ndarray, truth: pd.DataFrame | None) -> tuple[list[PredictionRow], list[str]]:
    """All rows whose inputs exist, plus notes on those skipped."""
    oof, fold, time = data.oof, data.repeats["fold"], data.outcomes["time"]
    rows = [
        PredictionRow(
            "model",
            oof["risk"],
            *_survival_from_baselines(data.repeats["risk"], fold, data.baselines["model"], grid, time),
            oof["risk"] > oof["risk_cut"],
            oof["ohe_probability"],
            oof["ohe_threshold"],
            oof["ppg_post"],
        )
    ]
    notes = []
    if np.isfinite(oof.get("clinical_cox_risk", np.array([np.nan]))).any():
        risk = oof["clinical_cox_risk"]
        rows.append(
            PredictionRow(
                "clinical-cox",
                risk,
                *_survival_from_baselines(data.repeats["clinical_cox_risk"], fold, data.baselines["clinical_cox"], grid, time),
                risk > oof["clinical_cox_cut"],
            )
        )
    for name, score in data.scores.items():
        if not _usable(score):
            notes.append(f"{name}: skipped, its inputs are missing for most patients")
            continue
        curves, own, cut = _survival_from_score(score, data, grid)
        high = score >= FIPS_HIGH_RISK if name == "FIPS" else score > cut
        rows.append(PredictionRow(name, score, curves, own, np.where(np.isfinite(score), high, np.nan), ohe_probability=score))
    if truth is not None:
        matched = truth_for(truth, data.patient_ids)
        if matched is None:
            notes.append("oracle: skipped on out-of-fold patients, the truth tables lack some of them")
        else:
            rows.append(oracle_row(data, matched, grid))
    return rows, notes


TRUTH_COLUMNS = ("linear_predictor", "ohe_probability", "ppg_post_expected")


def read_truth(paths: list[Path]) -> pd.DataFrame:
    """truth.csv tables of synthetic cohorts, stacked and indexed by patient ID."""
    tables = []
    for path in paths:
        try:
            tables.append(read_table(path, list(TRUTH_COLUMNS))[list(TRUTH_COLUMNS)].astype(float))
        except ValueError as err:
            raise InputError(f"{path}: truth values must be numbers ({err})") from None
    truth = pd.concat(tables)
    repeated = truth.index[truth.index.duplicated()]
    if len(repeated):
        raise InputError(f"{', '.join(map(str, paths))}: patient {repeated[0]} appears in more than one truth row")
    return truth


def truth_for(truth: pd.DataFrame, patient_ids: list[str]) -> pd.DataFrame | None:
    """Truth rows of these patients in order (None unless every one is present)."""
    return truth.loc[patient_ids] if truth.index.isin(patient_ids).sum() == len(set(patient_ids)) else None


def _oracle(truth: pd.DataFrame, curves: np.ndarray, own: np.ndarray, high_risk: np.ndarray) -> PredictionRow:
    """The best achievable row: the generating model's own linear predictor and expectations."""
    risk = truth["linear_predictor"].to_numpy(float)
    return PredictionRow(
        "oracle",
        risk,
        curves,
        own,
        high_risk,
        truth["ohe_probability"].to_numpy(float),
        np.full(len(risk), 0.5),
        truth["ppg_post_expected"].to_numpy(float),
    )


def oracle_row(data: OutOfFold, truth: pd.DataFrame, grid: np.ndarray) -> PredictionRow:
    """The oracle on out-of-fold patients, its survival from per-fold univariate Cox fits."""
    curves, own, cut = _survival_from_score(truth["linear_predictor"].to_numpy(float), data, grid)
    return _oracle(truth, curves, own, truth["linear_predictor"].to_numpy(float) > cut)
