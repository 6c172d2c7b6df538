"""A bundle's manifest (bundle.yaml), typed: how to replay the feature pipeline on a new scan, the modalities and
clinical columns the model reads, the training cohort, the risk-group cut and the fitted steps' exposure. fuse-train
writes the mapping (`to_dict` keeps its keys and order); every reader goes through these fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SegmentEntry:
    """The segmentation the features came from: its backend and, for a trained backend, its model file in the bundle."""

    backend: str = "classic"
    model: str | None = None


@dataclass(frozen=True)
class BlockEntry:
    """One feature block to replay: its extractor and feature names, the provenance an external store must match,
    and what its stage recorded to replay it (radiomics parameters, encoder and weights, training percentiles)."""

    extractor: str
    names: list[str]
    provenance: dict[str, str] = field(default_factory=dict)
    params: dict | None = None
    encoder: str | None = None
    pooling: str | None = None
    weights: str | None = None
    training_percentiles: dict[str, list[float]] | None = None


@dataclass(frozen=True)
class TrainingEntry:
    """The training cohort: patients, events, cross-validation, centers and the patients held out (--test)."""

    patients: int
    events: int
    cv: str = "kfold"
    repeats: int = 1
    centers: list[str] = field(default_factory=list)
    held_out: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Manifest:
    """bundle.yaml as fields; `raw` is the mapping as written (for `tipsprog info` and bit-identical rewriting)."""

    raw: dict[str, Any]
    segment: SegmentEntry | None
    blocks: dict[str, BlockEntry]
    modalities: dict[str, list[str]]
    clinical_extras: list[str]
    score_notes: dict[str, dict]
    training: TrainingEntry
    risk_cut: float
    transductive: dict | None
    tipsprog_version: str

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Manifest:
        """The fields of a manifest mapping as fuse-train writes it."""
        pipeline, clinical = raw["pipeline"], raw["clinical"]
        segment = SegmentEntry(**pipeline["segment"]) if pipeline.get("segment") else None
        return cls(
            raw,
            segment,
            {name: BlockEntry(**entry) for name, entry in pipeline["blocks"].items()},
            raw["modalities"],
            clinical["extras"],
            clinical.get("score_notes", {}),
            TrainingEntry(**raw["training"]),
            float(raw["risk_groups"]["cut"]),
            raw.get("transductive"),
            raw["tipsprog_version"],
        )
