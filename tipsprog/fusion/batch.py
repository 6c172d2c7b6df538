"""Each ensemble member's inputs: its training fold's preprocessing and label statistics, and all members' inputs
and labels stacked into one batch for the vmapped forward pass."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tipsprog.fusion.config import TrainConfig
from tipsprog.fusion.data import ModalityPreprocessor, TrainingData, fit_preprocessors
from tipsprog.fusion.ensemble import stacked_inputs
from tipsprog.fusion.losses import SurvivalIndex
from tipsprog.fusion.splits import MemberPlan


@dataclass
class Prepared:
    """One member's training-fold preprocessing and label statistics."""

    preprocessors: dict[str, ModalityPreprocessor]
    ppg_mean: float
    ppg_std: float
    pos_weight: float


def prepare_member(data: TrainingData, plan: MemberPlan, config: TrainConfig) -> Prepared:
    """Fit imputation, scaling and token PCA, ppg_post standardisation and the OHE class weight on training rows."""
    rows = plan.train_rows
    preprocessors = fit_preprocessors(data.matrices, data.feature_groups, rows, config.imaging_width)
    ppg_known = data.ppg_post[rows][~np.isnan(data.ppg_post[rows])]
    ppg_mean = float(ppg_known.mean()) if len(ppg_known) else 0.0
    ppg_std = float(ppg_known.std()) if len(ppg_known) > 1 and ppg_known.std() > 0 else 1.0
    ohe_train = data.ohe[rows][~np.isnan(data.ohe[rows])]
    pos_weight = float((ohe_train == 0).sum() / max((ohe_train == 1).sum(), 1))
    return Prepared(preprocessors, ppg_mean, ppg_std, pos_weight)


def row_mask(rows: np.ndarray, n: int) -> np.ndarray:
    """Boolean mask of `rows` among n patients."""
    mask = np.zeros(n, dtype=bool)
    mask[rows] = True
    return mask


@dataclass
class MemberBatch:
    """Everything the training loop feeds the vmapped loss: inputs, row masks and labels of every member."""

    inputs: dict[str, torch.Tensor]
    fit_rows: torch.Tensor
    val_rows: torch.Tensor
    labels: dict[str, torch.Tensor]
    index: SurvivalIndex


def member_batch(data: TrainingData, plans: list[MemberPlan], prepared: list[Prepared], device: torch.device) -> MemberBatch:
    """Tensors of the whole ensemble; OHE labels are shared by all members, ppg_post is standardised per member."""
    n = len(data.patient_ids)
    inputs = stacked_inputs([p.preprocessors for p in prepared], data.matrices, np.arange(n), device)
    fit_rows = torch.from_numpy(np.stack([row_mask(p.fit_rows, n) for p in plans])).to(device)
    val_rows = torch.from_numpy(np.stack([row_mask(p.val_rows, n) for p in plans])).to(device)
    labels = {
        "ohe": torch.from_numpy(data.ohe.astype(np.float32)).to(device),
        "ppg": torch.from_numpy(np.stack([(data.ppg_post - p.ppg_mean) / p.ppg_std for p in prepared]).astype(np.float32)).to(
            device
        ),
        "pos_weight": torch.tensor([p.pos_weight for p in prepared], dtype=torch.float32, device=device),
    }
    return MemberBatch(inputs, fit_rows, val_rows, labels, SurvivalIndex.build(data.time, data.event, device))


LABEL_AXES: dict[str, int | None] = {"ohe": None, "ppg": 0, "pos_weight": 0}
