"""Seconds to segment one large CT, end to end, against TotalSegmentator's published mark.

TotalSegmentator's fastest setting (`--fast`, 3 mm) takes about 30 s on a GPU and 70 s on a CPU for a large CT.
This script upsamples the real abdominal CT in ../shared/data/real-ct/ (3 mm, 122×101×112) with a cubic B-spline
to a clinical grid (0.75×0.75×1 mm, 488×404×336, 66 million voxels, int16 NIfTI) and times `tipsprog segment` on a
one-row cohort: reading and reorienting the scan, segmenting, ROI crops, volumes, QC and writing the store. The
first run carries one-off costs (CUDA kernels, allocator, caches); the figure is the median of the runs after it.

`semi` needs a trained model: pass --model PATH, or the script trains one for --iterations on 8 labeled synthetic
scans. Its Dice does not matter here (benchmarks/segment_backends.py measures that): the network and grid are the
same whatever it learned.

Usage: python benchmarks/segment_large_ct.py [--device cpu|cuda] [--model PATH] [--iterations 50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import SimpleITK as sitk

from shared_data import REAL_CT
from tipsprog.errors import InputError
from tipsprog.images import resample_to_spacing
from tipsprog.segment import SegmentOptions, run_segment, semi
from tipsprog.synth import CohortSpec, make_cohort

CLINICAL_SPACING_MM = (0.75, 0.75, 1.0)


def large_ct(folder: Path) -> Path:
    """The real CT upsampled to a clinical grid and stored as int16 NIfTI."""
    upsampled = resample_to_spacing(
        sitk.ReadImage(str(REAL_CT / "example_ct.nii.gz")), CLINICAL_SPACING_MM, sitk.sitkBSpline, -1024.0
    )
    path = folder / "large_ct.nii.gz"
    sitk.WriteImage(sitk.Cast(upsampled, sitk.sitkInt16), str(path))
    return path


def quick_model(folder: Path, iterations: int, device: str) -> Path:
    """A `semi` model trained briefly on 8 labeled synthetic scans (for timing only)."""
    cohort = folder / "labeled"
    make_cohort(cohort, CohortSpec(n=8, centers=1, seed=3), workers=2)
    model_path = folder / "semi.pt"
    run_segment(
        cohort / "cohort.csv",
        folder / "labeled.h5",
        SegmentOptions(
            "semi",
            fit_csv=cohort / "cohort.csv",
            model_path=model_path,
            device=device,
            semi=semi.SemiSettings(iterations=iterations),
        ),
    )
    return model_path


def seconds_per_run(
    cohort_csv: Path, folder: Path, backend: str, model: Path | None, device: str, repeats: int
) -> tuple[list[float], str]:
    """Wall-clock seconds of `repeats` + 1 one-scan segment runs (the first is cold) and the scan's QC: a briefly
    trained `semi` model may leak and fail QC, which ends the run with an error after all of its work is done."""
    seconds, qc = [], "ok"
    for run in range(repeats + 1):
        start = time.perf_counter()
        try:
            run_segment(cohort_csv, folder / f"{backend}-{run}.h5", SegmentOptions(backend, model_path=model, device=device))
        except InputError as error:
            qc = "QC failed: " + re.search(r"\(patient [^:]+: ([a-z_]+:[a-z_]+)", str(error)).group(1)
        seconds.append(time.perf_counter() - start)
    return seconds, qc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", type=Path)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        ct_path = large_ct(folder)
        size = sitk.ReadImage(str(ct_path)).GetSize()
        cohort_csv = folder / "cohort.csv"
        pd.DataFrame({"patient_id": ["LARGE"], "ct": [str(ct_path)]}).to_csv(cohort_csv, index=False)
        model = args.model or quick_model(folder, args.iterations, args.device)
        print(
            f"large CT: {size[0]}×{size[1]}×{size[2]} voxels at {'×'.join(f'{s:g}' for s in CLINICAL_SPACING_MM)} mm, "
            f"{ct_path.stat().st_size / 2**20:.0f} MiB on disk; device {args.device}"
        )
        print(f"{'backend':<10}{'first s':>9}{'then s (median)':>18}   TotalSegmentator --fast: about 30 s GPU / 70 s CPU")
        for backend, model_path in (("classic", None), ("semi", model)):
            seconds, qc = seconds_per_run(cohort_csv, folder, backend, model_path, args.device, args.repeats)
            print(f"{backend:<10}{seconds[0]:>9.1f}{statistics.median(seconds[1:]):>18.1f}   {qc}")


if __name__ == "__main__":
    main()
