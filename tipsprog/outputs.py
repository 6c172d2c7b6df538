"""Output files, safely: sha256 of inputs, a lock per output, atomic replacement, and which existing path an
output may replace (OUTPUT_KINDS)."""

from __future__ import annotations

import functools
import glob
import hashlib
import inspect
import os
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from tipsprog.errors import InputError


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (read in blocks)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def verified_file(path: Path, sha256: str) -> Path:
    """A file that a store names with its sha256 (a model's weights), unchanged since the store was written."""
    if not path.is_file() or file_sha256(path) != sha256:
        raise InputError(f"{path}: model weights named by a store are missing or changed since it was written")
    return path


def inputs_sha256(texts: list[str], paths: list[str]) -> str:
    """sha256 of some text values and of the bytes of every named file (a folder: its files, in name order)."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    for value in paths:
        path = Path(value)
        digest.update(value.encode("utf-8") + b"\0")
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
        for file in files:
            digest.update(bytes.fromhex(file_sha256(file)))
    return digest.hexdigest()


_HELD_LOCKS: set[Path] = set()
Result = TypeVar("Result")


def _live_holder(lock: Path) -> str | None:
    """Who holds a lock file, if that process may still be running (None for a stale or unreadable lock)."""
    try:
        host, pid = lock.read_text(encoding="utf-8").split()
    except (OSError, ValueError):
        return None
    if host != socket.gethostname():
        return f"pid {pid} on {host}"
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return f"pid {pid}"


@contextmanager
def output_lock(path: str | Path) -> Iterator[None]:
    """Hold `.<name>.lock` beside an output while this process writes it (re-entrant).

    A second command writing the same output stops at once with a clear error instead of interleaving with the
    first; a lock left behind by a killed process is taken over.
    """
    path = Path(path).absolute()
    if path in _HELD_LOCKS:
        yield
        return
    lock = path.with_name(f".{path.name}.lock")
    make_folder(lock.parent)
    claim = lock.with_name(f"{lock.name}.{uuid.uuid4().hex[:8]}")
    claim.write_text(f"{socket.gethostname()} {os.getpid()}", encoding="utf-8")
    try:
        while True:
            try:
                os.link(claim, lock)
                break
            except FileExistsError:
                holder = _live_holder(lock)
                if holder:
                    raise InputError(
                        f"{path}: another tipsprog command ({holder}) is writing it; wait for it to "
                        "finish or choose another output"
                    ) from None
                lock.unlink(missing_ok=True)
    finally:
        claim.unlink(missing_ok=True)
    _HELD_LOCKS.add(path)
    try:
        yield
    finally:
        _HELD_LOCKS.discard(path)
        lock.unlink(missing_ok=True)


def _given_paths(arguments: dict[str, object]) -> list[Path]:
    """The paths among a stage's arguments (a path, or a list of paths) other than its output."""
    paths = []
    for name, value in arguments.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        paths += [Path(v) for v in values if isinstance(v, Path) and name != "out"]
    return paths


def check_not_an_input(out: Path, inputs: list[Path]) -> None:
    """An output may never be one of the command's inputs, nor a folder holding one: writing it would destroy it."""
    target = Path(out).resolve()
    for given in inputs:
        resolved = given.resolve()
        if resolved == target:
            raise InputError(f"{out}: is also an input of this command ({given}); writing the output would destroy it")
        if target in resolved.parents:
            raise InputError(f"{out}: holds an input of this command ({given}); writing the output would destroy it")


def writes_output(kind: str) -> Callable[[Callable[..., Result]], Callable[..., Result]]:
    """Run a stage under the lock of its `out` argument from start to end, so a second command writing the same
    output stops before doing any work; an `out` that is, or holds, one of the stage's path arguments, or an
    existing file or folder that is not a previous output of this `kind` (OUTPUT_KINDS), is refused up front."""

    def decorate(stage: Callable[..., Result]) -> Callable[..., Result]:
        @functools.wraps(stage)
        def locked(*args, **kwargs) -> Result:
            arguments = inspect.signature(stage).bind(*args, **kwargs).arguments
            out = Path(arguments["out"])
            check_not_an_input(out, _given_paths(arguments))
            with output_lock(out):
                check_replaceable(out, kind)
                return stage(*args, **kwargs)

        return locked

    return decorate


def make_folder(path: str | Path) -> None:
    """Create a folder and its parents; a file standing in the way is bad input, not an internal error."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
        raise InputError(f"{path}: cannot create this folder: {blocker} is a file") from None
    except PermissionError:
        raise InputError(f"{path}: cannot create this folder: permission denied") from None


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"


def starts_with(path: Path, signature: bytes) -> bool:
    """Whether a file's first bytes are `signature`."""
    with open(path, "rb") as handle:
        return handle.read(len(signature)) == signature


def _folder_with(marker: str) -> Callable[[Path], bool]:
    """Recogniser of a previous folder output: one holding `marker`, or an empty one."""
    return lambda path: path.is_dir() and ((path / marker).is_file() or not any(path.iterdir()))


OUTPUT_KINDS: dict[str, tuple[str, Callable[[Path], bool]]] = {
    "store": ("HDF5 store", lambda path: path.is_file() and starts_with(path, HDF5_SIGNATURE)),
    "checkpoint": ("torch checkpoint", lambda path: path.is_file() and starts_with(path, ZIP_SIGNATURE)),
    "bundle": ("model bundle", _folder_with("bundle.yaml")),
    "report": ("evaluate report", _folder_with("metrics.json")),
    "predictions": ("predictions folder", _folder_with("predictions.jsonl")),
    "cohort": ("synthetic cohort", _folder_with("cohort.csv")),
    "export": ("mask export folder", _folder_with("labels.csv")),
}


def check_replaceable(path: Path, kind: str) -> None:
    """An existing output may only be replaced by the same kind of output (a folder output never replaces a
    folder of other files, a store never replaces a CSV)."""
    description, is_previous = OUTPUT_KINDS[kind]
    if (path.exists() or path.is_symlink()) and not is_previous(path):
        raise InputError(
            f"{path}: exists and is not a previous {description}; writing the {description} here would "
            "destroy it: choose another output or remove it first"
        )


def _remove(path: Path) -> None:
    """Delete a file or folder if it exists."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_output(path: str | Path, kind: str) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `path` only if the block succeeds (under the output's lock).
    An existing `path` must be a previous output of this `kind` (OUTPUT_KINDS). Temporaries that a killed command
    left beside the output are removed first."""
    path = Path(path)
    make_folder(path.parent)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with output_lock(path):
        check_replaceable(path, kind)
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            _remove(stale)
        try:
            yield tmp
            if path.is_dir() and tmp.is_dir():
                shutil.rmtree(path)
            os.replace(tmp, path)
        finally:
            _remove(tmp)
