"""Self-supervised pre-training of the ssl encoder by masked-volume reconstruction.

Random cubes of each crop (CT and ROI mask alike) are replaced by noise (MONAI's RandCoarseDropout) and the
autoencoder learns to restore both channels from what is left, so its code must hold the ROI's shape and size as well
as its tissue. Restoring the CT alone, with the mask given intact, scored below random weights on the spleen-size
probe (benchmarks/embed_signal.py). Reconstruction was chosen over contrastive
learning because a cohort gives a few hundred crops (too few negatives), and a contrastive objective is made
invariant to its augmentations, which here would erase what prognosis needs: attenuation and texture
(intensity jitter) and organ size (random resized crops). Restoring hidden tissue keeps both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import AutoEncoder
from monai.transforms import RandCoarseDropout

from tipsprog.checkpoints import load_checkpoint, save_checkpoint
from tipsprog.journal import TrainingJournal, numpy_state, set_numpy_state
from tipsprog.outputs import file_sha256

WEIGHTS_FORMAT = "tipsprog-embed-ssl-2"
SSL_CHANNELS, SSL_STRIDES = (16, 32, 64), (2, 2, 2)


def build_ssl_network() -> AutoEncoder:
    """The MONAI 3D autoencoder pre-trained by masked-volume reconstruction of the CT + mask crop."""
    return AutoEncoder(spatial_dims=3, in_channels=2, out_channels=2, channels=SSL_CHANNELS, strides=SSL_STRIDES, norm="batch")


@dataclass(frozen=True)
class FitSettings:
    """Masked-volume reconstruction settings."""

    epochs: int = 40
    batch_size: int = 8
    learning_rate: float = 2e-3
    holes: int = 6
    hole_size: int = 6
    max_hole_size: int = 12
    seed: int = 0


def _masker(settings: FitSettings) -> RandCoarseDropout:
    """MONAI's cube dropout, filled with uniform noise over the crops' −1…1 range."""
    masker = RandCoarseDropout(
        holes=settings.holes,
        spatial_size=settings.hole_size,
        max_spatial_size=settings.max_hole_size,
        fill_value=(-1.0, 1.0),
        prob=1.0,
    )
    masker.set_random_state(settings.seed)
    return masker


def _masked_batch(batch: torch.Tensor, masker: RandCoarseDropout) -> torch.Tensor:
    """The batch with the same random cubes of each crop's CT and mask channels hidden."""
    return torch.stack([torch.as_tensor(masker(crop)) for crop in batch])


def fit_ssl(
    crops: np.ndarray,
    settings: FitSettings,
    device: torch.device,
    progress: Callable[[int, float], None] | None = None,
    journal: TrainingJournal | None = None,
) -> AutoEncoder:
    """Train the autoencoder to restore hidden parts of ROI crops [N, 2, D, H, W] (no outcome is ever seen).

    With a journal, the training state is saved between epochs and a resumed run continues from the saved epoch.
    """
    torch.manual_seed(settings.seed)
    generator = np.random.default_rng(settings.seed)
    masker = _masker(settings)
    network = build_ssl_network().to(device)
    optimiser = torch.optim.AdamW(network.parameters(), lr=settings.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, settings.epochs)
    saved = journal.load() if journal else None
    if saved:
        network.load_state_dict(saved["network"])
        optimiser.load_state_dict(saved["optimiser"])
        schedule.load_state_dict(saved["schedule"])
        set_numpy_state(generator, saved["order_generator"])
        set_numpy_state(masker.R, saved["masker_generator"])
    data = torch.from_numpy(crops.astype(np.float32))
    for epoch in range(saved["epoch"] if saved else 0, settings.epochs):
        network.train()
        order = generator.permutation(len(data))
        losses = []
        for start in range(0, len(order), settings.batch_size):
            batch = data[order[start : start + settings.batch_size]]
            flips = [axis for axis in (2, 3, 4) if generator.random() < 0.5]
            batch = torch.flip(batch, flips) if flips else batch
            restored = network(_masked_batch(batch, masker).to(device))
            loss = F.mse_loss(restored, batch.to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        schedule.step()
        if journal:
            # save() builds the state at once, so the loop variables are the current ones
            journal.save(
                lambda: {
                    "epoch": epoch + 1,
                    "network": network.state_dict(),
                    "optimiser": optimiser.state_dict(),
                    "schedule": schedule.state_dict(),
                    "order_generator": numpy_state(generator),
                    "masker_generator": numpy_state(masker.R),
                },
                f"epoch {epoch + 1} of {settings.epochs} done",
            )
        if progress:
            progress(epoch + 1, float(np.mean(losses)))
    return network.eval()


def save_ssl_weights(network: AutoEncoder, path: Path, fitted_on: list[str] | None = None) -> str:
    """Save the ssl network atomically, with the patients it was pre-trained on; return the file's sha256."""
    architecture = {"channels": list(SSL_CHANNELS), "strides": list(SSL_STRIDES)}
    payload = {"format": WEIGHTS_FORMAT, "architecture": architecture, "state_dict": network.state_dict()}
    if fitted_on is not None:
        payload["fitted_on"] = list(fitted_on)
    save_checkpoint(payload, path)
    return file_sha256(path)


def ssl_fitted_on(path: Path) -> list[str] | None:
    """The patients whose scans pre-trained a weights file (None: the file does not record them)."""
    payload = load_checkpoint(
        path, WEIGHTS_FORMAT, "ssl encoder weights file", torch.device("cpu"), " (train them with `tipsprog embed --fit`)"
    )
    fitted_on = payload.get("fitted_on")
    return [str(pid) for pid in fitted_on] if isinstance(fitted_on, list) else None


def load_ssl_weights(path: Path) -> AutoEncoder:
    """Load weights saved by save_ssl_weights (weights_only, so no code from the file runs)."""
    payload = load_checkpoint(
        path, WEIGHTS_FORMAT, "ssl encoder weights file", torch.device("cpu"), " (train them with `tipsprog embed --fit`)"
    )
    network = build_ssl_network()
    network.load_state_dict(payload["state_dict"])
    return network.eval()
