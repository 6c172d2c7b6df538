"""No command may destroy a file: an output is never one of the command's inputs or a folder holding one, never
replaces a file or folder that is not a previous output of its kind, and a failed command leaves nothing behind."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from conftest import Pipeline, invoke
from tipsprog import outputs


def _copies(pipeline: Pipeline, folder: Path) -> dict[str, Path]:
    """Private copies of every input a stage reads (so a failing check cannot harm the shared fixture)."""
    shutil.copytree(pipeline.cohort, folder / "cohort")
    for name in ("seg.h5", "radiomics.h5", "embed.h5"):
        shutil.copyfile(pipeline.root / name, folder / name)
    shutil.copytree(pipeline.bundle, folder / "model")
    return {
        "cohort": folder / "cohort" / "cohort.csv",
        "clinical": folder / "cohort" / "clinical.csv",
        "outcomes": folder / "cohort" / "outcomes.csv",
        "seg": folder / "seg.h5",
        "radiomics": folder / "radiomics.h5",
        "embed": folder / "embed.h5",
        "model": folder / "model",
    }


def _stage(name: str, inputs: dict[str, Path], out: Path) -> list:
    """The command line of one stage writing `out`."""
    return {
        "segment": ["segment", inputs["cohort"], "--out", out],
        "radiomics": ["radiomics", inputs["seg"], "--out", out],
        "embed": ["embed", inputs["seg"], "--out", out, "--weights", inputs["model"] / "none.pt"],
        "fuse-train": [
            "fuse-train",
            inputs["radiomics"],
            inputs["embed"],
            "--clinical",
            inputs["clinical"],
            "--outcomes",
            inputs["outcomes"],
            "--out",
            out,
            "--folds",
            3,
        ],
        "evaluate": ["evaluate", inputs["model"], "--out", out],
        "predict": [
            "predict",
            "--cohort",
            inputs["cohort"],
            "--clinical",
            inputs["clinical"],
            "--model",
            inputs["model"],
            "--out",
            out,
        ],
    }[name]


STAGE_INPUTS = [
    ("segment", "cohort"),
    ("radiomics", "seg"),
    ("embed", "seg"),
    ("fuse-train", "radiomics"),
    ("fuse-train", "embed"),
    ("fuse-train", "clinical"),
    ("fuse-train", "outcomes"),
    ("evaluate", "model"),
    ("predict", "cohort"),
    ("predict", "clinical"),
    ("predict", "model"),
]


def _tree(folder: Path) -> dict[str, str]:
    """Every file and folder under `folder` with the sha256 of each file's bytes."""
    return {str(p.relative_to(folder)): outputs.file_sha256(p) if p.is_file() else "folder" for p in folder.rglob("*")}


@pytest.mark.parametrize("where", ["the input", "its folder", "a folder above it"])
@pytest.mark.parametrize("stage,given", STAGE_INPUTS, ids=[f"{s}-{i}" for s, i in STAGE_INPUTS])
def test_an_output_never_replaces_an_input(pipeline, tmp_path, stage, given, where):
    """Whatever stage and input, `--out` naming the input or a folder holding it exits 2 before any work and leaves
    every file as it was."""
    inputs = _copies(pipeline, tmp_path / "data")
    out = {"the input": inputs[given], "its folder": inputs[given].parent, "a folder above it": tmp_path}[where]
    before = _tree(tmp_path)
    result = invoke(*_stage(stage, inputs, out))
    assert result.exit_code == 2, result.output
    assert "input of this command" in result.output
    assert _tree(tmp_path) == before


def test_windows_separators_in_cohort_paths_are_read(pipeline, tmp_path):
    """cohort.csv written on Windows (images\\P0000.nii.gz) segments the same scans as with '/'."""
    cohort = pd.read_csv(pipeline.cohort / "cohort.csv").head(2)
    shutil.copytree(pipeline.cohort / "images", tmp_path / "images")
    shutil.copytree(pipeline.cohort / "labels", tmp_path / "labels")
    cohort[["ct", "label"]] = cohort[["ct", "label"]].apply(lambda column: column.str.replace("/", "\\"))
    cohort.to_csv(tmp_path / "cohort.csv", index=False)
    result = invoke("segment", tmp_path / "cohort.csv", "--out", tmp_path / "seg.h5", "--workers", 1)
    assert result.exit_code == 0, result.output
    assert "2 ok, 0 failed" in result.output and "Mean of empty slice" not in result.output
