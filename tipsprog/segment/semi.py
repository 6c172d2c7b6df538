"""Semi-supervised backend: a MONAI 3D UNet trained with a mean teacher on labeled plus unlabeled scans."""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from monai import transforms
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.networks.nets import UNet

from tipsprog.checkpoints import load_checkpoint, save_checkpoint
from tipsprog.errors import InputError
from tipsprog.images import antialiased_resample
from tipsprog.store import ROI_LABELS

MODEL_FORMAT = "tipsprog-semi-2"
CLASSES = 1 + len(ROI_LABELS)


@dataclass(frozen=True)
class SemiSettings:
    """Network, sampling and mean-teacher settings (stored with the model)."""

    spacing_mm: float = 4.0
    patch: tuple[int, int, int] = (32, 48, 48)
    channels: tuple[int, ...] = (16, 32, 64, 128)
    iterations: int = 1600
    labeled_batch: int = 2
    unlabeled_batch: int = 2
    learning_rate: float = 2e-3
    ema_decay: float = 0.99
    consistency_weight: float = 1.0
    rampup_fraction: float = 0.4
    noise_sd: float = 0.1
    intensity_scale: float = 0.15
    intensity_shift: float = 0.1
    confidence: float = 0.9
    class_ratios: tuple[float, ...] = (1.0, 1.0, 1.0, 2.0)
    seed: int = 0
    tissue_shift_hu: float = 0.0  # randomised tissue intensities in labeled patches: ± HU per ROI (0: off)
    flip_axes: tuple[int, ...] = (2, 1)  # patch axes (z, y, x = 0, 1, 2) mirrored at random; () keeps left and right


def build_network(settings: SemiSettings) -> UNet:
    """The MONAI 3D UNet for background + liver, spleen, portal vein."""
    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=CLASSES,
        channels=settings.channels,
        strides=(2,) * (len(settings.channels) - 1),
        num_res_units=1,
        norm="instance",
    )


def to_network_grid(ct: sitk.Image, settings: SemiSettings) -> sitk.Image:
    """Spacing normalisation in physical space (the grid the network sees)."""
    return antialiased_resample(ct, (settings.spacing_mm,) * 3, -1024.0)


WINDOW_HU = (-200.0, 300.0)
WINDOW = transforms.ScaleIntensityRange(a_min=WINDOW_HU[0], a_max=WINDOW_HU[1], b_min=0.0, b_max=1.0, clip=True)


