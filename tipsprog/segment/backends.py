"""Segmentation backends, the SEGMENTATION_BACKENDS registry's entries: each labels one canonical CT liver (1),
spleen (2) and portal vein (3)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd
import SimpleITK as sitk
import torch
import yaml

from tipsprog.errors import InputError
from tipsprog.registry import SEGMENTATION_BACKENDS
from tipsprog.segment import classic, foundation, semi
from tipsprog.segment.masks import has_reference, reference_labels


@dataclass(frozen=True)
class Backend:
    """A segmentation backend and what it needs: a trained model file, a device, TotalSegmentator's mode."""

    name: str = "classic"
    model_path: str = ""
    device: str = "cpu"
    fast: bool = True

    def settings(self) -> str:
        """The backend's settings as YAML text (recorded in stores and bundles)."""
        extra = {"classic": classic.SETTINGS, "totalseg": {"fast": self.fast, "roi_subset": foundation.ROI_SUBSET}}
        settings = {"backend": self.name, **extra.get(self.name, {})}
        if self.name == "semi":
            settings.update(asdict(semi_model(self.model_path, self.device)[1]))
        return yaml.safe_dump(settings, sort_keys=True)


@lru_cache(maxsize=2)
def semi_model(model_path: str, device: str) -> tuple[torch.nn.Module, semi.SemiSettings]:
    """The semi-supervised network, loaded once per process."""
    return semi.load_model(Path(model_path), torch.device(device))


def label_classic(ct: sitk.Image, backend: Backend, row: pd.Series | None) -> sitk.Image:
    """The classic backend: thresholds, watershed and vessel tracking (segment/classic.py)."""
    return classic.segment_classic(ct)


def label_masks(ct: sitk.Image, backend: Backend, row: pd.Series | None) -> sitk.Image:
    """The masks backend: the cohort row's reference label files on the CT's grid."""
    if row is None or not has_reference(row):
        raise InputError("backend 'masks' needs a 'label', 'liver_mask' or 'spleen_mask' column in the cohort")
    return reference_labels(row, ct)


def label_semi(ct: sitk.Image, backend: Backend, row: pd.Series | None) -> sitk.Image:
    """The semi-supervised network of the backend's model file (segment/semi.py)."""
    model, settings = semi_model(backend.model_path, backend.device)
    return semi.segment_semi(ct, model, settings, torch.device(backend.device))


def label_totalseg(ct: sitk.Image, backend: Backend, row: pd.Series | None) -> sitk.Image:
    """TotalSegmentator's liver, spleen and portal vein (segment/foundation.py)."""
    return foundation.segment_totalseg(ct, backend.fast, backend.device)


def segment_scan(ct: sitk.Image, backend: Backend, row: pd.Series | None = None) -> sitk.Image:
    """Label one canonical CT with the chosen backend (the SEGMENTATION_BACKENDS registry)."""
    return SEGMENTATION_BACKENDS.get(backend.name)(ct, backend, row)
