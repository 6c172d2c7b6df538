"""Encoders over the stored ROI crops: each maps [B, 2, D, H, W] crops (CT, mask) to a feature map to pool.

The crops hold CT windowed −200…300 HU and scaled to −1…1 (segment/crops.py). Each published encoder gets the
intensity scaling its publisher trained with, at an input size where its feature map is 4×4×4 voxels.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.networks.nets import AutoEncoder, ResNet
from monai.transforms import ScaleIntensityRange

from tipsprog.embed.published import LoadReport, ctfm_segresencoder, medicalnet_resnet, swinunetr_ssl
from tipsprog.embed.ssl import SSL_CHANNELS, load_ssl_weights
from tipsprog.errors import InputError
from tipsprog.registry import ENCODERS
from tipsprog.segment.crops import HU_CENTER, HU_HALF_WIDTH


def crop_to_hu(ct_channel: torch.Tensor) -> torch.Tensor:
    """Undo the crops' window scaling (values outside −200…300 HU stay clipped)."""
    return ct_channel * HU_HALF_WIDTH + HU_CENTER


def _zscore(image: torch.Tensor) -> torch.Tensor:
    """Per-volume zero mean, unit variance (MedicalNet's normalisation)."""
    dims = tuple(range(1, image.ndim))
    return (image - image.mean(dim=dims, keepdim=True)) / image.std(dim=dims, keepdim=True).clamp_min(1e-6)


def _ssl_features(network: torch.nn.Module, crops: torch.Tensor) -> torch.Tensor:
    """The autoencoder's bottleneck over CT and mask (4³ for 32³ crops)."""
    return cast(AutoEncoder, network).encode(crops)


def _medicalnet_features(network: torch.nn.Module, crops: torch.Tensor) -> torch.Tensor:
    """MedicalNet's layer-4 map of the z-scored CT (4³ for 32³ crops, thanks to its dilated layers)."""
    resnet = cast(ResNet, network)
    stem = resnet.act(resnet.bn1(resnet.conv1(_zscore(crops[:, :1]))))
    return resnet.layer4(resnet.layer3(resnet.layer2(resnet.layer1(resnet.maxpool(stem)))))


def _upsampled(crops: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """The CT channel rescaled from HU range low…high to 0…1, at twice the crop size."""
    scale = ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)
    scaled = cast(MetaTensor, scale(crop_to_hu(crops[:, :1]))).as_tensor()  # a tensor in gives a MetaTensor out
    return F.interpolate(scaled, scale_factor=2, mode="trilinear", align_corners=False)


def _swinunetr_features(network: torch.nn.Module, crops: torch.Tensor) -> torch.Tensor:
    """Swin stage 4 (1/16 resolution) of CT scaled as in MONAI's pre-training (−175…250 HU)."""
    return network(_upsampled(crops, -175.0, 250.0), normalize=True)[3]


def _ctfm_features(network: torch.nn.Module, crops: torch.Tensor) -> torch.Tensor:
    """CT-FM's deepest encoder level of CT scaled as in its pre-training (−1024…2048 HU)."""
    return network(_upsampled(crops, -1024.0, 2048.0))[-1]


FEATURE_MAPS: dict[str, Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]] = {
    "ssl": _ssl_features,
    "medicalnet": _medicalnet_features,
    "swinunetr": _swinunetr_features,
    "ctfm": _ctfm_features,
}


class RoiEncoder(torch.nn.Module):
    """A backbone plus the input preparation its weights expect; forward gives the feature map to pool."""

    def __init__(self, name: str, backbone: torch.nn.Module, report: LoadReport | None = None) -> None:
        super().__init__()
        self.name, self.backbone = name, backbone
        self.report = report or LoadReport(name)
        self._features = FEATURE_MAPS[name.split("-")[0]]

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """Feature map [B, F, d, h, w] of crops [B, 2, D, H, W]."""
        return self._features(self.backbone, crops)


def ssl_encoder(name: str, weights: Path) -> RoiEncoder:
    """tipsprog's self-supervised autoencoder from its own weights file."""
    return RoiEncoder(name, load_ssl_weights(weights), LoadReport(f"MONAI AutoEncoder, channels {list(SSL_CHANNELS)}"))


def medicalnet_encoder(name: str, weights: Path) -> RoiEncoder:
    """MedicalNet's ResNet of the depth in its name (medicalnet-resnet10|18|50) from Tencent's file."""
    return RoiEncoder(name, *medicalnet_resnet(weights, int(name.removeprefix("medicalnet-resnet"))))


def swinunetr_encoder(name: str, weights: Path) -> RoiEncoder:
    """MONAI's self-supervised SwinUNETR backbone from model_swinvit.pt."""
    return RoiEncoder(name, *swinunetr_ssl(weights))


def ctfm_encoder(name: str, weights: Path) -> RoiEncoder:
    """CT-FM's SegResEncoder from its safetensors file."""
    return RoiEncoder(name, *ctfm_segresencoder(weights))


def load_encoder(name: str, weights: Path | None) -> RoiEncoder:
    """An encoder by name (the ENCODERS registry): ssl from tipsprog's own weights file, the others from their
    publisher's file."""
    ENCODERS.check(name, "--encoder")
    if weights is None:
        raise InputError(f"--encoder {name}: needs --weights PATH (a local file; nothing is downloaded)")
    return ENCODERS.get(name)(name, weights).eval()
