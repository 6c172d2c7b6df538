"""Saving and loading the torch files the stages write (encoder and segmentation weights, training states):
atomically, byte-for-byte reproducible, and read back with weights_only (no code from the file runs)."""

from __future__ import annotations

from pathlib import Path

import torch

from tipsprog.errors import InputError
from tipsprog.outputs import atomic_output


def save_checkpoint(payload: dict, path: Path) -> None:
    """Write a checkpoint atomically (temporary file, then rename). torch.save is given an open file, not the
    temporary's random name, which it would write into the archive: the same payload gives the same bytes."""
    with atomic_output(path, "checkpoint") as tmp, open(tmp, "wb") as handle:
        torch.save(payload, handle)


def load_checkpoint(path: Path, expected_format: str, what: str, device: torch.device, hint: str = "") -> dict:
    """Load a checkpoint with weights_only (no code from the file runs) and check its format tag."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} not found{hint}")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        raise InputError(f"{path}: not a readable {what} ({type(err).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != expected_format:
        raise InputError(f"{path}: not a tipsprog {what}")
    return payload
