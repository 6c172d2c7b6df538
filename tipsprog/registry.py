"""Named components, one registry per kind: fusion models, embedding encoders, segmentation backends. Each is the
single list of names that the CLI help, config validation and the factories read. An entry names its object as
`module:attribute` and is imported only when built, so the CLI lists the names without importing torch."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tipsprog.errors import InputError


@dataclass(frozen=True)
class Registry:
    """Components of one kind by name; `get` imports the one asked for."""

    kind: str
    entries: dict[str, str]

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def choices(self) -> str:
        """The names, comma-separated (for help and error lines)."""
        return ", ".join(self.entries)

    def check(self, name: str, where: str) -> str:
        """`name` if registered; otherwise one InputError line naming `where` it came from and the choices."""
        if name not in self.entries:
            raise InputError(f"{where} {name}: unknown {self.kind}; choose one of {self.choices()}")
        return name

    def get(self, name: str) -> Any:
        """The registered object (class or factory) of `name`, imported on first use."""
        module, attribute = self.entries[self.check(name, self.kind)].split(":")
        return getattr(importlib.import_module(module), attribute)


FUSION_MODELS = Registry(
    "fusion model",
    {  # classes taking (layout, hidden, dropout, **their config section)
        "clinical-cox": "tipsprog.fusion.models:ClinicalCoxNetwork",
        "concat": "tipsprog.fusion.models:ConcatFusion",
        "late": "tipsprog.fusion.models:LateFusion",
        "intermediate": "tipsprog.fusion.models:IntermediateFusion",
        "tmiclnet": "tipsprog.fusion.models:TmiClNet",
        "multitips": "tipsprog.fusion.models:MultiTips",
        "graph": "tipsprog.fusion.models:GraphFusion",
    },
)
FUSION_MODEL_SECTIONS = ("tmiclnet", "multitips", "graph")  # the models with a config section of their own name

ENCODERS = Registry(
    "encoder",
    {  # factories (name, weights path) → RoiEncoder
        "ssl": "tipsprog.embed.encoders:ssl_encoder",
        "medicalnet-resnet10": "tipsprog.embed.encoders:medicalnet_encoder",
        "medicalnet-resnet18": "tipsprog.embed.encoders:medicalnet_encoder",
        "medicalnet-resnet50": "tipsprog.embed.encoders:medicalnet_encoder",
        "swinunetr": "tipsprog.embed.encoders:swinunetr_encoder",
        "ctfm": "tipsprog.embed.encoders:ctfm_encoder",
    },
)

SEGMENTATION_BACKENDS = Registry(
    "segmentation backend",
    {  # functions (ct, Backend, cohort row) → labels
        "classic": "tipsprog.segment.backends:label_classic",
        "masks": "tipsprog.segment.backends:label_masks",
        "semi": "tipsprog.segment.backends:label_semi",
        "totalseg": "tipsprog.segment.backends:label_totalseg",
    },
)
