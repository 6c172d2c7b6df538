"""Embedding signal and throughput.

Prints, on a synthetic cohort segmented by the classic backend:
  - a ridge probe's cross-validated R² from each embedding to each imaging latent of truth.csv (spleen size,
    liver texture, sarcopenia, and the two latents behind them), for the ssl encoder pre-trained by
    masked-volume reconstruction next to the same network with random weights;
  - scans per second for embedding (two ROI crops per scan) with every encoder architecture, on this machine's
    CPU (random weights written in each publisher's layout; pass --device cuda on a GPU machine).

Usage: python benchmarks/embed_signal.py [--n 200] [--epochs 40] [--seeds 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from monai.networks.nets import ResNet
from monai.networks.nets.segresnet_ds import SegResEncoder
from monai.networks.nets.swin_unetr import SwinTransformer
from safetensors.torch import save_file
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import KFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tipsprog import store
from tipsprog.embed import EMBED_ROIS, embed_crops, random_encoder
from tipsprog.embed.encoders import RoiEncoder, load_encoder
from tipsprog.embed.ssl import FitSettings, fit_ssl
from tipsprog.segment import SegmentOptions, run_segment
from tipsprog.synth import CohortSpec, make_cohort

LATENTS = ("spleen_size", "liver_texture", "sarcopenia", "portal_hypertension", "liver_dysfunction")


def probe_r2(features: np.ndarray, target: np.ndarray, seed: int) -> float:
    """Mean 5-fold R² of a standardised ridge regression (alpha chosen inside each training fold)."""
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13)))
    return float(cross_val_score(model, features, target, cv=KFold(5, shuffle=True, random_state=seed), scoring="r2").mean())


def embed_cohort(encoder: RoiEncoder, crops: dict[str, np.ndarray], device: torch.device, pooling: str) -> np.ndarray:
    """Both ROIs' pooled embeddings side by side."""
    return np.concatenate([embed_crops(encoder, crops[roi], device, pooling) for roi in EMBED_ROIS], axis=1)


def publisher_files(folder: Path) -> dict[str, Path]:
    """Full-size random weights for each published architecture, saved in its publisher's layout."""
    files = {}
    for depth, block, layers in ((18, "basic", [2, 2, 2, 2]), (50, "bottleneck", [3, 4, 6, 3])):
        resnet = ResNet(
            block,
            layers,
            [64, 128, 256, 512],
            spatial_dims=3,
            n_input_channels=1,
            conv1_t_size=7,
            conv1_t_stride=2,
            shortcut_type="A" if depth == 18 else "B",
            feed_forward=False,
        )
        files[f"medicalnet-resnet{depth}"] = folder / f"resnet_{depth}_23dataset.pth"
        torch.save({"state_dict": {f"module.{k}": v for k, v in resnet.state_dict().items()}}, files[f"medicalnet-resnet{depth}"])
    swin = SwinTransformer(
        in_chans=1,
        embed_dim=48,
        window_size=(7, 7, 7),
        patch_size=(2, 2, 2),
        depths=(2, 2, 2, 2),
        num_heads=(3, 6, 12, 24),
        spatial_dims=3,
    )
    files["swinunetr"] = folder / "model_swinvit.pt"
    torch.save(
        {"state_dict": {f"module.{k}".replace("mlp.linear", "mlp.fc"): v for k, v in swin.state_dict().items()}},
        files["swinunetr"],
    )
    ctfm = SegResEncoder(spatial_dims=3, in_channels=1, init_filters=32, norm="batch", blocks_down=(1, 2, 2, 4, 4))
    files["ctfm"] = folder / "model.safetensors"
    save_file(ctfm.state_dict(), str(files["ctfm"]))
    return files


def scans_per_second(encoder: RoiEncoder, crops: dict[str, np.ndarray], device: torch.device, scans: int) -> float:
    """Scans embedded per second (both ROIs), after one warm-up batch."""
    subset = {roi: crops[roi][:scans] for roi in EMBED_ROIS}
    embed_cohort(encoder, {roi: c[:2] for roi, c in subset.items()}, device, "mean")
    start = time.perf_counter()
    embed_cohort(encoder, subset, device, "mean")
    return scans / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, default=3, help="Pre-training and random-initialisation seeds to compare.")
    parser.add_argument("--throughput-scans", type=int, default=16)
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        make_cohort(folder / "cohort", CohortSpec(n=args.n, centers=3, seed=args.seed), workers=2)
        run_segment(folder / "cohort" / "cohort.csv", folder / "seg.h5", SegmentOptions(workers=2))
        with store.open_store(folder / "seg.h5") as seg:
            crops = {roi: store.read_crops(seg, roi).astype(np.float32) for roi in EMBED_ROIS}
        truth = pd.read_csv(folder / "cohort" / "truth.csv")
        training = np.concatenate(list(crops.values()))
        start = time.perf_counter()
        pretrained = [
            RoiEncoder("ssl", fit_ssl(training, FitSettings(epochs=args.epochs, seed=seed), device)) for seed in range(args.seeds)
        ]
        print(
            f"ssl pre-training (masked-volume reconstruction, {args.epochs} epochs, {len(training)} crops): "
            f"{(time.perf_counter() - start) / args.seeds:.0f} s per seed on {device}"
        )
        encoders = {"ssl (pre-trained)": pretrained, "ssl (random weights)": [random_encoder(seed) for seed in range(args.seeds)]}
        print(
            f"\nRidge probe R² (5-fold CV, {args.n} patients), embedding → latent; mean (min–max) over {args.seeds} "
            "pre-training / initialisation seeds:"
        )
        print(f"{'encoder':<22}{'pooling':<10}" + "".join(f"{latent:>22}" for latent in LATENTS))
        for pooling in ("mean", "mean+max"):
            for name, seeded in encoders.items():
                scores = np.array(
                    [
                        [
                            probe_r2(embed_cohort(encoder, crops, device, pooling), truth[latent].to_numpy(), args.seed)
                            for latent in LATENTS
                        ]
                        for encoder in seeded
                    ]
                )
                cells = "".join(
                    f"{m:>8.3f} ({lo:.2f}–{hi:.2f})" for m, lo, hi in zip(scores.mean(0), scores.min(0), scores.max(0))
                )
                print(f"{name:<22}{pooling:<10}{cells}")
        print(f"\nThroughput on {device} ({args.throughput_scans} scans, 2 ROI crops each, batch 16):")
        encoders = {"ssl": pretrained[0]} | {name: load_encoder(name, path) for name, path in publisher_files(folder).items()}
        for name, encoder in encoders.items():
            print(f"  {name:<22}{scans_per_second(encoder, crops, device, args.throughput_scans):>8.2f} scans/s")


if __name__ == "__main__":
    main()
