"""Trained ensemble members: their stacked, vmapped forward pass, per-member calibration (risk centre, Breslow
baseline, OHE threshold) and whole-ensemble predictions."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import roc_curve
from torch.func import functional_call, stack_module_state, vmap

from tipsprog.fusion.clinical_cox import ClinicalCoxFit
from tipsprog.fusion.config import TrainConfig
from tipsprog.fusion.data import ModalityPreprocessor, TrainingData
from tipsprog.fusion.models import FusionModel, Layout, build_model, is_guided
from tipsprog.survival import BreslowBaseline


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

    @property
    def baseline(self) -> BreslowBaseline:
        """The member's Breslow baseline (from its training rows)."""
        return BreslowBaseline.from_lists(self.baseline_times, self.baseline_cumhaz)


def layout_of(preprocessors: dict[str, ModalityPreprocessor]) -> dict[str, Layout]:
    """Token layout of each modality, as its fitted preprocessor produces it."""
    return {m: Layout(p.token_names, p.width) for m, p in preprocessors.items()}


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


def stacked_inputs(
    preprocessors: list[dict[str, ModalityPreprocessor]], matrices: dict[str, np.ndarray], rows: np.ndarray, device: torch.device
) -> dict[str, torch.Tensor]:
    """Each member's own preprocessing of the selected rows, stacked: {modality: [members, rows, tokens, width]}."""
    return {
        m: torch.stack([torch.from_numpy(p[m].transform(matrices[m][rows])) for p in preprocessors]).to(device) for m in matrices
    }


def calibrate_members(
    members: list[Member], predictions: dict[str, np.ndarray], data: TrainingData, train_rows: np.ndarray
) -> None:
    """Each member's risk centre (its mean risk on its training rows, so that members and folds pool on one scale),
    then its Breslow baseline and OHE threshold from its predictions on its training rows; the
    predictions' risks are centred in place."""
    for index, (member, ohe) in enumerate(zip(members, predictions["ohe_probability"])):
        member.risk_center += float(predictions["risk"][index].mean())
        predictions["risk"][index] -= predictions["risk"][index].mean()
        risk = predictions["risk"][index]
        baseline = BreslowBaseline.fit(risk, data.time[train_rows], data.event[train_rows])
        member.baseline_times, member.baseline_cumhaz = baseline.times.tolist(), baseline.cumhaz.tolist()
        member.ohe_threshold = _youden_threshold(ohe, data.ohe[train_rows])


def _youden_threshold(probability: np.ndarray, label: np.ndarray) -> float:
    """Probability threshold maximising sensitivity + specificity on training predictions."""
    known = ~np.isnan(label)
    if len(np.unique(label[known])) < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(label[known], probability[known])
    return float(np.clip(thresholds[int(np.argmax(tpr - fpr))], 0.0, 1.0))


def member_network(member: Member, config: TrainConfig) -> FusionModel:
    """A trained member's network, rebuilt for its fold's token layout with its weights."""
    guided = is_guided(config.model, member.layout, config.clinical_offset)
    model = build_model(config.model, member.layout, config.hidden, config.dropout, config.model_options(), guided)
    model.load_state_dict(member.state_dict)
    return model


def member_ensemble(members: list[Member], config: TrainConfig, device: torch.device) -> Ensemble:
    """Trained members rebuilt from their weights and stacked for one vmapped forward pass."""
    return Ensemble([member_network(member, config).to(device) for member in members], device)


@torch.no_grad()
def predict_members(
    members: list[Member],
    matrices: dict[str, np.ndarray],
    rows: np.ndarray,
    config: TrainConfig,
    device: torch.device,
    ensemble: Ensemble | None = None,
) -> dict[str, np.ndarray]:
    """Every member's risk, OHE probability and ppg_post on the selected rows ([members, rows]), in one vmapped pass
    (over `ensemble`, the members already stacked, when a caller predicts many times).

    The OHE logit is shifted by −log(pos_weight): class-weighted BCE inflates the odds by that factor; each member's
    risk is centred on its training rows.
    """
    outputs = (ensemble or member_ensemble(members, config, device)).forward(
        stacked_inputs([m.preprocessors for m in members], matrices, rows, device), train=False
    )

    def column(values: list[float]) -> np.ndarray:
        return np.array(values)[:, None]

    risk, ohe_logit, ppg = (outputs[k].double().cpu().numpy() for k in ("risk", "ohe", "ppg"))
    return {
        "risk": risk - column([m.risk_center for m in members]),
        "ohe_probability": 1.0 / (1.0 + np.exp(-(ohe_logit - column([m.ohe_logit_offset for m in members])))),
        "ppg_post": ppg * column([m.ppg_std for m in members]) + column([m.ppg_mean for m in members]),
    }


def ensemble_survival(members: list[Member], risk: np.ndarray, horizons: np.ndarray) -> np.ndarray:
    """Survival at the horizons from each member's own baseline and risk ([members, rows] → [members, rows, horizons])."""
    return np.stack([m.baseline.survival(member_risk, horizons) for m, member_risk in zip(members, risk)])


def predict_cohort(
    members: list[Member],
    matrices: dict[str, np.ndarray],
    config: TrainConfig,
    device: torch.device,
    clinical_cox: ClinicalCoxFit | None,
) -> dict[str, np.ndarray]:
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
