"""Killing a stage mid-run (SIGINT or SIGKILL) leaves no output, no temporary file and no lock that blocks a rerun;
the rerun (radiomics with --resume) gives the result of an uninterrupted run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import Pipeline, invoke


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tipsprog", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_for(condition, process: subprocess.Popen, seconds: float = 120) -> None:
    """Poll until `condition()` holds while the process still runs."""
    deadline = time.time() + seconds
    while not condition():
        assert process.poll() is None, f"finished before it could be interrupted: {process.communicate()[0]}"
        assert time.time() < deadline, "timed out waiting for the run to get under way"
        time.sleep(0.05)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _journal_records(path: Path) -> int:
    """Patients a running radiomics has finished, read from its journal without locking it (0 while unreadable)."""
    try:
        with h5py.File(path, "r", locking=False) as journal:
            return len(journal["records"])
    except (OSError, KeyError):
        return 0


def test_radiomics_killed_then_resumed_equals_an_uninterrupted_run(pipeline: Pipeline, tmp_path):
    out = tmp_path / "radiomics.h5"
    journal = tmp_path / "radiomics.h5.partial"
    run = _start("radiomics", pipeline.seg, "--out", out, "--workers", 1, "--quiet")
    _wait_for(lambda: _journal_records(journal) >= 4, run)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert not out.exists() and journal.exists()
    result = invoke("radiomics", pipeline.seg, "--out", out, "--resume", "--workers", 1, "--quiet")
    assert result.exit_code == 0, result.output
    with h5py.File(out) as resumed, h5py.File(pipeline.radiomics) as uninterrupted:
        np.testing.assert_array_equal(resumed["features/radiomics/values"][()], uninterrupted["features/radiomics/values"][()])
    assert not journal.exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_segment_interrupted_leaves_nothing_and_reruns_identically(pipeline: Pipeline, tmp_path, sig):
    out = tmp_path / "seg.h5"
    run = _start("segment", pipeline.cohort / "cohort.csv", "--out", out, "--workers", 1, "--quiet")
    _wait_for(lambda: any(p.suffix == ".tmp" for p in tmp_path.iterdir()), run)
    time.sleep(0.5)
    run.send_signal(sig)
    output = run.communicate()[0]
    assert not out.exists()
    if sig == signal.SIGINT:
        assert run.returncode == 130 and "interrupted" in output and _leftovers(tmp_path) == []
    result = invoke("segment", pipeline.cohort / "cohort.csv", "--out", out, "--workers", 1, "--quiet")
    assert result.exit_code == 0, result.output
    with h5py.File(out) as rerun, h5py.File(pipeline.seg) as original:
        np.testing.assert_array_equal(rerun["segment/volumes"][()], original["segment/volumes"][()])
    assert _leftovers(tmp_path) == []


def _training_command(pipeline: Pipeline, stage: str, out: Path, epochs: int) -> list:
    if stage == "embed":
        return ["embed", pipeline.seg, "--out", out, "--fit", "--epochs", epochs, "--device", "cpu", "--quiet"]
    return ["fuse-train", pipeline.radiomics, "--clinical", pipeline.clinical, "--outcomes", pipeline.outcomes,
            "--out", out, "--folds", 3, "--device", "cpu", "--quiet"]


@pytest.mark.parametrize("stage", ["embed", "fuse-train"])
def test_training_stages_killed_leave_no_output(pipeline: Pipeline, tmp_path, stage):
    """embed --fit and fuse-train write nothing until they finish; a kill leaves no output and the rerun succeeds."""
    out = tmp_path / ("embed.h5" if stage == "embed" else "model")
    run = _start(*_training_command(pipeline, stage, out, 30))
    _wait_for(lambda: (tmp_path / f".{out.name}.lock").exists(), run)
    time.sleep(2.0)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert not out.exists() and not (tmp_path / "embed.pt").exists()
    result = invoke(*_training_command(pipeline, stage, out, 2))
    assert result.exit_code == 0, result.output
    assert out.exists() and _leftovers(tmp_path) == []
