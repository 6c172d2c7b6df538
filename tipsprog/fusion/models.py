"""Fusion models: each maps modality matrices to the three heads (risk, OHE logit, ppg_post)."""

from __future__ import annotations

import torch
from torch import nn

MODELS = ("concat",)


def _mlp_encoder(in_features: int, hidden: int, dropout: float) -> nn.Sequential:
    """Per-modality encoder: Linear → GELU → Dropout → Linear."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden))


class ConcatFusion(nn.Module):
    """Early fusion: per-modality MLP encoders, concatenation, shared trunk, three heads."""

    def __init__(self, modality_dims: dict[str, int], hidden: int = 32, dropout: float = 0.2):
        super().__init__()
        self.modalities = sorted(modality_dims)
        self.encoders = nn.ModuleDict({m: _mlp_encoder(modality_dims[m], hidden, dropout) for m in self.modalities})
        self.trunk = nn.Sequential(nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden * len(self.modalities), hidden), nn.GELU())
        self.risk_head = nn.Linear(hidden, 1)
        self.ohe_head = nn.Linear(hidden, 1)
        self.ppg_head = nn.Linear(hidden, 1)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Risk (unbounded log-hazard), OHE logit and standardised ppg_post per patient."""
        shared = self.trunk(torch.cat([self.encoders[m](inputs[m]) for m in self.modalities], dim=1))
        return {"risk": self.risk_head(shared).squeeze(1), "ohe": self.ohe_head(shared).squeeze(1),
                "ppg": self.ppg_head(shared).squeeze(1)}


def build_model(name: str, modality_dims: dict[str, int], hidden: int, dropout: float) -> nn.Module:
    """Instantiate a fusion model by name."""
    if name == "concat":
        return ConcatFusion(modality_dims, hidden, dropout)
    raise ValueError(f"unknown model {name}")
