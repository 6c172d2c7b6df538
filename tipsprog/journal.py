"""--resume: what an interrupted run finished, kept beside its output in `<out>.partial` until the output is written.

Per-scan stages (segment, radiomics) append each finished patient to an HDF5 journal and flush it, so a killed run
loses at most the patients in flight; training stages (embed --fit, fuse-train) save their training state there
instead (TrainingJournal: weights, optimiser, early stopping and random generators, so a resumed run continues
exactly where the killed one stopped; torch is imported only there, so the per-scan stages stay light). A journal
belongs to one settings digest: a run with other settings or inputs starts afresh. Outputs themselves are only ever written whole, by atomic rename.

Test hook: with TIPSPROG_PAUSE_AFTER=N in the environment, the N-th journal write of a process (a per-scan record
or a training-state save) prints PAUSED_LINE to stderr and waits for SIGUSR1 (go on) or SIGINT (interrupt; where
the process inherited SIGINT ignored, as a shell's background job does, it stays ignored), so a test can signal a
real run at a known point of its work, whatever the machine's speed.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from tipsprog.errors import InputError

JOURNAL_FORMAT = ("v108", "v108")  # indexed groups: reading thousands of records back keeps memory flat, and
# (unlike "latest") another process can read the journal while it is written


PAUSE_VARIABLE = "TIPSPROG_PAUSE_AFTER"
PAUSED_LINE = "tipsprog: paused after journal write"
_journal_writes = 0


def journal_written() -> None:
    """Count one journal write of this process; at the TIPSPROG_PAUSE_AFTER-th, wait for SIGUSR1 or SIGINT."""
    global _journal_writes
    _journal_writes += 1
    if os.environ.get(PAUSE_VARIABLE) == str(_journal_writes):
        _wait_for_a_signal(f"{PAUSED_LINE} {_journal_writes}")


def _wait_for_a_signal(line: str) -> None:
    """Print `line`, then wait until SIGUSR1 (return) or SIGINT (KeyboardInterrupt, as Python's handler raises it).

    Any thread of the process may receive a signal sent to it (torch's threads among them); Python's handler then
    writes to the wakeup socket, which the main thread waits on, so no signal is missed, whatever thread took it."""
    resumed = []
    receiver, sender = socket.socketpair()
    sender.setblocking(False)
    previous_handler = signal.signal(signal.SIGUSR1, lambda *_: resumed.append(True))
    previous_fd = signal.set_wakeup_fd(sender.fileno())
    try:
        print(line, file=sys.stderr, flush=True)
        while not resumed:
            select.select([receiver], [], [])  # a signal's handler runs as this returns (SIGINT raises here)
            receiver.recv(64)
    finally:
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGUSR1, previous_handler)
        receiver.close()
        sender.close()


def partial_path(out: Path) -> Path:
    """Where a run keeps what it has finished until its output is written."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def _journal_settings(path: Path) -> str | None:
    """The settings digest of a journal on disk (None if absent or unreadable)."""
    try:
        with h5py.File(path, "r") as journal:
            return str(journal.attrs.get("settings_sha256"))
    except OSError:
        return None


@contextmanager
def patient_journal(out: Path, settings_sha256: str, resume: bool) -> Iterator[h5py.File]:
    """The run's journal: an interrupted run's, continued, when resuming with the same settings, else a fresh one.
    It is removed once the block (which writes the output) succeeds, or when the block fails with nothing in it."""
    path = partial_path(out)
    continued = resume and _journal_settings(path) == settings_sha256
    finished_any = False
    try:
        with h5py.File(path, "a" if continued else "w", libver=JOURNAL_FORMAT) as journal:
            journal.attrs["settings_sha256"] = settings_sha256
            journal.require_group("records")
            try:
                yield journal
            finally:
                finished_any = len(journal["records"]) > 0
    except BaseException:
        if not finished_any:
            path.unlink(missing_ok=True)
        raise
    path.unlink()


def append(journal: h5py.File, patient_id: str, input_sha256: str, write: Callable[[h5py.Group], None]) -> str:
    """Add one finished patient (its data written by `write`), flush it to disk and return its record's name."""
    records = journal["records"]
    name = str(len(records))
    group = records.create_group(name)
    write(group)
    group.attrs.update(patient_id=patient_id, input_sha256=input_sha256)
    journal.flush()
    journal_written()
    return name


def forget(journal: h5py.File) -> None:
    """Drop every record: a run that failed on every patient keeps nothing to resume (its journal is removed)."""
    del journal["records"]
    journal.require_group("records")


def finished(journal: h5py.File) -> dict[tuple[str, str], str]:
    """Names of the complete records keyed by (patient ID, input digest); a record cut short by a kill has no digest
    and is skipped. (Names, not open groups: thousands of open HDF5 objects hold memory.)"""
    return {
        (str(group.attrs["patient_id"]), str(group.attrs["input_sha256"])): name
        for name, group in journal["records"].items()
        if "input_sha256" in group.attrs
    }


CHECKPOINT_SECONDS = 10.0
CHECKPOINT_SECONDS_VARIABLE = "TIPSPROG_CHECKPOINT_SECONDS"
TRAINING_FORMAT = "tipsprog-training-state-1"


def _random_state() -> dict:
    """torch's random generators (CPU and, where present, CUDA)."""
    import torch

    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_random_state(state: dict) -> None:
    """Put torch's random generators back where `_random_state` found them."""
    import torch

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
        import torch

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
        from tipsprog.checkpoints import save_checkpoint

        save_checkpoint(
            {
                "format": TRAINING_FORMAT,
                "settings_sha256": self.settings_sha256,
                "position": position,
                "random": _random_state(),
                "state": state(),
            },
            self.path,
        )
        self._saved_at = time.monotonic()
        journal_written()

    def discard(self) -> None:
        """Remove the saved state once the output is written."""
        self.path.unlink(missing_ok=True)
