"""Training core: per-fold preprocessing, multi-task training with inner early stopping, CV."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import torch
from lifelines import CoxPHFitter
from sklearn.metrics import roc_curve
from sklearn.model_selection import StratifiedKFold, train_test_split

from tipsprog.fusion.config import TrainConfig
from tipsprog.errors import InputError
from tipsprog.fusion.data import ModalityPreprocessor, fit_preprocessors, transform_all
from tipsprog.fusion.losses import cox_efron_nll, masked_bce, masked_huber
from tipsprog.fusion.models import build_model


@dataclass
class TrainingData:
    """Raw (unscaled) modality matrices and labels of the training cohort."""

    patient_ids: list[str]
    centers: np.ndarray
    matrices: dict[str, np.ndarray]
    feature_names: dict[str, list[str]]
    time: np.ndarray
    event: np.ndarray
    ohe: np.ndarray
    ppg_post: np.ndarray


@dataclass
class Member:
    """One trained ensemble member: its fold's preprocessing, weights, baseline and cut-offs."""

    fold: int
    seed: int
    preprocessors: dict[str, ModalityPreprocessor]
    state_dict: dict[str, torch.Tensor]
    modality_dims: dict[str, int]
    ppg_mean: float
    ppg_std: float
    baseline_times: list[float] = field(default_factory=list)
    baseline_cumhaz: list[float] = field(default_factory=list)
    risk_cut: float = 0.0
    ohe_threshold: float = 0.5
    ohe_logit_offset: float = 0.0
    best_epoch: int = 0


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
    event_label = np.where(np.isnan(event), "u", np.nan_to_num(event).astype(int).astype(str))
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
    """Split a training fold into fit and early-stopping validation rows, stratified by event."""
    strata = np.nan_to_num(event[train_rows], nan=-1)
    fit_rows, val_rows = train_test_split(train_rows, test_size=fraction, random_state=seed, stratify=strata)
    return np.sort(fit_rows), np.sort(val_rows)


