"""Shared fixtures: a tiny synthetic cohort pushed once through the whole CLI pipeline."""

from __future__ import annotations

import locale
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import SimpleITK as sitk
from hypothesis import settings
from typer.testing import CliRunner

from tipsprog.cli import app
from tipsprog.journal import PAUSE_VARIABLE, PAUSED_LINE

settings.register_profile("ci", derandomize=True, database=None)  # CI: the same examples every run, no flakes
if os.environ.get("CI"):
    settings.load_profile("ci")

REAL_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-ct" / "totalsegmentator-example"
UID_ROOT = "1.2.826.0.1.3680043.2.1125.1"


def interrupt_after(count: int) -> Callable[[object], None]:
    """A progress callback that interrupts the run (KeyboardInterrupt) when its count-th patient is done."""
    done = []

    def progress(record: object) -> None:
        done.append(record)
        if len(done) == count:
            raise KeyboardInterrupt

    return progress


# The child answers SIGINT as at a terminal (KeyboardInterrupt) even where this test run inherited SIGINT ignored,
# as a shell's background job does: Python then leaves it ignored, and a SIGINT sent to the child is discarded.
INTERRUPTIBLE_TIPSPROG = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'tipsprog'; runpy.run_module('tipsprog', run_name='__main__')"
)


def start_tipsprog(*args, pause_after: int | None = None, env: dict | None = None) -> subprocess.Popen:
    """Start a real `tipsprog` process (output and errors on one pipe) that a SIGINT interrupts; with `pause_after`,
    it stops at its pause_after-th journal write until it is signalled (TIPSPROG_PAUSE_AFTER, tipsprog/journal.py)."""
    environment = {**os.environ, **(env or {})}
    if pause_after is not None:
        environment[PAUSE_VARIABLE] = str(pause_after)
    return subprocess.Popen(
        [sys.executable, "-c", INTERRUPTIBLE_TIPSPROG, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=environment,
    )


def wait_until_paused(process: subprocess.Popen) -> None:
    """Read a process's output until it says it has paused; it then waits for a signal, so it cannot finish first."""
    seen = []
    for line in process.stdout:
        if PAUSED_LINE in line:
            return
        seen.append(line)
    process.wait()
    pytest.fail(f"exited {process.returncode} before reaching its pause point: {''.join(seen)}")


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


@pytest.fixture(autouse=True)
def process_locale_unchanged() -> Iterator[None]:
    """Every test leaves the process locale as it found it (GDCM once left it 'C' and later tests read text as ASCII)."""
    before = locale.setlocale(locale.LC_ALL)
    yield
    assert locale.setlocale(locale.LC_ALL) == before, "the process locale was changed (GDCM call outside locale_kept?)"


@pytest.fixture(autouse=True)
def environment_restored() -> Iterator[None]:
    """Every test leaves os.environ as it found it: starting a process-based Dask LocalCluster sets
    OMP_NUM_THREADS=1 (and MKL_, OPENBLAS_NUM_THREADS, PYTHONHASHSEED) in its parent, so a later test's tipsprog
    subprocess trained on one thread while the in-process run it is compared with used two."""
    before = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(before)


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """synth → segment → radiomics → embed → fuse-train on 30 small patients."""
    root = tmp_path_factory.mktemp("pipeline")
    steps = [
        ("synth", "--out", root / "cohort", "--n", 30, "--seed", 3, "--quiet"),
        ("segment", root / "cohort" / "cohort.csv", "--out", root / "seg.h5", "--workers", 2, "--quiet"),
        ("radiomics", root / "seg.h5", "--out", root / "radiomics.h5", "--workers", 2, "--quiet"),
        ("embed", root / "seg.h5", "--out", root / "embed.h5", "--fit", "--epochs", 2, "--device", "cpu", "--quiet"),
        (
            "fuse-train",
            root / "seg.h5",
            root / "radiomics.h5",
            root / "embed.h5",
            "--clinical",
            root / "cohort" / "clinical.csv",
            "--outcomes",
            root / "cohort" / "outcomes.csv",
            "--out",
            root / "model",
            "--folds",
            3,
            "--device",
            "cpu",
            "--quiet",
        ),
    ]
    for step in steps:
        result = invoke(*step)
        assert result.exit_code == 0, f"{step[0]} failed: {result.output}"
    return Pipeline(root, root / "cohort", root / "seg.h5", root / "radiomics.h5", root / "embed.h5", root / "model")


@dataclass
class FewPatients:
    """The tiny cohort's first patients on their own (absolute paths), segmented once: for tests that run a stage
    several times and need only a few scans."""

    cohort_csv: Path
    seg: Path


@pytest.fixture(scope="session")
def few(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> FewPatients:
    """The first 6 patients of the pipeline's cohort and their segment store."""
    root = tmp_path_factory.mktemp("few")
    cohort = pd.read_csv(pipeline.cohort / "cohort.csv", dtype=str).head(6)
    for column in ("ct", "label"):
        cohort[column] = [str(pipeline.cohort / path) for path in cohort[column]]
    cohort.to_csv(root / "cohort.csv", index=False)
    result = invoke("segment", root / "cohort.csv", "--out", root / "seg.h5", "--workers", 2, "--quiet")
    assert result.exit_code == 0, result.output
    return FewPatients(root / "cohort.csv", root / "seg.h5")


def shared_data(path: Path) -> Path:
    """A file or folder of ../shared/data: skips the test where it is absent on a developer's machine, fails it in
    CI (CI=true), which always has ../shared beside the checkout."""
    if not path.exists():
        message = f"{path} is not available (../shared/data beside the checkout)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def real_ct() -> Path:
    """The TotalSegmentator example folder (see shared_data)."""
    return shared_data(REAL_CT)


@contextmanager
def locale_kept() -> Iterator[None]:
    """Put the process locale back after GDCM calls made by a test (GDCM leaves it 'C'; Python then reads text as
    ASCII), as tipsprog.images does around its own."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def write_dicom_series(image: sitk.Image, folder: Path, series: int = 2, description: str = "CT") -> Path:
    """Write a 3-D image as a CT DICOM series (one file per slice, positions and orientation tagged) into `folder`;
    series UID `UID_ROOT.<series>` and files `s<series>_<slice>.dcm`, so several series can share a folder."""
    folder.mkdir(exist_ok=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    d = image.GetDirection()
    orientation = "\\".join(str(v) for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    with locale_kept():
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        for index in range(image.GetDepth()):
            plane = image[:, :, index]
            tags = {
                "0008|0060": "CT",
                "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
                "0020|000d": f"{UID_ROOT}.1",
                "0020|000e": f"{UID_ROOT}.{series}",
                "0020|0052": f"{UID_ROOT}.1.0",
                "0008|0018": f"{UID_ROOT}.{series}.{index}",
                "0020|0037": orientation,
                "0020|0032": "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, index))),
                "0020|0013": str(index),
                "0018|0050": str(image.GetSpacing()[2]),
                "0028|1052": "0",
                "0028|1053": "1",
                "0008|103e": description,
            }
            for key, value in tags.items():
                plane.SetMetaData(key, value)
            writer.SetFileName(str(folder / f"s{series}_{index:03d}.dcm"))
            writer.Execute(plane)
    return folder


def rewrite_dicom_slice(source: Path, target: Path, tags: dict[str, str]) -> None:
    """Write a DICOM slice file again with some tags changed (to break a series on purpose)."""
    with locale_kept():
        plane = sitk.ReadImage(str(source))
        for key, value in tags.items():
            plane.SetMetaData(key, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(target))
        writer.Execute(plane)
