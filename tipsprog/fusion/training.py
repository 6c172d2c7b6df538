"""Training core: per-fold preprocessing, then every cross-validation member trained at once as one batched
ensemble (torch.func.vmap over stacked weights), multi-task and staged, each member stopping early on its own
inner validation split."""

from __future__ import annotations

import copy
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import torch
from lifelines import CoxPHFitter
from lifelines.exceptions import ConvergenceError, ConvergenceWarning
from sklearn.metrics import roc_curve
from sklearn.model_selection import StratifiedKFold, train_test_split
from torch.func import functional_call, stack_module_state, vmap

from tipsprog.fusion.config import TrainConfig
from tipsprog.errors import InputError
from tipsprog.fusion.data import ModalityPreprocessor, fit_preprocessors
from tipsprog.fusion.losses import SurvivalIndex, cox_efron_nll, masked_bce, masked_huber
from tipsprog.fusion.models import GUIDE_MODALITIES, FusionModel, Layout, build_model, is_guided
from tipsprog.checkpoints import TrainingJournal


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

    def subset(self, rows: np.ndarray) -> TrainingData:
        """The same cohort restricted to `rows`."""
        return TrainingData([self.patient_ids[r] for r in rows], self.centers[rows], {m: v[rows] for m, v in self.matrices.items()},
                            self.feature_names, self.feature_groups, self.time[rows], self.event[rows], self.ohe[rows],
                            self.ppg_post[rows])

    def outcomes(self) -> dict[str, np.ndarray]:
        """Observed outcome columns."""
        return {"time": self.time, "event": self.event, "ohe": self.ohe, "ppg_post": self.ppg_post}


@dataclass
class Member:
    """One trained ensemble member: its fold's preprocessing, weights, baseline and cut-offs."""

    fold: int
    seed: int
    preprocessors: dict[str, ModalityPreprocessor]
    state_dict: dict[str, torch.Tensor]
    ppg_mean: float
    ppg_std: float
    baseline_times: list[float] = field(default_factory=list)
    baseline_cumhaz: list[float] = field(default_factory=list)
    ohe_threshold: float = 0.5
    ohe_logit_offset: float = 0.0
    best_epochs: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    repeat: int = 0
    risk_center: float = 0.0

    @property
    def layout(self) -> dict[str, Layout]:
        """Token layout of each modality, as the fitted preprocessors produce it."""
        return layout_of(self.preprocessors)


def layout_of(preprocessors: dict[str, ModalityPreprocessor]) -> dict[str, Layout]:
    """Token layout of each modality, as its fitted preprocessor produces it."""
    return {m: Layout(p.token_names, p.width) for m, p in preprocessors.items()}


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


