"""Killing a stage mid-run (SIGINT or SIGKILL) leaves no output, no temporary file and no lock that blocks a rerun;
the rerun with --resume continues from the journal and gives the result of an uninterrupted run."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import FewPatients, Pipeline, invoke, start_tipsprog, wait_until_paused


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _journal_records(path: Path) -> int:
    """Patients a running stage has finished, read from its journal without locking it (0 while unreadable)."""
    try:
        with h5py.File(path, "r", locking=False) as journal:
            return len(journal["records"])
    except (OSError, KeyError):
        return 0


def _same_segment_store(first: Path, second: Path) -> None:
    """Masks, crops, volumes and QC of two segment stores are identical."""
    with h5py.File(first) as a, h5py.File(second) as b:
        for key in (
            "segment/volumes",
            "segment/portal_vein",
            "qc/status",
            "qc/flags",
            "segment/crops/liver",
            "segment/crops/spleen",
            "segment/crops/portal_vein",
            "features/biomarkers/values",
        ):
            np.testing.assert_array_equal(a[key][()], b[key][()])
        assert set(a["segment/masks"]) == set(b["segment/masks"])
        for pid in a["segment/masks"]:
            np.testing.assert_array_equal(a[f"segment/masks/{pid}"][()], b[f"segment/masks/{pid}"][()])


def _same_radiomics_store(first: Path, second: Path) -> None:
    with h5py.File(first) as a, h5py.File(second) as b:
        np.testing.assert_array_equal(a["features/radiomics/values"][()], b["features/radiomics/values"][()])


@pytest.mark.slow
@pytest.mark.parametrize(
    "stage,sig",
    [("segment", signal.SIGINT), ("segment", signal.SIGKILL), ("radiomics", signal.SIGINT), ("radiomics", signal.SIGKILL)],
    ids=["segment-SIGINT", "segment-SIGKILL", "radiomics-SIGINT", "radiomics-SIGKILL"],
)
def test_per_scan_stage_interrupted_then_resumed_equals_an_uninterrupted_run(
    pipeline: Pipeline, few: FewPatients, tmp_path, stage, sig
):
    """The journal keeps the scans finished before the signal; --resume reuses them and the store is the same."""
    source, reference, same = (
        (few.cohort_csv, few.seg, _same_segment_store)
        if stage == "segment"
        else (pipeline.seg, pipeline.radiomics, _same_radiomics_store)
    )
    out = tmp_path / reference.name
    journal = tmp_path / f"{reference.name}.partial"
    run = start_tipsprog(stage, source, "--out", out, "--workers", 1, "--quiet", pause_after=4)
    wait_until_paused(run)
    assert _journal_records(journal) == 4
    run.send_signal(sig)
    output = run.communicate()[0]
    assert not out.exists() and _journal_records(journal) == 4
    if sig == signal.SIGINT:
        assert run.returncode == 130 and "interrupted" in output
    result = invoke(stage, source, "--out", out, "--resume", "--workers", 1)
    assert result.exit_code == 0, result.output
    same(out, reference)
    assert not journal.exists() and _leftovers(tmp_path) == []


QUICK_TRAINING = (
    "seeds: 2\nstages: [{name: joint, max_epochs: 60, patience: 15, shared_lr_scale: 1.0, loss_weights: {survival: 1.0}}]\n"
)


def _training_command(pipeline: Pipeline, stage: str, out: Path) -> list:
    if stage == "embed":
        return ["embed", pipeline.seg, "--out", out, "--fit", "--epochs", 6, "--device", "cpu"]
    config = out.parent / "quick.yaml"  # 2 seeds per fold, a short stage: enough epochs to stop in, and quick
    config.write_text(QUICK_TRAINING)
    options = ["--folds", 3, "--config", config, "--device", "cpu"]
    return [
        "fuse-train",
        pipeline.radiomics,
        "--clinical",
        pipeline.clinical,
        "--outcomes",
        pipeline.outcomes,
        "--out",
        out,
        *options,
    ]


def _training_result(stage: str, out: Path) -> np.ndarray:
    """What the stage computed: the embeddings, or the out-of-fold risks."""
    key, path = ("features/embed-ssl/values", out) if stage == "embed" else ("oof/risk", out / "oof.h5")
    with h5py.File(path) as h5:
        return h5[key][()]


@pytest.fixture(scope="module")
def uninterrupted(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], np.ndarray]:
    """A training stage's result when never stopped, computed once per stage for the signals tested."""
    results: dict[str, np.ndarray] = {}

    def result(stage: str) -> np.ndarray:
        if stage not in results:
            out = tmp_path_factory.mktemp("whole") / ("embed.h5" if stage == "embed" else "model")
            run = invoke(*_training_command(pipeline, stage, out), "--quiet")
            assert run.exit_code == 0, run.output
            results[stage] = _training_result(stage, out)
        return results[stage]

    return result


@pytest.mark.slow
@pytest.mark.parametrize(
    "stage,sig",
    [("embed", signal.SIGKILL), ("fuse-train", signal.SIGINT), ("fuse-train", signal.SIGKILL)],
    ids=["embed-SIGKILL", "fuse-train-SIGINT", "fuse-train-SIGKILL"],
)
def test_training_stage_killed_then_resumed_equals_an_uninterrupted_run(pipeline: Pipeline, uninterrupted, tmp_path, stage, sig):
    """embed --fit and fuse-train save their training state as they go; a signal leaves no output, and --resume
    continues from the saved epoch to the same result as a run that was never stopped."""
    name = "embed.h5" if stage == "embed" else "model"
    out, journal = tmp_path / name, tmp_path / f"{name}.partial"
    run = start_tipsprog(
        *_training_command(pipeline, stage, out), "--quiet", pause_after=3, env={"TIPSPROG_CHECKPOINT_SECONDS": "0"}
    )
    wait_until_paused(run)
    assert journal.exists()
    run.send_signal(sig)
    output = run.communicate()[0]
    assert not out.exists() and journal.exists()
    if sig == signal.SIGINT:
        assert run.returncode == 130 and "interrupted" in output
    result = invoke(*_training_command(pipeline, stage, out), "--resume")
    assert result.exit_code == 0, result.output
    assert f"--resume: continuing from {journal}" in " ".join(result.output.split())
    np.testing.assert_array_equal(_training_result(stage, out), uninterrupted(stage))
    assert not journal.exists() and _leftovers(tmp_path) == []
