"""Shared fixtures: a tiny synthetic cohort pushed once through the whole CLI pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from typer.testing import CliRunner

from tipsprog.cli import app

REAL_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-ct" / "totalsegmentator-example"


def interrupt_after(count: int) -> Callable[[object], None]:
    """A progress callback that interrupts the run (KeyboardInterrupt) when its count-th patient is done."""
    done = []

    def progress(record: object) -> None:
        done.append(record)
        if len(done) == count:
            raise KeyboardInterrupt

    return progress


def invoke(*args: str):
    """Run the CLI in-process; return click's Result."""
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@dataclass
class Pipeline:
    """Paths produced by running every stage once on a tiny cohort."""

    root: Path
    cohort: Path
    seg: Path
    radiomics: Path
    embed: Path
    bundle: Path

    @property
    def clinical(self) -> Path:
        return self.cohort / "clinical.csv"

    @property
    def outcomes(self) -> Path:
        return self.cohort / "outcomes.csv"


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """synth → segment → radiomics → embed → fuse-train on 30 small patients."""
    root = tmp_path_factory.mktemp("pipeline")
    steps = [
        ("synth", "--out", root / "cohort", "--n", 30, "--seed", 3, "--quiet"),
        ("segment", root / "cohort" / "cohort.csv", "--out", root / "seg.h5", "--workers", 2, "--quiet"),
        ("radiomics", root / "seg.h5", "--out", root / "radiomics.h5", "--workers", 2, "--quiet"),
        ("embed", root / "seg.h5", "--out", root / "embed.h5", "--fit", "--epochs", 2, "--device", "cpu", "--quiet"),
        ("fuse-train", root / "radiomics.h5", root / "embed.h5", "--clinical", root / "cohort" / "clinical.csv",
         "--outcomes", root / "cohort" / "outcomes.csv", "--out", root / "model", "--folds", 3, "--device", "cpu", "--quiet"),
    ]
    for step in steps:
        result = invoke(*step)
        assert result.exit_code == 0, f"{step[0]} failed: {result.output}"
    return Pipeline(root, root / "cohort", root / "seg.h5", root / "radiomics.h5", root / "embed.h5", root / "model")


@pytest.fixture
def real_ct() -> Path:
    """The TotalSegmentator example folder (skips when ../shared is not beside the checkout)."""
    if not REAL_CT.is_dir():
        pytest.skip("../shared/data/real-ct is not available")
    return REAL_CT
