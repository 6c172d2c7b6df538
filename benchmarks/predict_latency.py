"""Prediction latency on CPU: cold (process start to JSON) and warm (batch, per patient), and the stage that dominates.

Scans: one `synth --size full` scan (192×192×96) and the real upper-abdominal CT of ../shared/data/real-ct/. The
bundle is the default pipeline (classic segmentation, `fast` radiomics, `ssl` embeddings, `concat` with 5 folds × 5
seeds) trained once on a small synthetic cohort in --work, which later runs reuse.

Prints, per scan: cold seconds of `tipsprog predict --json` in a fresh process (median of --repeats); warm seconds
per patient of `predict --cohort` over --batch copies of the scan, model loaded once, with 1 and 2 workers; and the
seconds of each stage of one cold prediction in a fresh process (imports, bundle load, read, segment, radiomics,
crops, embedding, ensemble, attributions).

Usage: python benchmarks/predict_latency.py [--work DIR] [--batch 6] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from time import perf_counter

import pandas as pd

from shared_data import REAL_CT

GOAL_COLD_S = 20.0


def tipsprog(*args: str | Path, cwd: Path | None = None) -> float:
    """Run one CLI command in a fresh process; its wall seconds."""
    start = perf_counter()
    subprocess.run([sys.executable, "-m", "tipsprog", *map(str, args)], check=True, cwd=cwd, stdout=subprocess.DEVNULL)
    return perf_counter() - start


def build(work: Path) -> None:
    """Training cohort, stores and bundle (default pipeline), and one full-size synthetic scan; skipped when present."""
    work.mkdir(parents=True, exist_ok=True)
    steps = [
        ("cohort/cohort.csv", ["synth", "--out", "cohort", "--n", "120", "--seed", "5"]),
        ("seg.h5", ["segment", "cohort/cohort.csv", "--out", "seg.h5"]),
        ("radiomics.h5", ["radiomics", "seg.h5", "--out", "radiomics.h5"]),
        ("embed.h5", ["embed", "seg.h5", "--out", "embed.h5", "--fit"]),
        (
            "model/bundle.yaml",
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
            ],
        ),
        ("full/cohort.csv", ["synth", "--out", "full", "--n", "1", "--size", "full", "--seed", "9", "--prefix", "full-"]),
    ]
    for output, command in steps:
        if not (work / output).exists():
            print(f"  building {output} …", flush=True)
            tipsprog(*command, "--quiet", cwd=work)
    pd.read_csv(work / "cohort" / "clinical.csv").iloc[[0]].assign(patient_id="scan").to_csv(work / "row.csv", index=False)


def cold(work: Path, ct: Path, repeats: int) -> float:
    """Median seconds from process start to the JSON of one prediction."""
    return statistics.median(
        tipsprog("predict", "--ct", ct, "--clinical", work / "row.csv", "--model", work / "model", "--json", "--device", "cpu")
        for _ in range(repeats)
    )


def warm(work: Path, ct: Path, batch: int, workers: int) -> float:
    """Seconds per patient of a batch of `batch` copies of the scan, less the same command on one copy."""
    seconds = {}
    for size in (1, batch):
        ids = [f"copy{i}" for i in range(size)]
        pd.DataFrame({"patient_id": ids, "ct": [str(ct)] * size}).to_csv(work / "batch.csv", index=False)
        row = pd.read_csv(work / "row.csv")
        pd.concat([row.assign(patient_id=pid) for pid in ids]).to_csv(work / "batch_clinical.csv", index=False)
        subprocess.run(["rm", "-rf", str(work / "batch-out")], check=True)
        seconds[size] = tipsprog(
            "predict",
            "--cohort",
            work / "batch.csv",
            "--clinical",
            work / "batch_clinical.csv",
            "--model",
            work / "model",
            "--out",
            work / "batch-out",
            "--workers",
            workers,
            "--device",
            "cpu",
            "--quiet",
        )
    return (seconds[batch] - seconds[1]) / (batch - 1)


def stages(work: Path, ct: Path) -> dict[str, float]:
    """Seconds of each stage of one prediction in this fresh process, imports included (a cold prediction)."""
    start = perf_counter()
    import numpy as np
    import torch

    from tipsprog import store
    from tipsprog.clinical import read_clinical
    from tipsprog.devices import resolve_device
    from tipsprog.embed import embedding_block, load_encoder
    from tipsprog.fusion.attribution import integrated_gradients
    from tipsprog.fusion.bundle import load_bundle
    from tipsprog.fusion.data import clinical_features, modality_matrices, with_extras
    from tipsprog.fusion.ensemble import predict_members
    from tipsprog.images import read_ct
    from tipsprog.radiomics.extract import extract_from_file
    from tipsprog.segment import Backend, biomarkers, segment_scan
    from tipsprog.segment.crops import roi_crops, roi_volumes
    from tipsprog.segment.portal import portal_vein_measurements

    timing = {"imports": perf_counter() - start}

    def timed(name: str, function, *args):
        begin = perf_counter()
        value = function(*args)
        timing[name] = timing.get(name, 0.0) + perf_counter() - begin
        return value

    bundle = timed("bundle load", load_bundle, work / "model")
    device = resolve_device("cpu")
    image = timed("read CT", read_ct, str(ct))
    labels = timed("segment", segment_scan, image, Backend("classic"))
    blocks = {}
    for name, entry in bundle.manifest.blocks.items():
        if entry.extractor == "pyradiomics":
            values, _ = timed("radiomics", extract_from_file, str(ct), labels, entry.params)
            blocks[name] = store.FeatureBlock(np.array([[values.get(f, np.nan) for f in entry.names]]), entry.names, [])
        elif entry.extractor == biomarkers.EXTRACTOR:
            measured, _ = timed(
                "biomarkers", biomarkers.measure, image, labels, roi_volumes(labels), portal_vein_measurements(labels)
            )
            value_of = dict(zip(biomarkers.NAMES, measured))
            blocks[name] = store.FeatureBlock(np.array([[value_of.get(f, np.nan) for f in entry.names]]), entry.names, [])
        else:
            crops = timed("crops", roi_crops, image, labels)
            encoder = timed("embedding", load_encoder, entry.encoder, bundle.path / entry.weights)
            blocks[name] = timed(
                "embedding", embedding_block, encoder, {r: c[None] for r, c in crops.items()}, device, entry.pooling, {}, 1
            )
    table = with_extras(read_clinical(work / "row.csv"), bundle.manifest.clinical_extras)
    clinical, names = clinical_features(table, bundle.manifest.clinical_extras)
    matrices, _, _ = modality_matrices(blocks, np.array([0]), clinical, names, tuple(bundle.manifest.modalities))
    with torch.no_grad():
        timed("ensemble", predict_members, bundle.members, matrices, np.array([0]), bundle.config, device)
    timed("attributions", integrated_gradients, bundle.members, matrices, bundle.config, device)
    return timing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("benchmarks/.predict-work"))
    parser.add_argument("--batch", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stages-of", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = args.work.resolve()
    if args.stages_of:
        print(json.dumps(stages(work, args.stages_of)))
        return
    build(work)
    scans = {"synthetic full (192×192×96, 2 mm)": work / "full" / "images" / "full-P0000.nii.gz"}
    if REAL_CT.is_dir():  # example_ct (pelvis to upper abdomen) is left out: classic's liver leaks through all
        scans["real CT small (122×101×30, 3 mm)"] = REAL_CT / "example_ct_sm.nii.gz"  # 112 slices and QC refuses it
    print(f"CPU latency per scan, seconds (goal: cold under {GOAL_COLD_S:.0f} s)")
    print(f"{'scan':<36}{'cold':>7}{'warm 1 worker':>15}{'warm 2 workers':>16}   stages of one prediction (s)")
    for name, ct in scans.items():
        cold_s = cold(work, ct, args.repeats)
        warm_1, warm_2 = warm(work, ct, args.batch, 1), warm(work, ct, args.batch, 2)
        timing = json.loads(
            subprocess.run(
                [sys.executable, __file__, "--work", str(work), "--stages-of", str(ct)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.splitlines()[-1]
        )
        slowest = max((k for k in timing if k != "imports"), key=timing.get)
        detail = ", ".join(f"{k} {v:.2f}" for k, v in timing.items())
        print(f"{name:<36}{cold_s:>7.1f}{warm_1:>15.2f}{warm_2:>16.2f}   {detail}; slowest: {slowest}", flush=True)


if __name__ == "__main__":
    main()
