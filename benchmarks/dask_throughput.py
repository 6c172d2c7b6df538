"""Per-scan stages on a Dask cluster (#24): throughput of a 2-worker process LocalCluster against the local pool.

One synthetic cohort (--n patients, --size grid, seed 31) is segmented, its radiomics extracted and its ROIs
embedded (ssl encoder, random weights saved once: inference only) twice: with `--workers 2` (the local process
pool; embed runs in this process with torch's own threads) and with `--scheduler` pointing at a LocalCluster of
2 single-threaded worker processes started here. Each stage is one `tipsprog` process; printed: seconds and
patients per minute of each, and whether the two stores' features are identical.

Usage: python benchmarks/dask_throughput.py [--n 40] [--size small]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from tipsprog.embed import random_encoder
from tipsprog.embed.ssl import save_ssl_weights

STAGES = {
    "segment": ("features/biomarkers/values", lambda run: ["segment", "cohort/cohort.csv", "--out", f"{run}/seg.h5"]),
    "radiomics": ("features/radiomics/values", lambda run: ["radiomics", f"{run}/seg.h5", "--out", f"{run}/radiomics.h5"]),
    "embed": (
        "features/embed-ssl/values",
        lambda run: ["embed", f"{run}/seg.h5", "--out", f"{run}/embed.h5", "--weights", "ssl.pt", "--device", "cpu"],
    ),
}


def timed(work: Path, command: list[str]) -> float:
    """Seconds one `tipsprog` command takes in `work`."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tipsprog", *command, "--quiet"], cwd=work, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--size", default="small", choices=("small", "full"))
    args = parser.parse_args()
    from distributed import LocalCluster

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        timed(work, ["synth", "--out", "cohort", "--n", str(args.n), "--seed", "31", "--size", args.size])
        save_ssl_weights(random_encoder(0).backbone, work / "ssl.pt", [])
        seconds: dict[str, dict[str, float]] = {"local": {}, "dask": {}}
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            where = {"local": ["--workers", "2"], "dask": ["--scheduler", cluster.scheduler_address]}
            for stage, (_, command) in STAGES.items():
                for run, option in where.items():
                    (work / run).mkdir(exist_ok=True)
                    extra = option if stage != "embed" or run == "dask" else []
                    seconds[run][stage] = timed(work, [*command(run), *extra])
        print(f"per-scan stages, {args.n} synthetic patients ({args.size} grid), 2 workers each way")
        print(f"{'stage':<12}{'local pool':>14}{'Dask 2 workers':>18}{'identical':>12}")
        for stage, (key, _) in STAGES.items():
            with h5py.File(work / "local" / f"{stage if stage != 'segment' else 'seg'}.h5") as local:
                with h5py.File(work / "dask" / f"{stage if stage != 'segment' else 'seg'}.h5") as dask:
                    same = np.array_equal(local[key][()], dask[key][()], equal_nan=True)
            cells = [f"{seconds[run][stage]:6.1f} s {60 * args.n / seconds[run][stage]:5.0f}/min" for run in ("local", "dask")]
            print(f"{stage:<12}{cells[0]:>14}{cells[1]:>18}{'yes' if same else 'NO':>12}")


if __name__ == "__main__":
    main()
