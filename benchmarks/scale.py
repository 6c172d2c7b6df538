"""Scale: wall time and peak memory per stage for a large synthetic cohort, and whether memory grows with its size.

Runs synth → segment → radiomics → embed --fit (and embed with those weights, the per-scan part alone) →
fuse-train on cohorts of each --sizes (small volumes, 2 workers), every stage a fresh `tipsprog` process. Peak memory is the largest resident set of any one process of the stage
(the command or one of its workers; getrusage of the waited children). The per-scan stages stream to their stores,
so their peak should not grow with the cohort; training (the encoder's crops, the fusion model's feature matrices)
holds its data and grows with it.

Usage: python benchmarks/scale.py [--sizes 500,2000] [--work DIR] [--workers 2] [--stages radiomics,...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

MEASURE = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(json.dumps({"seconds": time.perf_counter() - start,
                  "peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def measured(command: list[str], cwd: Path) -> dict:
    """Wall seconds and peak resident MiB of one CLI command run in a fresh measuring process."""
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, sys.executable, "-m", "tipsprog", *command],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(result.stdout.splitlines()[-1])


def stages(size: int, workers: int) -> list[tuple[str, list[str]]]:
    """The pipeline's commands for a cohort of `size` patients."""
    parallel = ["--workers", str(workers), "--quiet"]
    return [
        ("synth", ["synth", "--out", "cohort", "--n", str(size), "--seed", "21", *parallel]),
        ("segment", ["segment", "cohort/cohort.csv", "--out", "seg.h5", *parallel]),
        ("radiomics", ["radiomics", "seg.h5", "--out", "radiomics.h5", *parallel]),
        ("embed --fit", ["embed", "seg.h5", "--out", "embed.h5", "--fit", "--device", "cpu", "--quiet"]),
        ("embed", ["embed", "seg.h5", "--out", "embed-again.h5", "--weights", "embed.pt", "--device", "cpu", "--quiet"]),
        (
            "fuse-train",
            [
                "fuse-train",
                "radiomics.h5",
                "embed.h5",
                "--clinical",
                "cohort/clinical.csv",
                "--outcomes",
                "cohort/outcomes.csv",
                "--out",
                "model",
                "--device",
                "cpu",
                "--quiet",
            ],
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="500,2000")
    parser.add_argument("--work", type=Path, default=Path("benchmarks/.scale-work"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--stages", default="", help="Re-measure only these stages on the cohorts already in --work.")
    args = parser.parse_args()
    chosen = set(args.stages.split(",")) if args.stages else None
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[str, dict[int, dict]] = {}
    for size in sizes:
        folder = args.work / str(size)
        if chosen is None:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        for name, command in stages(size, args.workers):
            if chosen is not None and name not in chosen:
                continue
            results.setdefault(name, {})[size] = measured(command, folder)
            print(
                f"  {size} patients, {name}: {results[name][size]['seconds']:.0f} s, {results[name][size]['peak_mib']:.0f} MiB",
                flush=True,
            )
    print(f"\nWall time and peak memory per stage ({args.workers} workers, small volumes)")
    print(f"{'stage':<14}" + "".join(f"{f'{n} patients':>22}" for n in sizes) + f"{'memory ratio':>14}")
    for name, by_size in results.items():
        cells = "".join(f"{by_size[n]['seconds']:>9.0f} s {by_size[n]['peak_mib']:>6.0f} MiB" for n in sizes)
        ratio = by_size[sizes[-1]]["peak_mib"] / by_size[sizes[0]]["peak_mib"]
        print(f"{name:<14}{cells}{ratio:>13.2f}×")


if __name__ == "__main__":
    main()
