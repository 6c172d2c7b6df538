"""embed stage: deep ROI embeddings from a self-supervised MONAI 3D autoencoder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import AutoEncoder

from tipsprog import store
from tipsprog.checkpoints import load_checkpoint, save_checkpoint
from tipsprog.devices import resolve_device
from tipsprog.errors import InputError
from tipsprog.store import file_sha256

EMBED_ROIS = ("liver", "spleen")
WEIGHTS_FORMAT = "tipsprog-embed-1"


@dataclass(frozen=True)
class FitSettings:
    """Self-supervised training settings."""

    epochs: int = 15
    batch_size: int = 16
    learning_rate: float = 2e-3
    seed: int = 0


ARCHITECTURE = {"channels": [8, 16, 32], "strides": [2, 2, 2]}


def build_autoencoder() -> AutoEncoder:
    """The small MONAI 3D autoencoder over (CT, mask) crops; BatchNorm keeps absolute intensity."""
    return AutoEncoder(spatial_dims=3, in_channels=2, out_channels=2, channels=ARCHITECTURE["channels"],
                       strides=ARCHITECTURE["strides"], norm="batch")


def masked_pool(feature_map: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mask-weighted mean of a [B, C, d, h, w] feature map, the mask pooled to its resolution."""
    weights = F.adaptive_avg_pool3d(mask, feature_map.shape[2:])
    return (feature_map * weights).sum(dim=(2, 3, 4)) / weights.sum(dim=(2, 3, 4)).clamp_min(1e-3)


def fit_autoencoder(crops: np.ndarray, settings: FitSettings, device: torch.device,
                    progress: Callable[[int, float], None] | None = None) -> AutoEncoder:
    """Train the autoencoder to reconstruct ROI crops (no outcome is ever seen)."""
    torch.manual_seed(settings.seed)
    generator = np.random.default_rng(settings.seed)
    model = build_autoencoder().to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    data = torch.from_numpy(crops.astype(np.float32))
    for epoch in range(settings.epochs):
        model.train()
        order = generator.permutation(len(data))
        losses = []
        for start in range(0, len(order), settings.batch_size):
            batch = data[order[start:start + settings.batch_size]].to(device)
            flip_axes = [axis for axis in (2, 3, 4) if generator.random() < 0.5]
            batch = torch.flip(batch, flip_axes) if flip_axes else batch
            loss = F.mse_loss(model(batch), batch)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        if progress:
            progress(epoch + 1, float(np.mean(losses)))
    return model.eval()


def save_weights(model: AutoEncoder, path: Path) -> str:
    """Save encoder weights atomically; return their sha256."""
    save_checkpoint({"format": WEIGHTS_FORMAT, "architecture": ARCHITECTURE, "state_dict": model.state_dict()}, path)
    return file_sha256(path)


def load_weights(path: Path, device: torch.device) -> AutoEncoder:
    """Load encoder weights saved by `save_weights` (weights_only, so no code runs)."""
    payload = load_checkpoint(path, WEIGHTS_FORMAT, "ssl encoder weights file", device)
    model = build_autoencoder().to(device)
    model.load_state_dict(payload["state_dict"])
    return model.eval()


@torch.no_grad()
def embed_crops(model: AutoEncoder, crops: np.ndarray, device: torch.device, batch_size: int = 32) -> np.ndarray:
    """Mask-pooled encoder features for [N, 2, D, H, W] crops of one ROI."""
    pooled = []
    for start in range(0, len(crops), batch_size):
        batch = torch.from_numpy(crops[start:start + batch_size].astype(np.float32)).to(device)
        pooled.append(masked_pool(model.encode(batch), batch[:, 1:2]).float().cpu().numpy())
    return np.concatenate(pooled) if pooled else np.zeros((0, ARCHITECTURE["channels"][-1]), np.float32)


def embedding_block(model: AutoEncoder, crops_by_roi: dict[str, np.ndarray], device: torch.device,
                    provenance: dict[str, str]) -> store.FeatureBlock:
    """Embeddings of every ROI concatenated, named embed-ssl/<roi>/<k>."""
    parts, names, groups = [], [], []
    for roi in EMBED_ROIS:
        values = embed_crops(model, crops_by_roi[roi], device)
        parts.append(values)
        names += [f"embed-ssl/{roi}/{k}" for k in range(values.shape[1])]
        groups += [f"{roi}/embed-ssl/autoencoder"] * values.shape[1]
    return store.FeatureBlock(np.concatenate(parts, axis=1), names, groups,
                              {"extractor": "embed-ssl", "settings": str(ARCHITECTURE), **provenance})


def run_embed(seg_path: Path, out: Path, fit: bool, weights: Path | None, device_name: str = "auto",
              settings: FitSettings = FitSettings(), progress: Callable[[int, float], None] | None = None) -> Path:
    """Embed every patient of a segment store into embed.h5; with fit, train the encoder first."""
    device = resolve_device(device_name)
    weights = weights or out.with_suffix(".pt")
    if not fit and not weights.is_file():
        raise InputError(f"{weights}: no encoder weights; train them with --fit or pass --weights PATH")
    with store.open_store(seg_path) as seg:
        if "segment/crops" not in seg:
            raise InputError(f"{seg_path}: not a segment store (no /segment/crops)")
        ids, centers = store.read_patients(seg), store.read_centers(seg)
        status, reasons = store.read_qc(seg)
        segment_provenance = store.segment_provenance(seg)
        crops = {roi: store.read_crops(seg, roi) for roi in EMBED_ROIS}
    usable = np.array([s == "ok" for s in status])
    if fit:
        if usable.sum() < 2:
            raise InputError(f"{seg_path}: fewer than 2 usable scans to train the encoder on")
        training = np.concatenate([crops[roi][usable] for roi in EMBED_ROIS])
        model = fit_autoencoder(training, settings, device, progress)
        sha = save_weights(model, weights)
    else:
        model, sha = load_weights(weights, device), file_sha256(weights)
    provenance = {"weights_sha256": sha, "weights_path": str(weights.resolve()), **segment_provenance}
    block = embedding_block(model, crops, device, provenance)
    block.values[~usable] = np.nan
    with store.create_store(out, ids, centers) as h5:
        store.write_features(h5, "embed-ssl", block)
        store.write_qc(h5, status, reasons)
    return weights
