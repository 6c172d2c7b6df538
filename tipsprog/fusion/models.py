"""Fusion models: each maps {modality: [patients, tokens, width]} to the three heads (docs/models.md).

Every model returns a dict with `risk` (unbounded log-hazard), `ohe` (logit) and `ppg` (standardised ppg_post);
models with an auxiliary objective also return what it needs (`aligned` vectors for TMI-CLNet's TMFF loss, a
per-patient `penalty` for MultiTIPS's POD) and implement `auxiliary_loss`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from tipsprog.fusion.losses import masked_mean, sdm_loss
from tipsprog.fusion.modules import (
    AttentionBlock,
    ClinicalFilm,
    CrossOrganGraph,
    CyclicCrossAttention,
    MultiGranularityAttention,
    OrganSimilarityFusion,
    OrthogonalDecomposition,
    TokenEmbedding,
    pod_penalty,
)
from tipsprog.registry import FUSION_MODELS

IMAGE_ORDER = ("embed", "radiomics", "biomarkers", "clinical")
GUIDE_RISK = "guide_risk"  # the inputs key under which ClinicallyGuided hands its linear predictor to the fusion model


@dataclass(frozen=True)
class Layout:
    """Token names and token width of one modality (from its fitted preprocessor)."""

    tokens: list[str]
    width: int

    @property
    def flat(self) -> int:
        """Width of the flattened token matrix."""
        return len(self.tokens) * self.width


class Heads(nn.Module):
    """The three task heads on a shared representation (the risk head has no bias: Cox cannot identify one)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.risk = nn.Linear(hidden, 1, bias=False)
        self.ohe = nn.Linear(hidden, 1)
        self.ppg = nn.Linear(hidden, 1)

    def forward(self, shared: torch.Tensor) -> dict[str, torch.Tensor]:
        """Risk, OHE logit and standardised ppg_post per patient."""
        return {"risk": self.risk(shared).squeeze(-1), "ohe": self.ohe(shared).squeeze(-1), "ppg": self.ppg(shared).squeeze(-1)}


def _flat(values: torch.Tensor) -> torch.Tensor:
    return values.reshape(values.shape[0], -1)


def _mlp(in_features: int, hidden: int, dropout: float) -> nn.Sequential:
    """Linear → GELU → Dropout → Linear."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden))


class FusionModel(nn.Module):
    """Base: modality order and no auxiliary objective."""

    def __init__(self, layout: dict[str, Layout]):
        super().__init__()
        self.modalities = sorted(layout)

    def auxiliary_loss(self, outputs: dict, rows: torch.Tensor, epoch: torch.Tensor) -> torch.Tensor:
        """Model-specific training objective beside the three task losses at `epoch` (the member's epochs run so far,
        counted across stages; none by default)."""
        return outputs["risk"].new_zeros(())

    def loss_outputs(self, outputs: dict) -> list[dict]:
        """The outputs the task losses are computed on and summed over: the model's own by default."""
        return [outputs]


class ClinicalCoxNetwork(FusionModel):
    """Linear heads on the clinical variables: the Cox model every report shows, trained by the same core."""

    def __init__(self, layout: dict[str, Layout], hidden: int, dropout: float):
        if "clinical" not in layout:
            raise ValueError("clinical-cox needs the clinical modality")
        super().__init__({"clinical": layout["clinical"]})
        self.heads = Heads(layout["clinical"].flat)
        for parameter in self.heads.parameters():
            nn.init.zeros_(parameter)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Linear risk, OHE logit and ppg_post."""
        return self.heads(_flat(inputs["clinical"]))


class ConcatFusion(FusionModel):
    """Early fusion: per-modality MLP encoders, concatenation, shared trunk, three heads."""

    def __init__(self, layout: dict[str, Layout], hidden: int, dropout: float):
        super().__init__(layout)
        self.encoders = nn.ModuleDict({m: _mlp(layout[m].flat, hidden, dropout) for m in self.modalities})
        self.trunk = nn.Sequential(nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden * len(self.modalities), hidden), nn.GELU())
        self.heads = Heads(hidden)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Heads on the concatenated modality encodings."""
        return self.heads(self.trunk(torch.cat([self.encoders[m](_flat(inputs[m])) for m in self.modalities], dim=1)))


