"""Compute device selection shared by the torch stages."""

from __future__ import annotations

import torch

from tipsprog.errors import InputError


def resolve_device(device: str) -> torch.device:
    """'auto' → CUDA when present, else CPU; an unavailable 'cuda' is an input error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available")
    if device not in ("cpu", "cuda"):
        raise InputError(f"--device {device}: choose auto, cpu or cuda")
    return torch.device(device)
