"""pyradiomics parameters: the presets, parameter files, their hash, and the crop margin their filters need."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from tipsprog.errors import InputError

ALL_CLASSES = {name: None for name in ("shape", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")}
BASE_SETTING = {"binWidth": 25, "minimumROIDimensions": 2, "minimumROISize": 8}
PRESETS = {
    "fast": {"setting": dict(BASE_SETTING), "imageType": {"Original": {}}, "featureClass": dict(ALL_CLASSES)},
    "standard": {
        "setting": dict(BASE_SETTING),
        "imageType": {"Original": {}, "LoG": {"sigma": [1.0, 2.0, 3.0]}, "Wavelet": {}},
        "featureClass": dict(ALL_CLASSES),
    },
    "ibsi": {
        "setting": {
            **BASE_SETTING,
            "resampledPixelSpacing": [1.0, 1.0, 1.0],
            "interpolator": "sitkLinear",
            "resegmentRange": [-150, 250],
        },
        "imageType": {"Original": {}},
        "featureClass": dict(ALL_CLASSES),
    },
}
PARAM_KEYS = {"setting", "imageType", "featureClass", "voxelSetting"}
LOG_SUPPORT_SIGMAS = 16.0
CROP_EXACT_TYPES = {"Original", "LoG", "Wavelet", "Gradient"}


def load_params(params: str) -> dict:
    """A preset name or a pyradiomics YAML parameter file, validated by pyradiomics itself."""
    if params in PRESETS:
        return PRESETS[params]
    path = Path(params)
    if not path.is_file():
        raise InputError(f"--params {params}: not a preset ({', '.join(PRESETS)}) and no such file")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise InputError(f"{path}: invalid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(loaded, dict) or not set(loaded) <= PARAM_KEYS:
        raise InputError(f"{path}: not a pyradiomics parameter file (keys {', '.join(sorted(PARAM_KEYS))})")
    try:
        make_extractor(loaded)
    except Exception as err:  # pyradiomics raises pykwalify and plain exceptions alike
        raise InputError(f"{path}: pyradiomics rejects these parameters ({str(err).splitlines()[0]})") from None
    return loaded


def make_extractor(params: dict):
    """A quiet pyradiomics RadiomicsFeatureExtractor for the parameter dictionary."""
    import radiomics
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    radiomics.setVerbosity(logging.ERROR)
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    return RadiomicsFeatureExtractor(params)


def settings_hash(params: dict) -> str:
    """SHA-256 of the parameters and the pyradiomics version: same hash, same features."""
    import radiomics

    text = yaml.safe_dump(params, sort_keys=True) + f"pyradiomics {radiomics.__version__}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CropPlan:
    """How much context to keep around an ROI: voxels per axis (x, y, z), and whether a filter wraps around."""

    margin: np.ndarray
    circular: bool


def crop_plan(params: dict, spacing_mm: tuple[float, ...]) -> CropPlan | None:
    """The context the enabled filters need around the ROI box for exact features; None: do not crop.

    Original needs none; LoG (a recursive IIR filter) needs LOG_SUPPORT_SIGMAS × σ, after which its response
    to the crop border is far below 1e-6; the stationary wavelet needs its filter length × 2^levels and, being
    circular, the whole axis wherever the ROI comes that close to the image border; Gradient one voxel.
    Resampled extraction is left to pyradiomics, which crops itself on a grid aligned to the image origin (a
    pre-crop would shift that grid); `normalize` uses whole-image statistics; Square, SquareRoot, Logarithm and
    Exponential scale by the whole image's extreme value and LBP samples a sphere: those are never cropped.
    """
    settings = params.get("setting") or {}
    if settings.get("resampledPixelSpacing") or settings.get("normalize"):
        return None
    spacing = np.asarray(spacing_mm, dtype=float)
    margin, circular = np.zeros(len(spacing)), False
    for image_type, custom in (params.get("imageType") or {"Original": {}}).items():
        if image_type not in CROP_EXACT_TYPES:
            return None
        merged = {**settings, **(custom or {})}
        if image_type == "LoG":
            margin = np.maximum(margin, np.ceil(LOG_SUPPORT_SIGMAS * max(merged.get("sigma") or [0.0]) / spacing))
        elif image_type == "Wavelet":
            import pywt

            levels = int(merged.get("start_level", 0)) + int(merged.get("level", 1))
            margin = np.maximum(margin, pywt.Wavelet(merged.get("wavelet", "coif1")).dec_len * 2**levels)
            circular = True
        elif image_type == "Gradient":
            margin = np.maximum(margin, 2)
    return CropPlan(margin.astype(int) + 1, circular)