class LateFusion(FusionModel):
    """Late fusion (CT+pathology study): one complete model per modality, each trained on its own task losses (no
    gradient passes between them, as if trained alone), their three outputs averaged."""

    def __init__(self, layout: dict[str, Layout], hidden: int, dropout: float):
        super().__init__(layout)
        self.branches = nn.ModuleDict({m: ConcatFusion({m: layout[m]}, hidden, dropout) for m in self.modalities})

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict:
        """Mean of the per-modality outputs, and those outputs (`branches`, what each branch is trained on)."""
        outputs = [self.branches[m]({m: inputs[m]}) for m in self.modalities]
        mean = {key: torch.stack([o[key] for o in outputs]).mean(dim=0) for key in outputs[0]}
        return {**mean, "branches": outputs}

    def loss_outputs(self, outputs: dict) -> list[dict]:
        """Each branch's own outputs: the task losses train every modality's model on its own."""
        return outputs["branches"]


class IntermediateFusion(FusionModel):
    """Intermediate fusion (CT+pathology study): a linear, normalised embedding per modality, concatenated into a
    shared two-layer head."""

    def __init__(self, layout: dict[str, Layout], hidden: int, dropout: float):
        super().__init__(layout)
        self.embeddings = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(layout[m].flat, hidden), nn.LayerNorm(hidden)) for m in self.modalities}
        )
        self.head = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(hidden * len(self.modalities), hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.GELU(),
        )
        self.heads = Heads(hidden)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Heads on the concatenated modality embeddings."""
        return self.heads(self.head(torch.cat([self.embeddings[m](_flat(inputs[m])) for m in self.modalities], dim=1)))


class TmiClNet(FusionModel):
    """TMI-CLNet: intra-modality self-attention (IMA) over each modality's tokens, cyclic cross-attention (TCAF)
    image → radiomics → clinical → image, per-modality output projection, and the TMFF alignment loss."""

    def __init__(
        self,
        layout: dict[str, Layout],
        hidden: int,
        dropout: float,
        heads: int = 4,
        alignment_weight: float = 1.0,
        balance: float = 0.6,
        logit_scale: float = 10.0,
    ):
        super().__init__(layout)
        self.order = [m for m in IMAGE_ORDER if m in layout]
        self.embed = nn.ModuleDict({m: TokenEmbedding(len(layout[m].tokens), layout[m].width, hidden) for m in self.order})
        self.intra = nn.ModuleDict({m: AttentionBlock(hidden, heads) for m in self.order})
        self.cross = CyclicCrossAttention(self.order, hidden, heads)
        self.project = nn.ModuleDict({m: nn.Linear(hidden, hidden) for m in self.order})
        self.trunk = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden * len(self.order), hidden), nn.GELU())
        self.heads = Heads(hidden)
        self.alignment_weight, self.balance, self.logit_scale = alignment_weight, balance, logit_scale

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict:
        """Heads on the concatenated projections, plus the projections for the alignment loss."""
        tokens = {m: self.intra[m](self.embed[m](inputs[m])) for m in self.order}
        fused = self.cross(tokens)
        aligned = {m: self.project[m](fused[m].mean(dim=1)) for m in self.order}
        outputs = self.heads(self.trunk(torch.cat([aligned[m] for m in self.order], dim=1)))
        outputs["aligned"] = aligned
        return outputs

    def auxiliary_loss(self, outputs: dict, rows: torch.Tensor, epoch: torch.Tensor) -> torch.Tensor:
        """TMFF: λ·(SDM(image, clinical) + SDM(radiomics, clinical))/2 + (1 − λ)·SDM(image, radiomics), over present pairs."""
        aligned = outputs["aligned"]
        terms = []
        text_pairs = [(m, "clinical") for m in ("embed", "radiomics") if m in aligned and "clinical" in aligned]
        if text_pairs:
            terms.append(
                (
                    self.balance,
                    sum(sdm_loss(aligned[a], aligned[b], rows, self.logit_scale) for a, b in text_pairs) / len(text_pairs),
                )
            )
        if "embed" in aligned and "radiomics" in aligned:
            terms.append((1 - self.balance, sdm_loss(aligned["embed"], aligned["radiomics"], rows, self.logit_scale)))
        if not terms:
            return super().auxiliary_loss(outputs, rows, epoch)
        total_weight = sum(w for w, _ in terms)
        return cast(torch.Tensor, self.alignment_weight * sum(w * t for w, t in terms) / total_weight)


class MultiTips(FusionModel):
    """MultiTIPS's interaction: MGRA (image tokens over multi-granularity radiomics tokens), POD (shared/specific
    split with a progressively weighted orthogonality penalty on the vectors the heads use, after CGPE) and CGPE
    (FiLM gates conditioned on the clinical vector and on the clinical Cox's linear predictor where the model is a
    residual on it, GUIDE_RISK; and a clinical prior). `mgra` and `cgpe` switch those modules off for ablation (POD:
    orthogonality_weight 0)."""

    def __init__(
        self,
        layout: dict[str, Layout],
        hidden: int,
        dropout: float,
        heads: int = 4,
        orthogonality_weight: float = 0.1,
        ramp_epochs: int = 60,
        mgra: bool = True,
        cgpe: bool = True,
    ):
        super().__init__(layout)
        self.embed = nn.ModuleDict({m: TokenEmbedding(len(layout[m].tokens), layout[m].width, hidden) for m in self.modalities})
        self.granular = (
            MultiGranularityAttention(layout["radiomics"].tokens, hidden, heads) if mgra and "radiomics" in layout else None
        )
        self.decompose = OrthogonalDecomposition(self.modalities, hidden)
        self.imaging = [m for m in self.modalities if m != "clinical"]
        guided = cgpe and "clinical" in layout
        self.film = nn.ModuleDict({m: ClinicalFilm(hidden + 1, 2 * hidden) for m in self.imaging} if guided else {})
        self.prior = nn.Linear(hidden, 1, bias=False) if guided else None
        self.trunk = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden * (1 + len(self.modalities)), hidden), nn.GELU())
        self.heads = Heads(hidden)
        self.orthogonality_weight, self.ramp_epochs = orthogonality_weight, ramp_epochs

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict:
        """Heads on [mean shared part, specific parts], imaging gated by the clinical vector; clinical prior added;
        the POD penalty of those gated parts (`shared`, `specific`: what the heads see)."""
        tokens = {m: self.embed[m](inputs[m]) for m in self.modalities}
        if self.granular is not None:
            query = "embed" if "embed" in tokens else "radiomics"
            tokens[query] = self.granular(tokens[query], tokens["radiomics"])
        shared, specific = self.decompose({m: t.mean(dim=1) for m, t in tokens.items()})
        knowledge = self._clinical_knowledge(specific["clinical"], inputs) if self.film else None
        for m in self.film:
            gated = self.film[m](knowledge, torch.cat([shared[m], specific[m]], dim=1))
            shared[m], specific[m] = gated.chunk(2, dim=1)
        common = torch.stack([shared[m] for m in self.modalities]).mean(dim=0)
        outputs = self.heads(self.trunk(torch.cat([common] + [specific[m] for m in self.modalities], dim=1)))
        if self.prior is not None:
            outputs["risk"] = outputs["risk"] + self.prior(specific["clinical"]).squeeze(-1)
        outputs["penalty"] = pod_penalty(shared, specific)
        outputs["shared"], outputs["specific"] = shared, specific
        return outputs

    @staticmethod
    def _clinical_knowledge(clinical: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """What CGPE's gates are conditioned on: the clinical vector and the guide's linear predictor (0 unguided)."""
        guide = inputs.get(GUIDE_RISK, clinical.new_zeros(len(clinical)))
        return torch.cat([clinical, guide[:, None].to(clinical.dtype)], dim=1)

    def auxiliary_loss(self, outputs: dict, rows: torch.Tensor, epoch: torch.Tensor) -> torch.Tensor:
        """POD penalty, its weight growing linearly from 0 to `orthogonality_weight` over the first `ramp_epochs`
        epochs run (counted across the stages, so an early stop does not make it jump)."""
        return self.orthogonality_weight * (epoch / self.ramp_epochs).clamp(max=1.0) * masked_mean(outputs["penalty"], rows)


class GraphFusion(FusionModel):
    """DMMGNet's idea on tokens: a dynamic cross-organ k-NN graph over the top-k imaging tokens (SGCM: EdgeConv,
    written back in place), then MMDFM between the liver's tokens and the other organs' (`mmdfm`), pooled and joined
    with a clinical encoder. `sgcm` and `mmdfm` switch those modules off for ablation."""

    def __init__(
        self,
        layout: dict[str, Layout],
        hidden: int,
        dropout: float,
        top_k: int = 8,
        neighbours: int = 3,
        dilation: int = 2,
        sgcm: bool = True,
        mmdfm: bool = True,
    ):
        super().__init__(layout)
        self.imaging = [m for m in self.modalities if m != "clinical"]
        self.embed = nn.ModuleDict({m: TokenEmbedding(len(layout[m].tokens), layout[m].width, hidden) for m in self.imaging})
        rois = [name.split("/")[0] for m in self.imaging for name in layout[m].tokens]
        self.graph = CrossOrganGraph(rois, hidden, top_k, neighbours, dilation) if sgcm and len(rois) > 1 else None
        organs = set(rois)
        self.organs = OrganSimilarityFusion(rois, hidden, top_k) if mmdfm and "liver" in organs and len(organs) > 1 else None
        self.clinical = _mlp(layout["clinical"].flat, hidden, dropout) if "clinical" in layout else None
        parts = (1 if self.imaging else 0) + (1 if self.clinical is not None else 0)
        self.trunk = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden * parts, hidden), nn.GELU())
        self.heads = Heads(hidden)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Heads on [pooled graph-updated imaging tokens, clinical encoding]."""
        parts = []
        if self.imaging:
            tokens = torch.cat([self.embed[m](inputs[m]) for m in self.imaging], dim=1)
            if self.graph is not None:
                tokens = self.graph(tokens)
            if self.organs is not None:
                tokens = self.organs(tokens)
            parts.append(tokens.mean(dim=1))
        if self.clinical is not None:
            parts.append(self.clinical(_flat(inputs["clinical"])))
        return self.heads(self.trunk(torch.cat(parts, dim=1)))


