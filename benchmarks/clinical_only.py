"""Do the attention and graph models lose to the linear clinical Cox on clinical data alone? (#23 item 4.)

For --seeds synthetic cohorts of --n patients (`tipsprog synth`, 3 centers), each of --models is trained by
`fuse-train --modalities clinical` (5 folds × 5 seeds, the packaged config) twice: as shipped (a residual on the
linear clinical Cox, `clinical_offset: true`) and as the papers train it (the network alone,
`clinical_offset: false`). Printed: out-of-fold Harrell's C of each, the clinical Cox's (the report's baseline row,
same folds) and the paired difference, mean and min to max over the cohorts; and the residual weights chosen.

Usage: python benchmarks/clinical_only.py [--n 300] [--seeds 0 1 2] [--models tmiclnet multitips graph]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from tipsprog.fusion import FuseTrainOptions, run_fuse_train
from tipsprog.fusion.config import load_config
from tipsprog.synth import CohortSpec, make_cohort


def cohort_rows(n: int, seed: int, models: list[str]) -> list[dict]:
    """Each model's C, guided and alone, on one clinical-only cohort."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        make_cohort(folder / "cohort", CohortSpec(n=n, centers=3, seed=seed), workers=2)
        for model in models:
            for guided in (True, False):
                config = dataclasses.replace(load_config(model=model), clinical_offset=guided)
                metrics = run_fuse_train(
                    [],
                    folder / "cohort" / "clinical.csv",
                    folder / "cohort" / "outcomes.csv",
                    folder / f"{model}-{guided}",
                    FuseTrainOptions(config, modalities=("clinical",), device="cpu"),
                )
                rows.append(
                    {
                        "seed": seed,
                        "model": model,
                        "guided": guided,
                        "C": metrics["harrell_c"]["model"]["estimate"],
                        "clinical Cox": metrics["harrell_c"]["clinical-cox"]["estimate"],
                        "weights": metrics.get("residual_weight_by_fold", []),
                    }
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=["tmiclnet", "multitips", "graph"])
    args = parser.parse_args()
    table = pd.DataFrame([row for seed in args.seeds for row in cohort_rows(args.n, seed, args.models)])
    print(
        f"clinical data alone: {args.n} patients, generator seeds {args.seeds}, 5-fold CV, 5 seeds per fold; "
        f"out-of-fold Harrell's C (mean over cohorts) and paired Δ vs the clinical Cox (mean, min to max)"
    )
    print(f"  {'clinical Cox (lifelines)':<50}{table['clinical Cox'].mean():.3f}")
    for (model, guided), rows in table.groupby(["model", "guided"], sort=False):
        delta = rows["C"] - rows["clinical Cox"]
        label = f"{model}, {'residual on the clinical Cox (default)' if guided else 'network alone'}"
        weights = np.concatenate([np.asarray(w, float) for w in rows["weights"]]) if guided else np.array([])
        used = f"; residual used in {np.mean(weights > 0):.0%} of folds" if len(weights) else ""
        print(f"  {label:<50}{rows['C'].mean():.3f}  Δ {delta.mean():+.3f} ({delta.min():+.3f} to {delta.max():+.3f}){used}")


if __name__ == "__main__":
    main()
