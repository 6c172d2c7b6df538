"""Training core: per-fold preprocessing, then every cross-validation member trained at once as one batched
ensemble (torch.func.vmap over stacked weights), multi-task and staged, each member stopping early on its own
inner validation split."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import vmap

from tipsprog.fusion.clinical_cox import RESIDUAL_MARGIN_NATS, cox_coefficients, guide_penalties
from tipsprog.fusion.config import TrainConfig
from tipsprog.fusion.data import ModalityPreprocessor, TrainingData, fit_preprocessors
from tipsprog.fusion.ensemble import Ensemble, Member, layout_of, stacked_inputs
from tipsprog.fusion.losses import (
    SurvivalIndex,
    cox_efron_nll,
    masked_bce,
    masked_huber,
)
from tipsprog.fusion.models import (
    FusionModel,
    build_model,
    is_guided,
)
from tipsprog.fusion.splits import MemberPlan
from tipsprog.journal import TrainingJournal


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


def member_task_loss(outputs: dict, rows: torch.Tensor, labels: dict, weights: dict, index: SurvivalIndex) -> torch.Tensor:
    """One member's weighted sum of per-event Cox NLL, class-weighted BCE and Huber over `rows`."""
    risk = outputs["risk"].float()
    events = (rows & index.known_event).sum().clamp_min(1)
    return (weights["survival"] * cox_efron_nll(risk, index, rows) / events
            + weights["ohe"] * masked_bce(outputs["ohe"].float(), labels["ohe"], rows, labels["pos_weight"])
            + weights["ppg"] * masked_huber(outputs["ppg"].float(), labels["ppg"], rows))


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


LABEL_AXES: dict[str, int | None] = {"ohe": None, "ppg": 0, "pos_weight": 0}


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
        # the state is built inside checkpoint(), at once, so the loop variables are the current ones
        checkpoint(lambda: {"epoch": epoch, "optimiser": optimiser.state_dict(), "best": best, "best_loss": best_loss,  # noqa: B023
                            "best_epoch": best_epoch, "waited": waited, "train_history": train_history,  # noqa: B023
                            "validation_history": validation_history}, f"stage {stage['name']} epoch {epoch}")
    with torch.no_grad():
        for key, value in ensemble.params.items():
            value.copy_(best[key])
    return _StageResult(best_epoch.tolist(), train_history, validation_history)


RESIDUAL_WEIGHTS = np.linspace(0.0, 1.0, 11)
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
