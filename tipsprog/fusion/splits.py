"""Patient-level cross-validation splits and the plan of which rows each ensemble member learns from, stops on
and is scored on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from tipsprog.errors import InputError
from tipsprog.fusion.config import TrainConfig
from tipsprog.fusion.data import TrainingData


def cv_splits(event: np.ndarray, centers: np.ndarray, folds: int, mode: str, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Patient-level splits: K-fold stratified by event and center, or leave-one-center-out."""
    rows = np.arange(len(event))
    if mode == "center":
        unique = sorted(set(centers))
        if len(unique) < 2:
            raise InputError("--cv center needs at least two centers")
        return [(rows[centers != c], rows[centers == c]) for c in unique]
    if mode != "kfold":
        raise InputError(f"--cv {mode}: choose kfold or center")
    event_label = np.nan_to_num(event).astype(int).astype(str)  # an unknown event is stratified as censored
    strata = np.char.add(np.char.add(event_label, "|"), centers.astype(str))
    labels, counts = np.unique(strata, return_counts=True)
    rare = np.isin(strata, labels[counts < folds])
    strata = np.where(rare, event_label, strata)
    if min(np.unique(strata, return_counts=True)[1]) < folds:
        strata = event_label
    if len(rows) < 2 * folds:
        raise InputError(f"{len(rows)} patients are too few for {folds}-fold cross-validation")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(rows, strata))


def inner_split(train_rows: np.ndarray, event: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a training fold into fit and early-stopping validation rows, stratified by event (unknown as censored)."""
    strata = np.nan_to_num(event[train_rows])
    fit_rows, val_rows = train_test_split(train_rows, test_size=fraction, random_state=seed, stratify=strata)
    return np.sort(fit_rows), np.sort(val_rows)


@dataclass
class MemberPlan:
    """Which rows one ensemble member learns from, stops on, and is scored on (fold ids run on across repeats)."""

    repeat: int
    fold: int
    seed: int
    train_rows: np.ndarray
    fit_rows: np.ndarray
    val_rows: np.ndarray


def repeated_splits(
    event: np.ndarray, centers: np.ndarray, config: TrainConfig, mode: str, seed: int
) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """The splits of every repeat, each reshuffled (leave-one-center-out is deterministic: one repeat)."""
    if mode == "center" and config.repeats > 1:
        raise InputError("--cv center has one split per center; repeats must be 1")
    return [cv_splits(event, centers, config.folds, mode, seed + repeat) for repeat in range(config.repeats)]


def plan_members(
    data: TrainingData, splits: list[tuple[np.ndarray, np.ndarray]], config: TrainConfig, seed: int, repeat: int = 0
) -> list[MemberPlan]:
    """Folds × seeds members of one repeat, each with its own inner split of its training fold."""
    plans = []
    for index, (train_rows, _) in enumerate(splits):
        fold = repeat * len(splits) + index
        for s in range(config.seeds):
            member_seed = seed * 100_000 + fold * 100 + s
            fit_rows, val_rows = inner_split(train_rows, data.event, config.validation_fraction, member_seed)
            plans.append(MemberPlan(repeat, fold, member_seed, train_rows, fit_rows, val_rows))
    return plans
