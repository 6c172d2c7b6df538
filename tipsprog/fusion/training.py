"""Training core: per-fold preprocessing, then every cross-validation member trained at once as one batched
ensemble (torch.func.vmap over stacked weights), multi-task and staged, each member stopping early on its own
inner validation split."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypedDict, cast

import numpy as np
import torch
from torch.func import vmap

from tipsprog.fusion.batch import LABEL_AXES, MemberBatch, member_batch, prepare_member
from tipsprog.fusion.config import TrainConfig
from tipsprog.fusion.data import TrainingData
from tipsprog.fusion.ensemble import Ensemble, Member, layout_of
from tipsprog.fusion.guide import choose_residual_weights, set_guides
from tipsprog.fusion.losses import SurvivalIndex, cox_efron_nll, masked_bce, masked_huber
from tipsprog.fusion.models import ClinicallyGuided, build_model, is_guided
from tipsprog.fusion.splits import MemberPlan
from tipsprog.journal import TrainingJournal


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
    return (
        weights["survival"] * cox_efron_nll(risk, index, rows) / events
        + weights["ohe"] * masked_bce(outputs["ohe"].float(), labels["ohe"], rows, labels["pos_weight"])
        + weights["ppg"] * masked_huber(outputs["ppg"].float(), labels["ppg"], rows)
    )


@dataclass
class _StageResult:
    """Per-member best epoch of a stage and the loss histories ([epochs, members])."""

    best_epoch: list[int]
    train_loss: list[torch.Tensor]
    validation_loss: list[torch.Tensor]


class _Progress(TypedDict):
    """The training state kept between stages: stages complete, epochs run, best epochs and loss histories per member."""

    stage: int
    elapsed: list[int]
    best_epochs: list[list[int]]
    history: dict[str, list[torch.Tensor]]


def stopped_at(best_epoch: int, stage: dict) -> int:
    """The epoch at which a member trained alone stops in a stage: `patience` epochs without improvement after
    its best, or the stage's last (what each member's schedule counts, batched or not)."""
    return min(stage["max_epochs"], best_epoch + stage["patience"])


def _train_stage(
    ensemble: Ensemble,
    batch: MemberBatch,
    stage: dict,
    config: TrainConfig,
    elapsed: list[int],
    checkpoint: Callable[[Callable[[], dict], str], None],
    saved: dict | None,
) -> _StageResult:
    """One stage for every member at once, after each member's `elapsed` epochs run in earlier stages; each member
    keeps the weights of its best inner-validation epoch.

    After every epoch `checkpoint` is offered the stage's state; `saved` is such a state to continue from.
    """
    weights = stage["loss_weights"]

    def task(outputs: dict, rows: torch.Tensor, labels: dict) -> torch.Tensor:
        return cast(
            torch.Tensor,
            sum(member_task_loss(part, rows, labels, weights, batch.index) for part in ensemble.base.loss_outputs(outputs)),
        )

    task_loss = vmap(task, in_dims=(0, 0, LABEL_AXES))
    members = batch.fit_rows.shape[0]
    device = batch.fit_rows.device
    optimiser = torch.optim.AdamW(
        _parameter_groups(ensemble.params, config.learning_rate, stage["shared_lr_scale"]), weight_decay=config.weight_decay
    )
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
        checkpoint(
            lambda: {
                "epoch": epoch,
                "optimiser": optimiser.state_dict(),
                "best": best,
                "best_loss": best_loss,
                "best_epoch": best_epoch,
                "waited": waited,
                "train_history": train_history,
                "validation_history": validation_history,
            },
            f"stage {stage['name']} epoch {epoch}",
        )
    with torch.no_grad():
        for key, value in ensemble.params.items():
            value.copy_(best[key])
    return _StageResult(best_epoch.tolist(), train_history, validation_history)


def train_ensemble(
    data: TrainingData,
    plans: list[MemberPlan],
    config: TrainConfig,
    device: torch.device,
    progress: Callable[[str], None] | None = None,
    journal: TrainingJournal | None = None,
) -> list[Member]:
    """Train every planned member at once: shared forward pass over stacked weights, per-member losses on its
    own fit rows, per-member early stopping on its own validation rows (stage by stage). With a journal, the
    training state is saved as it goes and a resumed run continues from the saved epoch."""
    prepared = [prepare_member(data, plan, config) for plan in plans]
    guided = is_guided(config.model, data.matrices, config.clinical_offset)
    models = []
    for plan, prep in zip(plans, prepared):
        torch.manual_seed(plan.seed)
        models.append(
            build_model(
                config.model, layout_of(prep.preprocessors), config.hidden, config.dropout, config.model_options(), guided
            )
        )
    if guided:
        penalties = set_guides([cast(ClinicallyGuided, m) for m in models], data, plans, prepared, config.clinical_cox_penalizer)
        if progress and "biomarkers" in data.matrices:
            progress("biomarker penalty of the linear guide per fold: " + ", ".join(f"{p:g}" for p in penalties))
    models = [model.to(device) for model in models]
    ensemble = Ensemble(models, device)
    batch = member_batch(data, plans, prepared, device)
    progress_state: _Progress = {
        "stage": 0,
        "elapsed": [0] * len(plans),
        "best_epochs": [[] for _ in plans],
        "history": {"train": [], "validation": []},
    }
    saved = journal.load() if journal else None
    if saved:
        ensemble.load_weights(saved["weights"])
        progress_state = _Progress(
            stage=saved["stage"], elapsed=saved["elapsed"], best_epochs=saved["best_epochs"], history=saved["history"]
        )

    def checkpoint(stage_state: Callable[[], dict | None], position: str, force: bool = False) -> None:
        if journal:
            done = f"{progress_state['stage']} of {len(config.stages)} stages complete"
            journal.save(
                lambda: {**progress_state, "weights": ensemble.weights(), "stage_state": stage_state()},
                f"{position}, {done}" if position else done,
                force,
            )

    for index in range(progress_state["stage"], len(config.stages)):
        stage = config.stages[index]
        resumed = saved["stage_state"] if saved and index == saved["stage"] else None
        result = _train_stage(ensemble, batch, stage, config, progress_state["elapsed"], checkpoint, resumed)
        progress_state["stage"] = index + 1
        progress_state["elapsed"] = [
            run + stopped_at(best, stage) for run, best in zip(progress_state["elapsed"], result.best_epoch)
        ]
        progress_state["history"]["train"] += result.train_loss
        progress_state["history"]["validation"] += result.validation_loss
        for member, epoch in enumerate(result.best_epoch):
            progress_state["best_epochs"][member].append(epoch)
        checkpoint(lambda: None, "", force=True)
        if progress:
            progress(
                f"stage {stage['name']}: {len(plans)} members, best epochs {min(result.best_epoch)}–{max(result.best_epoch)}"
            )
    if guided:
        weights = choose_residual_weights(ensemble, batch, plans)
        if progress:
            by_fold = {plan.fold: weight for plan, weight in zip(plans, weights)}
            progress("residual weight on the clinical Cox per fold: " + ", ".join(f"{w:.1f}" for w in by_fold.values()))
    history, best_epochs = progress_state["history"], progress_state["best_epochs"]
    train_loss, validation_loss = (torch.stack(history[k]).T.tolist() for k in ("train", "validation"))
    return [
        Member(
            plan.fold,
            plan.seed,
            prep.preprocessors,
            ensemble.state_dict(i),
            prep.ppg_mean,
            prep.ppg_std,
            best_epochs=best_epochs[i],
            train_loss=train_loss[i],
            validation_loss=validation_loss[i],
            ohe_logit_offset=float(np.log(max(prep.pos_weight, 1e-6))),
            repeat=plan.repeat,
        )
        for i, (plan, prep) in enumerate(zip(plans, prepared))
    ]
