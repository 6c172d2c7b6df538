"""Saving and loading the torch checkpoints the stages train (encoder, segmentation network), and the training
state that embed --fit and fuse-train save to `<out>.partial` for --resume: weights, optimiser, early stopping and
random generators, so a resumed run continues exactly where the killed one stopped."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from tipsprog.errors import InputError
from tipsprog.resume import journal_written, partial_path
from tipsprog.store import atomic_output

CHECKPOINT_SECONDS = 10.0
CHECKPOINT_SECONDS_VARIABLE = "TIPSPROG_CHECKPOINT_SECONDS"
TRAINING_FORMAT = "tipsprog-training-state-1"


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


def _random_state() -> dict:
    """torch's random generators (CPU and, where present, CUDA)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_random_state(state: dict) -> None:
    """Put torch's random generators back where `_random_state` found them."""
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def numpy_state(generator: np.random.Generator | np.random.RandomState) -> str:
    """A numpy generator's state as JSON text (a weights-only checkpoint stores no numpy objects)."""
    state = generator.bit_generator.state if isinstance(generator, np.random.Generator) else generator.get_state(legacy=False)
    return json.dumps(state, default=lambda array: array.tolist())


def set_numpy_state(generator: np.random.Generator | np.random.RandomState, text: str) -> None:
    """Put a numpy generator back in the state `numpy_state` recorded."""
    state = json.loads(text)
    if isinstance(generator, np.random.Generator):
        generator.bit_generator.state = state
    else:
        state["state"]["key"] = np.array(state["state"]["key"], dtype=np.uint32)
        generator.set_state(state)


def checkpoint_interval() -> float:
    """Seconds between training-state saves: TIPSPROG_CHECKPOINT_SECONDS, or 10."""
    text = os.environ.get(CHECKPOINT_SECONDS_VARIABLE, str(CHECKPOINT_SECONDS))
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise InputError(f"{CHECKPOINT_SECONDS_VARIABLE}={text}: not a number of seconds ≥ 0")
    return seconds


class TrainingJournal:
    """A training loop's saved state: `load` once at the start (None unless resuming with the same settings),
    `save` after every step (written at most every checkpoint_interval() seconds, and always when `force` is set)."""

    def __init__(self, out: Path, settings_sha256: str, resume: bool, announce: Callable[[str], None] | None = None):
        self.path = partial_path(out)
        self.settings_sha256 = settings_sha256
        self.resume = resume
        self.announce = announce
        self.interval_s = checkpoint_interval()
        self._saved_at = time.monotonic()

    def load(self) -> dict | None:
        """The state a killed run saved with these settings, random generators restored (None if there is none)."""
        if not (self.resume and self.path.is_file()):
            return None
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # torch raises many types for a file cut short; start afresh
            return None
        if payload.get("format") != TRAINING_FORMAT or payload.get("settings_sha256") != self.settings_sha256:
            if self.announce:
                self.announce(f"--resume: {self.path} was saved with other settings or data; training starts afresh")
            return None
        _restore_random_state(payload["random"])
        if self.announce:
            self.announce(f"--resume: continuing from {self.path} ({payload['position']})")
        return payload["state"]

    def save(self, state: Callable[[], dict], position: str, force: bool = False) -> None:
        """Save `state()` and where training stands (`position`, for the resumed run to say), with the random
        generators, if the interval has passed (or `force`)."""
        if not force and time.monotonic() - self._saved_at < self.interval_s:
            return
        save_checkpoint({"format": TRAINING_FORMAT, "settings_sha256": self.settings_sha256, "position": position,
                         "random": _random_state(), "state": state()}, self.path)
        self._saved_at = time.monotonic()
        journal_written()

    def discard(self) -> None:
        """Remove the saved state once the output is written."""
        self.path.unlink(missing_ok=True)
