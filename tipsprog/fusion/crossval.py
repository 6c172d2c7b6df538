"""(Repeated) cross-validation: every member trained at once, each test fold predicted by its own members, with
the clinical Cox of the same training rows beside it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from tipsprog.fusion.clinical_cox import fit_clinical_cox
from tipsprog.fusion.config import TrainConfig
from tipsprog.fusion.data import TrainingData
from tipsprog.fusion.ensemble import Member, calibrate_members, predict_members
from tipsprog.fusion.splits import plan_members, repeated_splits
from tipsprog.fusion.training import train_ensemble
from tipsprog.journal import TrainingJournal
from tipsprog.survival import BreslowBaseline


@dataclass
class CrossValidation:
    """Everything cross-validation produced: members, out-of-fold predictions (averaged over repeats) and the
    per-repeat risks, test folds and per-fold Breslow baselines that survival curves need."""

    members: list[Member]
    folds: np.ndarray
    oof: dict[str, np.ndarray]
    per_repeat: dict[str, np.ndarray]
    baselines: dict[str, list[BreslowBaseline]]


OOF_COLUMNS = ("risk", "ohe_probability", "ppg_post", "risk_cut", "ohe_threshold", "clinical_cox_risk", "clinical_cox_cut")


def cross_validate(
    data: TrainingData,
    config: TrainConfig,
    cv_mode: str,
    device: torch.device,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    journal: TrainingJournal | None = None,
) -> CrossValidation:
    """(Repeated) K-fold or leave-one-center-out CV: all members trained at once, each test fold predicted once per repeat."""
    repeats = repeated_splits(data.event, data.centers, config, cv_mode, seed)
    plans = [plan for repeat, splits in enumerate(repeats) for plan in plan_members(data, splits, config, seed, repeat)]
    members = train_ensemble(data, plans, config, device, progress, journal)
    n = len(data.patient_ids)
    per_repeat = {c: np.full((n, len(repeats)), np.nan) for c in OOF_COLUMNS}
    folds = np.full((n, len(repeats)), -1)
    baselines: dict[str, list] = {"model": [], "clinical_cox": []}
    for repeat, splits in enumerate(repeats):
        for index, (train_rows, test_rows) in enumerate(splits):
            fold = repeat * len(splits) + index
            fold_members = [m for m in members if m.fold == fold]
            train_prediction = predict_members(fold_members, data.matrices, train_rows, config, device)
            calibrate_members(fold_members, train_prediction, data, train_rows)
            test_prediction = predict_members(fold_members, data.matrices, test_rows, config, device)
            for key in ("risk", "ohe_probability", "ppg_post"):
                per_repeat[key][test_rows, repeat] = test_prediction[key].mean(axis=0)
            per_repeat["risk_cut"][test_rows, repeat] = np.median(train_prediction["risk"].mean(axis=0))
            per_repeat["ohe_threshold"][test_rows, repeat] = np.mean([m.ohe_threshold for m in fold_members])
            baselines["model"].append(
                BreslowBaseline.fit(train_prediction["risk"].mean(axis=0), data.time[train_rows], data.event[train_rows])
            )
            if "clinical" in data.matrices:
                cox = fit_clinical_cox(data, train_rows, config.clinical_cox_penalizer)
                per_repeat["clinical_cox_risk"][test_rows, repeat] = cox.risk(data.matrices["clinical"][test_rows])
                per_repeat["clinical_cox_cut"][test_rows, repeat] = cox.cut
                baselines["clinical_cox"].append(cox.baseline)
            folds[test_rows, repeat] = fold
    oof = {key: values.mean(axis=1) for key, values in per_repeat.items()}
    return CrossValidation(members, folds, oof, {k: per_repeat[k] for k in ("risk", "clinical_cox_risk")}, baselines)
