"""Integrated gradients of the ensemble's risk over its input tokens (feature groups), for explaining a prediction."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tipsprog.fusion.config import TrainConfig
from tipsprog.fusion.ensemble import Ensemble, Member, member_ensemble, stacked_inputs

ATTRIBUTION_STEPS = 32


@dataclass
class Attribution:
    """Per patient and input token, the token's share of the ensemble risk's distance from the baseline patient."""

    tokens: list[tuple[str, str]]
    values: np.ndarray
    risk: np.ndarray
    baseline_risk: np.ndarray

    def top(self, row: int, count: int) -> list[dict]:
        """The `count` tokens of one patient with the largest absolute contributions."""
        order = np.argsort(-np.abs(self.values[row]), kind="stable")[:count]
        return [
            {"modality": self.tokens[i][0], "group": self.tokens[i][1], "contribution": round(float(self.values[row, i]), 4)}
            for i in order
        ]

    def by_modality(self, row: int) -> dict[str, float]:
        """Contributions summed within each modality."""
        totals: dict[str, float] = {}
        for (modality, _), value in zip(self.tokens, self.values[row]):
            totals[modality] = totals.get(modality, 0.0) + float(value)
        return {modality: round(total, 4) for modality, total in totals.items()}


def integrated_gradients(
    members: list[Member],
    matrices: dict[str, np.ndarray],
    config: TrainConfig,
    device: torch.device,
    ensemble: Ensemble | None = None,
    steps: int = ATTRIBUTION_STEPS,
) -> Attribution:
    """Integrated gradients (Sundararajan et al. 2017) of the mean member risk, one patient at a time.

    Each member's path runs from its own all-zero input, which after that member's fold preprocessing is the
    training-fold mean patient, to the patient's input, by the midpoint rule over `steps` points. A token's
    attribution sums its width; the attributions of a patient add up to its risk minus the baseline risk
    (completeness), up to the quadrature error.
    """
    ensemble = ensemble or member_ensemble(members, config, device)
    preprocessors = [m.preprocessors for m in members]
    modalities = list(matrices)
    tokens = [(m, name) for m in modalities for name in preprocessors[0][m].token_names]
    alphas = ((torch.arange(steps, dtype=torch.float32) + 0.5) / steps).to(device)
    patients = len(next(iter(matrices.values())))
    values = np.zeros((patients, len(tokens)))
    risk, baseline = np.zeros(patients), np.zeros(patients)
    for row in range(patients):
        inputs = stacked_inputs(preprocessors, matrices, np.array([row]), device)
        path = {m: (alphas[None, :, None, None] * inputs[m]).requires_grad_(True) for m in modalities}
        path_risk = ensemble.forward(path, train=False)["risk"].float()
        gradients = torch.autograd.grad(path_risk.sum(), [path[m] for m in modalities])
        per_member = [(inputs[m][:, 0] * g.mean(dim=1)).sum(dim=-1) for m, g in zip(modalities, gradients)]
        values[row] = torch.cat(per_member, dim=1).mean(dim=0).detach().double().cpu().numpy()
        with torch.no_grad():
            ends = {m: torch.cat([torch.zeros_like(inputs[m]), inputs[m]], dim=1) for m in modalities}
            end_risk = ensemble.forward(ends, train=False)["risk"].double().mean(dim=0).cpu().numpy()
        baseline[row], risk[row] = end_risk - np.mean([m.risk_center for m in members])  # on predict_members' scale
    return Attribution(tokens, values, risk, baseline)