def breslow(risk: np.ndarray, time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Breslow cumulative baseline hazard at the distinct event times."""
    known = np.isfinite(time) & np.isfinite(event)
    risk, time, event = risk[known], time[known], event[known]
    hazard = np.exp(risk - risk.max())
    event_times = np.unique(time[event == 1])
    deaths = np.array([(event[time == t] == 1).sum() for t in event_times])
    at_risk = np.array([hazard[time >= t].sum() for t in event_times])
    return event_times, np.cumsum(deaths / at_risk) * np.exp(-risk.max())


def baseline_at(times: np.ndarray, cumhaz: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Breslow cumulative baseline hazard H0 evaluated at arbitrary times (a right-continuous step function)."""
    index = np.searchsorted(times, at, side="right") - 1
    return np.where(index >= 0, np.asarray(cumhaz)[np.clip(index, 0, None)], 0.0)


def survival_at(times: np.ndarray, cumhaz: np.ndarray, risk: np.ndarray, horizons: np.ndarray) -> np.ndarray:
    """S(t | risk) = exp(−H0(t)·exp(risk)) at each horizon, [patients, horizons]."""
    return np.exp(-np.exp(risk)[:, None] * baseline_at(times, cumhaz, horizons)[None, :])


@dataclass
class MemberPlan:
    """Which rows one ensemble member learns from, stops on, and is scored on (fold ids run on across repeats)."""

    repeat: int
    fold: int
    seed: int
    train_rows: np.ndarray
    fit_rows: np.ndarray
    val_rows: np.ndarray


def repeated_splits(event: np.ndarray, centers: np.ndarray, config: TrainConfig, mode: str,
                    seed: int) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """The splits of every repeat, each reshuffled (leave-one-center-out is deterministic: one repeat)."""
    if mode == "center" and config.repeats > 1:
        raise InputError("--cv center has one split per center; repeats must be 1")
    return [cv_splits(event, centers, config.folds, mode, seed + repeat) for repeat in range(config.repeats)]


def plan_members(data: TrainingData, splits: list[tuple[np.ndarray, np.ndarray]], config: TrainConfig,
                 seed: int, repeat: int = 0) -> list[MemberPlan]:
    """Folds × seeds members of one repeat, each with its own inner split of its training fold."""
    plans = []
    for index, (train_rows, _) in enumerate(splits):
        fold = repeat * len(splits) + index
        for s in range(config.seeds):
            member_seed = seed * 100_000 + fold * 100 + s
            fit_rows, val_rows = inner_split(train_rows, data.event, config.validation_fraction, member_seed)
            plans.append(MemberPlan(repeat, fold, member_seed, train_rows, fit_rows, val_rows))
    return plans


@dataclass
class _Prepared:
    """One member's training-fold preprocessing and label statistics."""

    preprocessors: dict[str, ModalityPreprocessor]
    ppg_mean: float
    ppg_std: float
    pos_weight: float


def _prepare(data: TrainingData, plan: MemberPlan, config: TrainConfig) -> _Prepared:
    """Fit imputation, scaling and token PCA, ppg_post standardisation and the OHE class weight on training rows."""
    rows = plan.train_rows
    preprocessors = fit_preprocessors(data.matrices, data.feature_groups, rows, config.imaging_width)
    ppg_known = data.ppg_post[rows][~np.isnan(data.ppg_post[rows])]
    ppg_mean = float(ppg_known.mean()) if len(ppg_known) else 0.0
    ppg_std = float(ppg_known.std()) if len(ppg_known) > 1 and ppg_known.std() > 0 else 1.0
    ohe_train = data.ohe[rows][~np.isnan(data.ohe[rows])]
    pos_weight = float((ohe_train == 0).sum() / max((ohe_train == 1).sum(), 1))
    return _Prepared(preprocessors, ppg_mean, ppg_std, pos_weight)


def _row_mask(rows: np.ndarray, n: int) -> np.ndarray:
    """Boolean mask of `rows` among n patients."""
    mask = np.zeros(n, dtype=bool)
    mask[rows] = True
    return mask


def _parameter_groups(params: dict[str, torch.Tensor], lr: float, shared_scale: float) -> list[dict]:
    """Task heads at the stage's learning rate, everything else (the shared layers) scaled."""
    is_head = {k: k.startswith("heads.") or ".heads." in k for k in params}
    heads = [v for k, v in params.items() if is_head[k]]
    shared = [v for k, v in params.items() if not is_head[k]]
    return [g for g in ({"params": heads, "lr": lr}, {"params": shared, "lr": lr * shared_scale}) if g["params"]]


def mixed_precision(device: torch.device, train: bool) -> bool:
    """bf16 autocast: on CUDA while training; never for predictions (risks, survival and cut-offs need float32)."""
    return device.type == "cuda" and train


class Ensemble:
    """Stacked weights of all members and their vmapped forward pass."""

    def __init__(self, models: list[FusionModel], device: torch.device):
        self.params, self.buffers = stack_module_state(models)
        self.base = copy.deepcopy(models[0]).to("meta")
        self.device = device

    def forward(self, inputs: dict[str, torch.Tensor], train: bool) -> dict:
        """Every member's outputs on every row ([members, rows]); bf16 autocast on CUDA while training only."""
        self.base.train(train)

        def one(params: dict, buffers: dict, member_inputs: dict) -> dict:
            return functional_call(self.base, (params, buffers), (member_inputs,))

        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=mixed_precision(self.device, train)):
            return vmap(one, randomness="different")(self.params, self.buffers, inputs)

    def state_dict(self, member: int) -> dict[str, torch.Tensor]:
        """One member's weights as an ordinary state dict."""
        return {k: v[member].detach().cpu().clone() for k, v in {**self.params, **self.buffers}.items()}

    def weights(self) -> dict[str, torch.Tensor]:
        """Every member's stacked weights and buffers (a copy, for a training checkpoint)."""
        return {k: v.detach().clone() for k, v in {**self.params, **self.buffers}.items()}

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Overwrite the stacked weights and buffers with a checkpoint's."""
        with torch.no_grad():
            for key, value in {**self.params, **self.buffers}.items():
                value.copy_(weights[key])