GUIDE_MODALITIES = ("clinical", "biomarkers")


class ClinicallyGuided(FusionModel):
    """A fusion model made a residual on a linear Cox (MultiTIPS' clinically guided idea as a safety rail):
    risk = the guide's linear predictor (fixed coefficients over the clinical tokens and, where present, the biomarker
    tokens, fitted on the fold's training rows) + residual_weight × the fusion model's risk. The fusion model's risk head
    starts at zero, so training starts from the guide; the weight in [0, 1] is chosen after training on the fold's
    inner validation rows (0 gives the guide back). The OHE and PPG heads are the fusion model's own."""

    def __init__(self, fusion: FusionModel, layout: dict[str, Layout]):
        super().__init__(layout)
        self.fusion = fusion
        self.guide = [m for m in GUIDE_MODALITIES if m in layout]
        for m in self.guide:
            self.register_buffer(f"{m}_coefficients", torch.zeros(layout[m].flat))
        self.register_buffer("residual_weight", torch.ones(()))
        for module in fusion.modules():
            if isinstance(module, Heads):
                nn.init.zeros_(module.risk.weight)

    def layout_width(self, modality: str) -> int:
        """Number of guide coefficients over one modality's flattened tokens."""
        return len(getattr(self, f"{modality}_coefficients"))

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict:
        """The fusion model's outputs (it is given the guide's linear predictor as GUIDE_RISK) with the risk replaced
        by clinical + weighted residual (both parts kept), and so each of a late model's branch risks."""
        clinical = sum(_flat(inputs[m]) @ getattr(self, f"{m}_coefficients").to(inputs[m].dtype) for m in self.guide)
        outputs = self.fusion({**inputs, GUIDE_RISK: clinical})
        outputs["clinical_risk"], outputs["residual_risk"] = clinical, outputs["risk"]
        outputs["risk"] = clinical + self.residual_weight * outputs["risk"]
        for branch in outputs.get("branches", []):
            branch["risk"] = clinical + self.residual_weight * branch["risk"]
        return outputs

    def auxiliary_loss(self, outputs: dict, rows: torch.Tensor, epoch: torch.Tensor) -> torch.Tensor:
        """The fusion model's own auxiliary objective."""
        return self.fusion.auxiliary_loss(outputs, rows, epoch)

    def loss_outputs(self, outputs: dict) -> list[dict]:
        """The fusion model's loss outputs (their risks made residuals on the guide by forward)."""
        return self.fusion.loss_outputs(outputs)


def is_guided(name: str, modalities, clinical_offset: bool) -> bool:
    """Whether a model is trained as a residual on the clinical Cox (not the clinical Cox itself; needs clinical)."""
    return clinical_offset and name != "clinical-cox" and "clinical" in modalities


def build_model(
    name: str, layout: dict[str, Layout], hidden: int, dropout: float, options: dict | None = None, guided: bool = False
) -> FusionModel:
    """Instantiate a fusion model by name with its model-specific options (the config section of the same name),
    wrapped as a residual on the clinical Cox when `guided`."""
    model = FUSION_MODELS.get(name)(layout, hidden, dropout, **(options or {}))
    return ClinicallyGuided(model, layout) if guided else model
