"""The linear guide every fusion model is a residual on (docs/models.md): the per-fold penalised Cox on the clinical
and biomarker tokens, set into each member, and the residual weight each fold's network earns on its validation rows."""

from __future__ import annotations

import numpy as np
import torch

from tipsprog.fusion.batch import MemberBatch, Prepared
from tipsprog.fusion.clinical_cox import RESIDUAL_MARGIN_NATS, cox_coefficients, guide_penalties
from tipsprog.fusion.data import TrainingData
from tipsprog.fusion.ensemble import Ensemble
from tipsprog.fusion.losses import cox_efron_nll
from tipsprog.fusion.models import ClinicallyGuided
from tipsprog.fusion.splits import MemberPlan

RESIDUAL_WEIGHTS = np.linspace(0.0, 1.0, 11)


def set_guides(
    models: list[ClinicallyGuided], data: TrainingData, plans: list[MemberPlan], prepared: list[Prepared], penalizer: float
) -> list[float]:
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
def choose_residual_weights(ensemble: Ensemble, batch: MemberBatch, plans: list[MemberPlan]) -> list[float]:
    """Per fold, the residual weight (residual_weight) from its members' Cox NLL on their own inner validation rows,
    set in every member of the fold; returns each member's weight."""
    outputs = ensemble.forward(batch.inputs, train=False)
    clinical, residual = outputs["clinical_risk"].float(), outputs["residual_risk"].float()
    chosen = [1.0] * len(plans)
    for fold in sorted({plan.fold for plan in plans}):
        members = [i for i, plan in enumerate(plans) if plan.fold == fold]
        losses = np.array(
            [
                [
                    float(cox_efron_nll(clinical[i] + weight * residual[i], batch.index, batch.val_rows[i]))
                    for weight in RESIDUAL_WEIGHTS
                ]
                for i in members
            ]
        )
        for i in members:
            chosen[i] = residual_weight(losses)
    ensemble.buffers["residual_weight"].copy_(torch.tensor(chosen, dtype=ensemble.buffers["residual_weight"].dtype))
    return chosen