def member_task_loss(outputs: dict, rows: torch.Tensor, labels: dict, weights: dict, index: SurvivalIndex) -> torch.Tensor:
    """One member's weighted sum of per-event Cox NLL, class-weighted BCE and Huber over `rows`."""
    risk = outputs["risk"].float()
    events = (rows & index.known_event).sum().clamp_min(1)
    return (weights["survival"] * cox_efron_nll(risk, index, rows) / events
            + weights["ohe"] * masked_bce(outputs["ohe"].float(), labels["ohe"], rows, labels["pos_weight"])
            + weights["ppg"] * masked_huber(outputs["ppg"].float(), labels["ppg"], rows))


def stacked_inputs(preprocessors: list[dict[str, ModalityPreprocessor]], matrices: dict[str, np.ndarray],
                    rows: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    """Each member's own preprocessing of the selected rows, stacked: {modality: [members, rows, tokens, width]}."""
    return {m: torch.stack([torch.from_numpy(p[m].transform(matrices[m][rows])) for p in preprocessors]).to(device)
            for m in matrices}


@dataclass
class _Batch:
    """Everything the training loop feeds the vmapped loss: inputs, row masks and labels of every member."""

    inputs: dict[str, torch.Tensor]
    fit_rows: torch.Tensor
    val_rows: torch.Tensor
    labels: dict[str, torch.Tensor]
    index: SurvivalIndex


def _batch(data: TrainingData, plans: list[MemberPlan], prepared: list[_Prepared], device: torch.device) -> _Batch:
    """Tensors of the whole ensemble; OHE labels are shared by all members, ppg_post is standardised per member."""
    n = len(data.patient_ids)
    inputs = stacked_inputs([p.preprocessors for p in prepared], data.matrices, np.arange(n), device)
    fit_rows = torch.from_numpy(np.stack([_row_mask(p.fit_rows, n) for p in plans])).to(device)
    val_rows = torch.from_numpy(np.stack([_row_mask(p.val_rows, n) for p in plans])).to(device)
    labels = {"ohe": torch.from_numpy(data.ohe.astype(np.float32)).to(device),
              "ppg": torch.from_numpy(np.stack([(data.ppg_post - p.ppg_mean) / p.ppg_std for p in prepared]).astype(np.float32)).to(device),
              "pos_weight": torch.tensor([p.pos_weight for p in prepared], dtype=torch.float32, device=device)}
    return _Batch(inputs, fit_rows, val_rows, labels, SurvivalIndex.build(data.time, data.event, device))


LABEL_AXES = {"ohe": None, "ppg": 0, "pos_weight": 0}


@dataclass
class _StageResult:
    """Per-member best epoch of a stage and the loss histories ([epochs, members])."""

    best_epoch: list[int]
    train_loss: list[torch.Tensor]
    validation_loss: list[torch.Tensor]


def stopped_at(best_epoch: int, stage: dict) -> int:
    """The epoch at which a member trained alone stops in a stage: `patience` epochs without improvement after
    its best, or the stage's last (what each member's schedule counts, batched or not)."""
    return min(stage["max_epochs"], best_epoch + stage["patience"])


def _train_stage(ensemble: Ensemble, batch: _Batch, stage: dict, config: TrainConfig, elapsed: list[int],
                 checkpoint: Callable[[Callable[[], dict], str], None], saved: dict | None) -> _StageResult:
    """One stage for every member at once, after each member's `elapsed` epochs run in earlier stages; each member
    keeps the weights of its best inner-validation epoch.

    After every epoch `checkpoint` is offered the stage's state; `saved` is such a state to continue from.
    """
    weights = stage["loss_weights"]

    def task(outputs: dict, rows: torch.Tensor, labels: dict) -> torch.Tensor:
        return sum(member_task_loss(part, rows, labels, weights, batch.index) for part in ensemble.base.loss_outputs(outputs))

    task_loss = vmap(task, in_dims=(0, 0, LABEL_AXES))
    members = batch.fit_rows.shape[0]
    device = batch.fit_rows.device
    optimiser = torch.optim.AdamW(_parameter_groups(ensemble.params, config.learning_rate, stage["shared_lr_scale"]),
                                  weight_decay=config.weight_decay)
    best = {k: v.detach().clone() for k, v in ensemble.params.items()}
    best_loss = torch.full((members,), torch.inf, device=device)
    best_epoch = torch.zeros(members, dtype=torch.long, device=device)
    waited = torch.zeros(members, dtype=torch.long, device=device)
    train_history, validation_history = [], []
    if saved:
        optimiser.load_state_dict(saved["optimiser"])
        best = {k: v.to(device) for k, v in saved["best"].items()}
        best_loss, best_epoch, waited = (saved[k].to(device) for k in ("best_loss", "best_epoch", "waited"))
        train_history, validation_history = list(saved["train_history"]), list(saved["validation_history"])
    for epoch in range(saved["epoch"] + 1 if saved else 1, stage["max_epochs"] + 1):
        outputs = ensemble.forward(batch.inputs, train=True)
        epochs_run = torch.tensor(elapsed, dtype=torch.float32, device=device) + epoch
        auxiliary = vmap(ensemble.base.auxiliary_loss)(outputs, batch.fit_rows, epochs_run)
        loss = task_loss(outputs, batch.fit_rows, batch.labels) + auxiliary
        optimiser.zero_grad(set_to_none=True)
        loss.sum().backward()
        optimiser.step()
        with torch.no_grad():
            val_loss = task_loss(ensemble.forward(batch.inputs, train=False), batch.val_rows, batch.labels)
            improved = (waited < stage["patience"]) & (val_loss < best_loss - 1e-4)
            for key, value in ensemble.params.items():
                best[key] = torch.where(improved.view((-1,) + (1,) * (value.ndim - 1)), value.detach(), best[key])
            best_loss = torch.where(improved, val_loss, best_loss)
            best_epoch = torch.where(improved, epoch, best_epoch)
            waited = torch.where(improved, 0, waited + 1)
        train_history.append(loss.detach().cpu())
        validation_history.append(val_loss.cpu())
        if not bool((waited < stage["patience"]).any()):
            break
        checkpoint(lambda: {"epoch": epoch, "optimiser": optimiser.state_dict(), "best": best, "best_loss": best_loss,
                            "best_epoch": best_epoch, "waited": waited, "train_history": train_history,
                            "validation_history": validation_history}, f"stage {stage['name']} epoch {epoch}")
    with torch.no_grad():
        for key, value in ensemble.params.items():
            value.copy_(best[key])
    return _StageResult(best_epoch.tolist(), train_history, validation_history)


RESIDUAL_WEIGHTS = np.linspace(0.0, 1.0, 11)
RESIDUAL_MARGIN_NATS = 1.92  # half the 95% quantile of χ²(1): a likelihood-ratio test for the one added weight
BIOMARKER_PENALTIES = (np.inf, 1.0, 0.3, 0.1)  # ridge penalties the guide chooses among for the biomarkers (inf: left out)
INNER_FOLDS = 5
CONSTANT_SD = 1e-6  # a standardised column varying less than this is constant up to float32 rounding


def cox_coefficients(standardised: np.ndarray, time: np.ndarray, event: np.ndarray,
                     penalizer: float | np.ndarray) -> np.ndarray:
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
    raise InputError(f"the penalised Cox does not converge on {len(time)} patients with {int(event.sum())} events; "
                     "add patients or leave out the clinical columns that separate them")


def _inner_cv_nll(standardised: np.ndarray, time: np.ndarray, event: np.ndarray, penalizer: np.ndarray) -> float:
    """Cox NLL of the pooled inner-cross-validated linear predictors (5 folds stratified by event): how well a
    penalty generalises within a training fold."""
    known = np.isfinite(time) & np.isfinite(event)
    standardised, time, event = standardised[known], time[known], event[known]
    risk = np.zeros(len(time))
    for fit, held in StratifiedKFold(INNER_FOLDS, shuffle=True, random_state=0).split(standardised, event):
        risk[held] = standardised[held] @ cox_coefficients(standardised[fit], time[fit], event[fit], penalizer)
    return float(cox_efron_nll(torch.from_numpy(risk), SurvivalIndex.build(time, event)))


def guide_penalties(standardised: dict[str, np.ndarray], time: np.ndarray, event: np.ndarray,
                    clinical_penalizer: float) -> np.ndarray:
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


def _guide(models: list[FusionModel], data: TrainingData, plans: list[MemberPlan], prepared: list[_Prepared],
           penalizer: float) -> list[float]:
    """The linear Cox guide of each fold (clinical and biomarker tokens), with the penalties chosen on the fold's
    training rows and fitted on all of them (like the clinical Cox it must not fall behind), set in every member of
    the fold; returns each fold's biomarker penalty (inf: biomarkers left out of the guide)."""
    guides: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for model, plan, prep in zip(models, plans, prepared):
        if plan.fold not in guides:
            rows = plan.train_rows
            standardised = {m: prep.preprocessors[m].transform_flat(data.matrices[m][rows]) for m in model.guide}
            penalties = guide_penalties(standardised, data.time[rows], data.event[rows], penalizer)
            columns = np.hstack([standardised[m] for m in model.guide])
            guides[plan.fold] = (penalties, cox_coefficients(columns, data.time[rows], data.event[rows], penalties))
        widths = np.cumsum([model.layout_width(m) for m in model.guide])[:-1]
        for m, part in zip(model.guide, np.split(guides[plan.fold][1], widths)):
            getattr(model, f"{m}_coefficients").copy_(torch.from_numpy(part))
    return [float(penalties[-1]) for penalties, _ in guides.values()]


def residual_weight(losses: np.ndarray) -> float:
    """The fold's residual weight from its members' inner-validation Cox NLL [members, RESIDUAL_WEIGHTS]: the weight
    minimising their mean, kept only when that mean beats weight 0 by the likelihood-ratio margin. The mean, not the
    sum: each member's improvement is measured on its own validation rows, which also stopped it, so five members
    clearing the margin together must not count as five tests passed."""
    mean = losses.mean(axis=0)
    best = int(np.argmin(mean))
    return float(RESIDUAL_WEIGHTS[best]) if mean[0] - mean[best] > RESIDUAL_MARGIN_NATS else 0.0


@torch.no_grad()
def choose_residual_weights(ensemble: Ensemble, batch: _Batch, plans: list[MemberPlan]) -> list[float]:
    """Per fold, the residual weight (residual_weight) from its members' Cox NLL on their own inner validation rows,
    set in every member of the fold; returns each member's weight."""
    outputs = ensemble.forward(batch.inputs, train=False)
    clinical, residual = outputs["clinical_risk"].float(), outputs["residual_risk"].float()
    chosen = [1.0] * len(plans)
    for fold in sorted({plan.fold for plan in plans}):
        members = [i for i, plan in enumerate(plans) if plan.fold == fold]
        losses = np.array([[float(cox_efron_nll(clinical[i] + weight * residual[i], batch.index, batch.val_rows[i]))
                            for weight in RESIDUAL_WEIGHTS] for i in members])
        for i in members:
            chosen[i] = residual_weight(losses)
    ensemble.buffers["residual_weight"].copy_(torch.tensor(chosen, dtype=ensemble.buffers["residual_weight"].dtype))
    return chosen


def train_ensemble(data: TrainingData, plans: list[MemberPlan], config: TrainConfig, device: torch.device,
                   progress: Callable[[str], None] | None = None, journal: TrainingJournal | None = None) -> list[Member]:
    """Train every planned member at once: shared forward pass over stacked weights, per-member losses on its
    own fit rows, per-member early stopping on its own validation rows (stage by stage). With a journal, the
    training state is saved as it goes and a resumed run continues from the saved epoch."""
    prepared = [_prepare(data, plan, config) for plan in plans]
    guided = is_guided(config.model, data.matrices, config.clinical_offset)
    models = []
    for plan, prep in zip(plans, prepared):
        torch.manual_seed(plan.seed)
        models.append(build_model(config.model, layout_of(prep.preprocessors), config.hidden, config.dropout,
                                  config.model_options(), guided))
    if guided:
        penalties = _guide(models, data, plans, prepared, config.clinical_cox_penalizer)
        if progress and "biomarkers" in data.matrices:
            progress("biomarker penalty of the linear guide per fold: " + ", ".join(f"{p:g}" for p in penalties))
    models = [model.to(device) for model in models]
    ensemble = Ensemble(models, device)
    batch = _batch(data, plans, prepared, device)
    progress_state = {"stage": 0, "elapsed": [0] * len(plans), "best_epochs": [[] for _ in plans], "history": {"train": [], "validation": []}}
    saved = journal.load() if journal else None
    if saved:
        ensemble.load_weights(saved["weights"])
        progress_state = {key: saved[key] for key in progress_state}

    def checkpoint(stage_state: Callable[[], dict], position: str, force: bool = False) -> None:
        if journal:
            done = f"{progress_state['stage']} of {len(config.stages)} stages complete"
            journal.save(lambda: {**progress_state, "weights": ensemble.weights(), "stage_state": stage_state()},
                         f"{position}, {done}" if position else done, force)

    for index in range(progress_state["stage"], len(config.stages)):
        stage = config.stages[index]
        resumed = saved["stage_state"] if saved and index == saved["stage"] else None
        result = _train_stage(ensemble, batch, stage, config, progress_state["elapsed"], checkpoint, resumed)
        progress_state["stage"] = index + 1
        progress_state["elapsed"] = [run + stopped_at(best, stage) for run, best in zip(progress_state["elapsed"], result.best_epoch)]
        progress_state["history"]["train"] += result.train_loss
        progress_state["history"]["validation"] += result.validation_loss
        for member, epoch in enumerate(result.best_epoch):
            progress_state["best_epochs"][member].append(epoch)
        checkpoint(lambda: None, "", force=True)
        if progress:
            progress(f"stage {stage['name']}: {len(plans)} members, best epochs {min(result.best_epoch)}–{max(result.best_epoch)}")
    if guided:
        weights = choose_residual_weights(ensemble, batch, plans)
        if progress:
            by_fold = {plan.fold: weight for plan, weight in zip(plans, weights)}
            progress("residual weight on the clinical Cox per fold: " + ", ".join(f"{w:.1f}" for w in by_fold.values()))
    history, best_epochs = progress_state["history"], progress_state["best_epochs"]
    train_loss, validation_loss = (torch.stack(history[k]).T.tolist() for k in ("train", "validation"))
    return [Member(plan.fold, plan.seed, prep.preprocessors, ensemble.state_dict(i), prep.ppg_mean, prep.ppg_std,
                   best_epochs=best_epochs[i], train_loss=train_loss[i], validation_loss=validation_loss[i],
                   ohe_logit_offset=float(np.log(max(prep.pos_weight, 1e-6))), repeat=plan.repeat)
            for i, (plan, prep) in enumerate(zip(plans, prepared))]


def calibrate_members(members: list[Member], predictions: dict[str, np.ndarray], data: TrainingData,
                      train_rows: np.ndarray) -> None:
    """Each member's risk centre (its mean risk on its training rows, so that members and folds pool on one scale),
    then its Breslow baseline and OHE threshold from its predictions on its training rows; the
    predictions' risks are centred in place."""
    for index, (member, ohe) in enumerate(zip(members, predictions["ohe_probability"])):
        member.risk_center += float(predictions["risk"][index].mean())
        predictions["risk"][index] -= predictions["risk"][index].mean()
        risk = predictions["risk"][index]
        times, cumhaz = breslow(risk, data.time[train_rows], data.event[train_rows])
        member.baseline_times, member.baseline_cumhaz = times.tolist(), cumhaz.tolist()
        member.ohe_threshold = _youden_threshold(ohe, data.ohe[train_rows])


def _youden_threshold(probability: np.ndarray, label: np.ndarray) -> float:
    """Probability threshold maximising sensitivity + specificity on training predictions."""
    known = ~np.isnan(label)
    if len(np.unique(label[known])) < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(label[known], probability[known])
    return float(np.clip(thresholds[int(np.argmax(tpr - fpr))], 0.0, 1.0))


def member_ensemble(members: list[Member], config: TrainConfig, device: torch.device) -> Ensemble:
    """Trained members rebuilt from their weights and stacked for one vmapped forward pass."""
    models = []
    for member in members:
        model = build_model(config.model, member.layout, config.hidden, config.dropout, config.model_options(),
                            is_guided(config.model, member.layout, config.clinical_offset))
        model.load_state_dict(member.state_dict)
        models.append(model.to(device))
    return Ensemble(models, device)


@torch.no_grad()
def predict_members(members: list[Member], matrices: dict[str, np.ndarray], rows: np.ndarray, config: TrainConfig,
                    device: torch.device, ensemble: Ensemble | None = None) -> dict[str, np.ndarray]:
    """Every member's risk, OHE probability and ppg_post on the selected rows ([members, rows]), in one vmapped pass
    (over `ensemble`, the members already stacked, when a caller predicts many times).

    The OHE logit is shifted by −log(pos_weight): class-weighted BCE inflates the odds by that factor; each member's
    risk is centred on its training rows.
    """
    outputs = (ensemble or member_ensemble(members, config, device)).forward(
        stacked_inputs([m.preprocessors for m in members], matrices, rows, device), train=False)

    def column(values: list[float]) -> np.ndarray:
        return np.array(values)[:, None]

    risk, ohe_logit, ppg = (outputs[k].double().cpu().numpy() for k in ("risk", "ohe", "ppg"))
    return {"risk": risk - column([m.risk_center for m in members]),
            "ohe_probability": 1.0 / (1.0 + np.exp(-(ohe_logit - column([m.ohe_logit_offset for m in members])))),
            "ppg_post": ppg * column([m.ppg_std for m in members]) + column([m.ppg_mean for m in members])}


def ensemble_survival(members: list[Member], risk: np.ndarray, horizons: np.ndarray) -> np.ndarray:
    """Survival at the horizons from each member's own baseline and risk ([members, rows] → [members, rows, horizons])."""
    return np.stack([survival_at(np.array(m.baseline_times), np.array(m.baseline_cumhaz), member_risk, horizons)
                     for m, member_risk in zip(members, risk)])


@dataclass
class ClinicalCox:
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

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {**asdict(self), "preprocessor": self.preprocessor.to_dict()}

    @classmethod
    def from_dict(cls, values: dict) -> ClinicalCox:
        """Inverse of to_dict."""
        return cls(**{**values, "preprocessor": ModalityPreprocessor(**values["preprocessor"])})


def fit_clinical_cox(data: TrainingData, train_rows: np.ndarray, penalizer: float) -> ClinicalCox:
    """Fit the clinical-only Cox model on training rows (patients with a known follow-up)."""
    scaler = ModalityPreprocessor.fit(data.matrices["clinical"][train_rows], data.feature_groups["clinical"])
    standardised = scaler.transform_flat(data.matrices["clinical"][train_rows])
    coefficients = cox_coefficients(standardised, data.time[train_rows], data.event[train_rows], penalizer)
    train_risk = standardised @ coefficients
    times, cumhaz = breslow(train_risk, data.time[train_rows], data.event[train_rows])
    return ClinicalCox(scaler, coefficients.tolist(), times.tolist(), cumhaz.tolist(), float(np.median(train_risk)))


@dataclass
class CrossValidation:
    """Everything cross-validation produced: members, out-of-fold predictions (averaged over repeats) and the
    per-repeat risks, test folds and per-fold Breslow baselines that survival curves need."""

    members: list[Member]
    folds: np.ndarray
    oof: dict[str, np.ndarray]
    per_repeat: dict[str, np.ndarray]
    baselines: dict[str, list[tuple[np.ndarray, np.ndarray]]]


OOF_COLUMNS = ("risk", "ohe_probability", "ppg_post", "risk_cut", "ohe_threshold", "clinical_cox_risk", "clinical_cox_cut")


def cross_validate(data: TrainingData, config: TrainConfig, cv_mode: str, device: torch.device, seed: int = 0,
                   progress: Callable[[str], None] | None = None, journal: TrainingJournal | None = None) -> CrossValidation:
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
            baselines["model"].append(breslow(train_prediction["risk"].mean(axis=0), data.time[train_rows], data.event[train_rows]))
            if "clinical" in data.matrices:
                cox = fit_clinical_cox(data, train_rows, config.clinical_cox_penalizer)
                per_repeat["clinical_cox_risk"][test_rows, repeat] = cox.risk(data.matrices["clinical"][test_rows])
                per_repeat["clinical_cox_cut"][test_rows, repeat] = cox.cut
                baselines["clinical_cox"].append((np.array(cox.baseline_times), np.array(cox.baseline_cumhaz)))
            folds[test_rows, repeat] = fold
    oof = {key: values.mean(axis=1) for key, values in per_repeat.items()}
    return CrossValidation(members, folds, oof, {k: per_repeat[k] for k in ("risk", "clinical_cox_risk")}, baselines)


def predict_cohort(members: list[Member], matrices: dict[str, np.ndarray], config: TrainConfig, device: torch.device,
                   clinical_cox: ClinicalCox | None) -> dict[str, np.ndarray]:
    """Whole-ensemble predictions for patients no member trained on: member means, survival at the horizons, the
    members' risks ([patients, members], for survival curves) and the clinical Cox risk."""
    rows = np.arange(len(next(iter(matrices.values()))))
    prediction = predict_members(members, matrices, rows, config, device)
    horizons = np.array(config.horizons_days, dtype=float)
    survival = ensemble_survival(members, prediction["risk"], horizons).mean(axis=0)
    result = {key: values.mean(axis=0) for key, values in prediction.items()}
    result["member_risk"] = prediction["risk"].T
    result["ohe_threshold"] = np.full(len(rows), np.mean([m.ohe_threshold for m in members]))
    result.update({f"survival_{int(h)}d": survival[:, i] for i, h in enumerate(horizons)})
    if clinical_cox is not None and "clinical" in matrices:
        result["clinical_cox_risk"] = clinical_cox.risk(matrices["clinical"])
    return result