def breslow(risk: np.ndarray, time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Breslow cumulative baseline hazard at the distinct event times."""
    known = ~np.isnan(time)
    risk, time, event = risk[known], time[known], event[known]
    hazard = np.exp(risk - risk.max())
    event_times = np.unique(time[event == 1])
    deaths = np.array([(event[time == t] == 1).sum() for t in event_times])
    at_risk = np.array([hazard[time >= t].sum() for t in event_times])
    return event_times, np.cumsum(deaths / at_risk) * np.exp(-risk.max())


def survival_at(times: np.ndarray, cumhaz: np.ndarray, risk: np.ndarray, horizons: np.ndarray) -> np.ndarray:
    """S(t | risk) = exp(−H0(t)·exp(risk)) at each horizon, [patients, horizons]."""
    index = np.searchsorted(times, horizons, side="right") - 1
    baseline = np.where(index >= 0, np.asarray(cumhaz)[np.clip(index, 0, None)], 0.0)
    return np.exp(-np.exp(risk)[:, None] * baseline[None, :])


def _tensors(values: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {m: torch.from_numpy(v).to(device) for m, v in values.items()}


def _target(values: np.ndarray, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(values[rows].astype(np.float32)).to(device)


def _multitask_loss(outputs: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], config: TrainConfig,
                    pos_weight: float) -> torch.Tensor:
    """Weighted sum of per-event Cox NLL, class-weighted BCE and Huber, missing labels masked."""
    events = torch.nan_to_num(labels["event"]).sum().clamp_min(1.0)
    weights = config.loss_weights
    return (weights["survival"] * cox_efron_nll(outputs["risk"], labels["time"], labels["event"]) / events
            + weights["ohe"] * masked_bce(outputs["ohe"], labels["ohe"], pos_weight)
            + weights["ppg"] * masked_huber(outputs["ppg"], labels["ppg"]))


def _labels(data: TrainingData, rows: np.ndarray, ppg_mean: float, ppg_std: float, device: torch.device) -> dict[str, torch.Tensor]:
    return {"time": _target(data.time, rows, device), "event": _target(data.event, rows, device),
            "ohe": _target(data.ohe, rows, device),
            "ppg": _target((data.ppg_post - ppg_mean) / ppg_std, rows, device)}


def _youden_threshold(probability: np.ndarray, label: np.ndarray) -> float:
    """Probability threshold maximising sensitivity + specificity on training predictions."""
    known = ~np.isnan(label)
    if len(np.unique(label[known])) < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(label[known], probability[known])
    return float(np.clip(thresholds[int(np.argmax(tpr - fpr))], 0.0, 1.0))


def train_member(data: TrainingData, train_rows: np.ndarray, config: TrainConfig, fold: int, seed: int,
                 device: torch.device) -> tuple[Member, np.ndarray]:
    """Fit preprocessing on the training fold, train with early stopping on its inner split.

    Returns the member and its risk on the training rows (which its baseline and cut-offs come from).
    """
    torch.manual_seed(seed)
    fit_rows, val_rows = inner_split(train_rows, data.event, config.validation_fraction, seed)
    preprocessors = fit_preprocessors(data.matrices, train_rows, config.imaging_components)
    ppg_known = data.ppg_post[train_rows][~np.isnan(data.ppg_post[train_rows])]
    ppg_mean = float(ppg_known.mean()) if len(ppg_known) else 0.0
    ppg_std = float(ppg_known.std()) if len(ppg_known) > 1 and ppg_known.std() > 0 else 1.0
    ohe_train = data.ohe[train_rows][~np.isnan(data.ohe[train_rows])]
    pos_weight = float((ohe_train == 0).sum() / max((ohe_train == 1).sum(), 1))
    dims = {m: p.width for m, p in preprocessors.items()}
    model = build_model(config.model, dims, config.hidden, config.dropout).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    fit_inputs = _tensors(transform_all(preprocessors, data.matrices, fit_rows), device)
    val_inputs = _tensors(transform_all(preprocessors, data.matrices, val_rows), device)
    fit_labels = _labels(data, fit_rows, ppg_mean, ppg_std, device)
    val_labels = _labels(data, val_rows, ppg_mean, ppg_std, device)
    best_loss, best_state, best_epoch, waited = np.inf, None, 0, 0
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        loss = _multitask_loss(model(fit_inputs), fit_labels, config, pos_weight)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        model.eval()
        with torch.no_grad():
            val_loss = float(_multitask_loss(model(val_inputs), val_labels, config, pos_weight))
        if val_loss < best_loss - 1e-4:
            best_loss, best_epoch, waited = val_loss, epoch, 0
            best_state = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
        else:
            waited += 1
            if waited >= config.patience:
                break
    member = Member(fold, seed, preprocessors, best_state, dims, ppg_mean, ppg_std, best_epoch=best_epoch,
                    ohe_logit_offset=float(np.log(max(pos_weight, 1e-6))))
    train_prediction = predict_member(member, data.matrices, train_rows, config, device)
    times, cumhaz = breslow(train_prediction["risk"], data.time[train_rows], data.event[train_rows])
    member.baseline_times, member.baseline_cumhaz = times.tolist(), cumhaz.tolist()
    member.risk_cut = float(np.median(train_prediction["risk"]))
    member.ohe_threshold = _youden_threshold(train_prediction["ohe_probability"], data.ohe[train_rows])
    return member, train_prediction["risk"]


@torch.no_grad()
def predict_member(member: Member, matrices: dict[str, np.ndarray], rows: np.ndarray, config: TrainConfig,
                   device: torch.device) -> dict[str, np.ndarray]:
    """One member's risk, OHE probability and ppg_post for the selected rows.

    The OHE logit is shifted by −log(pos_weight): class-weighted BCE inflates the odds by that factor.
    """
    model = build_model(config.model, member.modality_dims, config.hidden, config.dropout).to(device)
    model.load_state_dict(member.state_dict)
    model.eval()
    outputs = model(_tensors(transform_all(member.preprocessors, matrices, rows), device))
    return {"risk": outputs["risk"].double().cpu().numpy(),
            "ohe_probability": torch.sigmoid(outputs["ohe"] - member.ohe_logit_offset).double().cpu().numpy(),
            "ppg_post": outputs["ppg"].double().cpu().numpy() * member.ppg_std + member.ppg_mean}


def fit_clinical_cox(data: TrainingData, train_rows: np.ndarray, penalizer: float) -> tuple[ModalityPreprocessor, np.ndarray]:
    """Penalised lifelines Cox on the clinical matrix of a training fold: preprocessor and coefficients."""
    scaler = ModalityPreprocessor.fit(data.matrices["clinical"][train_rows])
    known = ~np.isnan(data.time[train_rows])
    rows = train_rows[known]
    frame = {f"x{i}": column for i, column in enumerate(scaler.transform(data.matrices["clinical"][rows]).T)}
    table = pd.DataFrame(frame).assign(time=data.time[rows], event=data.event[rows])
    fitter = CoxPHFitter(penalizer=penalizer).fit(table, "time", "event")
    return scaler, fitter.params_.to_numpy()


@dataclass
class CrossValidation:
    """Everything cross-validation produced: members and out-of-fold predictions."""

    members: list[Member]
    fold_of: np.ndarray
    oof: dict[str, np.ndarray]
    baselines: dict[str, list[tuple[np.ndarray, np.ndarray]]]


def cross_validate(data: TrainingData, config: TrainConfig, cv_mode: str, device: torch.device, seed: int = 0,
                   progress: Callable[[str], None] | None = None) -> CrossValidation:
    """K-fold (or leave-one-center-out) CV: train members per fold, predict each test fold once."""
    splits = cv_splits(data.event, data.centers, config.folds, cv_mode, seed)
    n = len(data.patient_ids)
    columns = ["risk", "ohe_probability", "ppg_post", "risk_cut", "ohe_threshold", "clinical_cox_risk", "clinical_cox_cut"]
    oof = {c: np.full(n, np.nan) for c in columns}
    fold_of = np.full(n, -1)
    members: list[Member] = []
    baselines: dict[str, list] = {"model": [], "clinical_cox": []}
    for fold, (train_rows, test_rows) in enumerate(splits):
        trained = [train_member(data, train_rows, config, fold, seed * 1000 + fold * 10 + s, device)
                   for s in range(config.seeds)]
        fold_members = [member for member, _ in trained]
        members += fold_members
        predictions = [predict_member(m, data.matrices, test_rows, config, device) for m in fold_members]
        for key in ("risk", "ohe_probability", "ppg_post"):
            oof[key][test_rows] = np.mean([p[key] for p in predictions], axis=0)
        oof["risk_cut"][test_rows] = np.mean([m.risk_cut for m in fold_members])
        oof["ohe_threshold"][test_rows] = np.mean([m.ohe_threshold for m in fold_members])
        train_risk = np.mean([risk for _, risk in trained], axis=0)
        baselines["model"].append(breslow(train_risk, data.time[train_rows], data.event[train_rows]))
        if "clinical" in data.matrices:
            scaler, coefficients = fit_clinical_cox(data, train_rows, config.clinical_cox_penalizer)
            cox_train = scaler.transform(data.matrices["clinical"][train_rows]) @ coefficients
            oof["clinical_cox_risk"][test_rows] = scaler.transform(data.matrices["clinical"][test_rows]) @ coefficients
            oof["clinical_cox_cut"][test_rows] = np.median(cox_train)
            baselines["clinical_cox"].append(breslow(cox_train, data.time[train_rows], data.event[train_rows]))
        fold_of[test_rows] = fold
        if progress:
            progress(f"fold {fold + 1}/{len(splits)}: best epochs {[m.best_epoch for m in fold_members]}")
    return CrossValidation(members, fold_of, oof, baselines)