def prepare(ct: sitk.Image, labels: sitk.Image | None, settings: SemiSettings) -> dict[str, np.ndarray]:
    """Channel-first windowed image (and labels) on the network grid, padded to at least one patch."""
    grid = to_network_grid(ct, settings)
    sample = {"image": np.asarray(WINDOW(sitk.GetArrayFromImage(grid)[None].astype(np.float32)))}
    if labels is not None:
        label_grid = sitk.Resample(labels, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        sample["label"] = sitk.GetArrayFromImage(label_grid)[None].astype(np.int64)
    pad = transforms.SpatialPadd(list(sample), spatial_size=settings.patch, mode="constant")
    padded = pad(sample)  # type: ignore[arg-type]  # MONAI's stub says tensors; its dictionary transforms take arrays too
    sample = {cast(str, k): np.asarray(v) for k, v in padded.items()}
    if labels is not None:  # an ROI without a voxel in the reference is unlabeled there, not background (see _marginal)
        sample["present"] = np.bincount(sample["label"].ravel(), minlength=CLASSES)[:CLASSES] > 0
        sample["present"][0] = True
    return sample


class RandTissueIntensityd(transforms.RandomizableTransform, transforms.MapTransform):
    """Randomised tissue intensities: each ROI shifted by its own random HU offset, then a random gamma."""

    def __init__(self, shift_hu: float, gamma: tuple[float, float] = (0.7, 1.4), prob: float = 1.0) -> None:
        transforms.MapTransform.__init__(self, ["image"])
        transforms.RandomizableTransform.__init__(self, prob)
        self.shift = shift_hu / (WINDOW_HU[1] - WINDOW_HU[0])
        self.gamma = gamma
        self.soften = transforms.GaussianSmooth(sigma=1.0)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        """Shift each labelled ROI by its own offset (edges softened over a voxel, like partial volume), clip, gamma."""
        sample = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return sample
        offsets = torch.as_tensor(self.R.uniform(-self.shift, self.shift, CLASSES), dtype=torch.float32)
        offsets[0] = 0.0
        label = torch.as_tensor(sample["label"]).long().clamp(0, CLASSES - 1)
        image = torch.as_tensor(sample["image"]) + self.soften(offsets[label])
        gamma = float(np.exp(self.R.uniform(*np.log(self.gamma))))
        sample["image"] = image.clamp(0.0, 1.0) ** gamma
        return sample


def _augment(keys: list[str], settings: SemiSettings, labeled: bool) -> transforms.Compose:
    """Random patch, flips and a small affine, plus intensity scale/shift for labeled patches (MONAI transforms)."""
    # labeled patches are centred per class, background ones inside the body (> -200 HU); unlabeled ones in its box
    crop = (
        transforms.RandCropByLabelClassesd(
            keys,
            "label",
            settings.patch,
            ratios=list(settings.class_ratios),
            num_classes=CLASSES,
            num_samples=1,
            image_key="image",
            warn=False,
        )
        if labeled
        else transforms.Compose(
            [
                transforms.CropForegroundd(keys, "image", start_coord_key=None, end_coord_key=None),
                transforms.SpatialPadd(keys, settings.patch),
                transforms.RandSpatialCropd(keys, settings.patch, random_size=False),
            ]
        )
    )
    tissue = [RandTissueIntensityd(settings.tissue_shift_hu)] if labeled and settings.tissue_shift_hu > 0 else []
    modes = ["bilinear", "nearest"][: len(keys)]
    spatial: list[transforms.Transform] = [
        crop,
        *tissue,
        *(transforms.RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in settings.flip_axes),
        transforms.RandAffined(
            keys, prob=0.3, rotate_range=(0.1, 0.1, 0.1), scale_range=(0.1, 0.1, 0.1), mode=modes, padding_mode="border"
        ),
    ]
    intensity: list[transforms.Transform] = [
        transforms.RandScaleIntensityd("image", factors=settings.intensity_scale, prob=0.5),
        transforms.RandShiftIntensityd("image", offsets=settings.intensity_shift, prob=0.5),
    ]
    return transforms.Compose(spatial + intensity if labeled else spatial)


def _perturb(images: torch.Tensor, settings: SemiSettings) -> torch.Tensor:
    """The student's strong view of an unlabeled batch: per-scan contrast, brightness and noise, like a new center."""
    shape = (images.shape[0],) + (1,) * (images.ndim - 1)
    scale = 1.0 + settings.intensity_scale * (2.0 * torch.rand(shape, device=images.device) - 1.0)
    shift = settings.intensity_shift * (2.0 * torch.rand(shape, device=images.device) - 1.0)
    return images * scale + shift + settings.noise_sd * torch.randn_like(images)


def _flip(images: torch.Tensor, axes: list[int]) -> torch.Tensor:
    """Flip spatial axes (its own inverse), so the student also sees the unlabeled patch mirrored."""
    return torch.flip(images, axes) if axes else images


def _marginal(logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Log-probabilities in which the classes a scan's reference lacks count as background (marginal loss)."""
    if bool(present.all()):
        return logits
    absent = ~present.to(logits.device)[:, :, None, None, None]
    log_p = torch.log_softmax(logits.float(), dim=1)
    merged = absent.clone()
    merged[:, 0] = True
    background = torch.logsumexp(log_p.masked_fill(~merged, float("-inf")), dim=1, keepdim=True)
    return torch.cat([background, log_p[:, 1:].masked_fill(absent[:, 1:], -1e4)], dim=1)


def _consistency(student_logits: torch.Tensor, teacher_logits: torch.Tensor, settings: SemiSettings) -> torch.Tensor:
    """Unlabeled loss: cross-entropy to the teacher's labels where it is confident (FixMatch-style)."""
    confidence, pseudo_label = torch.softmax(teacher_logits.float(), dim=1).max(dim=1)
    per_voxel = F.cross_entropy(student_logits.float(), pseudo_label, reduction="none")
    return (per_voxel * (confidence >= settings.confidence)).mean()


def _patches(
    samples: list[dict], pipeline: transforms.Compose, count: int, rng: np.random.Generator, keys: tuple[str, ...]
) -> list[torch.Tensor]:
    """`count` augmented patches of randomly chosen samples, stacked per key."""
    outputs = []
    for index in rng.integers(0, len(samples), count):
        out = pipeline(samples[index])
        outputs.append(out[0] if isinstance(out, list) else out)
    return [torch.stack([torch.as_tensor(np.asarray(o[key])) for o in outputs]) for key in keys]


def _rampup(step: int, settings: SemiSettings) -> float:
    """Sigmoid ramp-up of the consistency weight (Laine & Aila)."""
    length = max(1.0, settings.rampup_fraction * settings.iterations)
    phase = 1.0 - min(step, length) / length
    return float(np.exp(-5.0 * phase * phase))


@torch.no_grad()
def _update_teacher(teacher: torch.nn.Module, student: torch.nn.Module, decay: float) -> None:
    """Exponential moving average of the student's weights."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)


def fit(
    labeled: list[dict],
    unlabeled: list[dict],
    settings: SemiSettings,
    device: torch.device,
    validation: list[dict] | None = None,
    progress: Callable[[int, float, float], None] | None = None,
) -> torch.nn.Module:
    """Train a student and its mean teacher (EMA of the student's weights); return the teacher.

    With no unlabeled scans (or consistency_weight 0) this is plain supervised training with the same
    network, augmentation and weight averaging: the baseline that the unlabeled loss must beat.
    """
    if not labeled:
        raise InputError("--fit: no labeled scan to train on")
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    labeled_aug = _augment(["image", "label"], settings, labeled=True)
    labeled_aug.set_random_state(settings.seed)
    unlabeled_aug = _augment(["image"], settings, labeled=False)
    unlabeled_aug.set_random_state(settings.seed + 1)
    student = build_network(settings).to(device)
    teacher = copy.deepcopy(student).eval()
    optimiser = torch.optim.AdamW(student.parameters(), lr=settings.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, settings.iterations)
    supervised_loss = DiceCELoss(to_onehot_y=True, softmax=True)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    use_unlabeled = bool(unlabeled) and settings.consistency_weight > 0
    pool_samples = unlabeled + labeled
    for step in range(1, settings.iterations + 1):
        student.train()
        images, targets, present = _patches(labeled, labeled_aug, settings.labeled_batch, rng, ("image", "label", "present"))
        images, targets = images.to(device), targets.to(device)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            loss = supervised_loss(_marginal(student(images), present), targets)
            if use_unlabeled:
                (pool,) = _patches(pool_samples, unlabeled_aug, settings.unlabeled_batch, rng, ("image",))
                pool = pool.to(device)
                with torch.no_grad():
                    teacher_logits = teacher(pool)
                flips = [axis for axis in (2, 3, 4) if rng.random() < 0.5]
                student_logits = _flip(student(_flip(_perturb(pool, settings), flips)), flips)
                consistency = _consistency(student_logits, teacher_logits, settings)
                loss = loss + settings.consistency_weight * _rampup(step, settings) * consistency
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()
        schedule.step()
        _update_teacher(teacher, student, settings.ema_decay if step > 1 else 0.0)
        if progress and (step % 25 == 0 or step == settings.iterations):
            dice = validation_dice(teacher, validation, settings, device) if validation else float("nan")
            progress(step, loss.item(), dice)
    return teacher


@torch.no_grad()
def predict_grid(model: torch.nn.Module, sample: dict, settings: SemiSettings, device: torch.device) -> np.ndarray:
    """Sliding-window argmax labels of one prepared sample (network grid, padded)."""
    model.eval()
    image = torch.as_tensor(sample["image"])[None].to(device)
    with torch.autocast(device.type, enabled=device.type == "cuda"):
        logits = cast(torch.Tensor, sliding_window_inference(image, settings.patch, 4, model, overlap=0.25, mode="gaussian"))
    return logits.argmax(dim=1)[0].cpu().numpy().astype(np.uint8)


def validation_dice(model: torch.nn.Module, samples: list[dict], settings: SemiSettings, device: torch.device) -> float:
    """Mean foreground Dice over held-out labeled samples (for the progress bar only)."""
    scores = []
    for sample in samples:
        predicted, truth = predict_grid(model, sample, settings, device), sample["label"][0]
        for label in ROI_LABELS.values():
            total = (predicted == label).sum() + (truth == label).sum()
            if total:
                scores.append(2.0 * ((predicted == label) & (truth == label)).sum() / total)
    return float(np.mean(scores)) if scores else float("nan")


def segment_semi(ct: sitk.Image, model: torch.nn.Module, settings: SemiSettings, device: torch.device) -> sitk.Image:
    """Labels of one canonical CT on its own grid."""
    grid = to_network_grid(ct, settings)
    sample = prepare(ct, None, settings)
    predicted = predict_grid(model, sample, settings, device)
    size = sitk.GetArrayViewFromImage(grid).shape
    labels = sitk.GetImageFromArray(_unpad(predicted, size))
    labels.CopyInformation(grid)
    return sitk.Resample(labels, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def _unpad(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Undo SpatialPad's symmetric padding."""
    starts = [(padded - original) // 2 for padded, original in zip(array.shape, shape)]
    return array[tuple(slice(s, s + n) for s, n in zip(starts, shape))]


def save_model(
    model: torch.nn.Module,
    settings: SemiSettings,
    path: Path,
    fitted_on: list[str] | None = None,
    labeled: list[str] | None = None,
) -> None:
    """Save weights and settings atomically, with the patients whose scans trained it (and which of them were labeled)."""
    payload = {"format": MODEL_FORMAT, "settings": asdict(settings), "state_dict": model.state_dict()}
    if fitted_on is not None:
        payload.update(fitted_on=list(fitted_on), labeled=list(labeled or []))
    save_checkpoint(payload, path)


def model_fitted_on(path: Path) -> tuple[list[str] | None, list[str] | None]:
    """The patients whose scans trained a saved model and the labeled ones among them (None, None: not recorded)."""
    payload = load_checkpoint(
        path, MODEL_FORMAT, "semi-supervised segmentation model", torch.device("cpu"), " (train one with --fit LABELED.csv)"
    )
    if not isinstance(payload.get("fitted_on"), list):
        return None, None
    return [str(pid) for pid in payload["fitted_on"]], [str(pid) for pid in payload.get("labeled", [])]


def load_model(path: Path, device: torch.device) -> tuple[torch.nn.Module, SemiSettings]:
    """Load a model saved by save_model (weights_only: no code from the file runs)."""
    payload = load_checkpoint(
        path, MODEL_FORMAT, "semi-supervised segmentation model", device, " (train one with --fit LABELED.csv)"
    )
    stored: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in payload["settings"].items()}
    settings = SemiSettings(**stored)
    model = build_network(settings).to(device)
    model.load_state_dict(payload["state_dict"])
    return model.eval(), settings
