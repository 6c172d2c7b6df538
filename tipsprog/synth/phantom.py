"""Synthetic abdominal CT phantoms whose anatomy follows patient-level latent variables."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

GRID = {"small": (32, 64, 64), "full": (96, 192, 192)}
FIELD_OF_VIEW_MM = (160.0, 384.0, 384.0)
HU = {"air": -1000.0, "fat": -100.0, "visceral": -85.0, "muscle": 45.0, "bone": 450.0, "cortex": 900.0,
      "kidney": 170.0, "aorta": 190.0, "liver": 110.0, "spleen": 125.0, "portal_vein": 175.0,
      "ascites": 8.0, "stomach_wall": 40.0, "gas": -900.0}


@dataclass(frozen=True)
class Anatomy:
    """Per-patient anatomical parameters derived from the latents."""

    liver_scale: float
    nodularity: float
    texture_hu: float
    liver_hu_shift: float
    spleen_scale: float
    portal_radius_mm: float
    ascites_mm: float
    muscle_mm: float
    fat_mm: float
    habitus: float


@dataclass(frozen=True)
class Scanner:
    """Center-specific acquisition effects."""

    spacing_scale: float
    hu_offset: float
    noise_sd: float
    blur_mm: float


def _smooth_field(shape: tuple[int, ...], spacing: np.ndarray, scale_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance smooth random field with a correlation length in mm."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=scale_mm / spacing)
    return field / (field.std() + 1e-6)


def _ellipsoid(coords: tuple[np.ndarray, ...], centre: tuple[float, float, float], radii: tuple[float, float, float]) -> np.ndarray:
    """Normalised ellipsoid distance (<1 inside) on (z, y, x) coordinates in mm."""
    return np.sqrt(sum(((c - m) / r) ** 2 for c, m, r in zip(coords, centre, radii)))


def _tube(coords: tuple[np.ndarray, ...], start: np.ndarray, end: np.ndarray, radius: float) -> np.ndarray:
    """Mask of a straight cylinder with round caps between two (z, y, x) points."""
    axis = end - start
    rel = [c - s for c, s in zip(coords, start)]
    t = np.clip(sum(r * a for r, a in zip(rel, axis)) / float(axis @ axis), 0.0, 1.0)
    dist2 = sum((r - t * a) ** 2 for r, a in zip(rel, axis))
    return dist2 < radius**2


def render(anatomy: Anatomy, scanner: Scanner, size: str, rng: np.random.Generator) -> tuple[sitk.Image, sitk.Image]:
    """Render one CT (int16 HU) and its label image (1 liver, 2 spleen, 3 portal vein)."""
    shape = GRID[size]
    spacing = np.array(FIELD_OF_VIEW_MM) / np.array(shape) * scanner.spacing_scale
    coords = tuple(
        ((np.arange(n) - (n - 1) / 2.0) * s).reshape([-1 if i == axis else 1 for i in range(3)]).astype(np.float32)
        for axis, (n, s) in enumerate(zip(shape, spacing))
    )
    z, y, x = coords
    ct = np.full(shape, HU["air"], dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)

    body_ax, body_ay = 165.0 * anatomy.habitus, 120.0 * anatomy.habitus
    body_q = np.sqrt((x / body_ax) ** 2 + (y / body_ay) ** 2) + 0 * z
    ct[body_q < 1.0] = HU["fat"]
    muscle_outer = 1.0 - anatomy.fat_mm / body_ay
    cavity = body_q < muscle_outer - anatomy.muscle_mm / body_ay
    ct[(body_q < muscle_outer) & ~cavity] = HU["muscle"]
    ct[cavity] = HU["visceral"]
    paraspinal = sum(
        (_ellipsoid(coords, (0.0, 80.0, side * 38.0), (1e6, 14.0 + anatomy.muscle_mm, 16.0 + anatomy.muscle_mm)) < 1.0).astype(int)
        for side in (-1.0, 1.0)
    ) > 0
    ct[paraspinal] = HU["muscle"]

    vertebra = _ellipsoid(coords, (0.0, 62.0, 0.0), (1e6, 20.0, 20.0))
    ct[vertebra < 1.0] = HU["cortex"]
    ct[vertebra < 0.8] = HU["bone"]
    ct[_ellipsoid(coords, (0.0, 44.0, 12.0), (1e6, 10.0, 10.0)) < 1.0] = HU["aorta"]
    for side in (-1.0, 1.0):
        ct[_ellipsoid(coords, (-45.0, 52.0, side * 68.0), (50.0, 24.0, 28.0)) < 1.0] = HU["kidney"]

    stomach = _ellipsoid(coords, (30.0, -25.0, 48.0), (40.0, 28.0, 32.0))
    ct[stomach < 1.0] = HU["stomach_wall"]
    ct[(stomach < 0.8) & (y < -30.0)] = HU["gas"]

    liver_field = _smooth_field(shape, spacing, 14.0, rng)
    liver_q = np.minimum(
        _ellipsoid(coords, (20.0, 0.0, -60.0), tuple(r * anatomy.liver_scale for r in (70.0, 78.0, 80.0))),
        _ellipsoid(coords, (35.0, -35.0, 5.0), tuple(r * anatomy.liver_scale for r in (35.0, 30.0, 50.0))),
    ) - anatomy.nodularity * liver_field
    liver = (liver_q < 1.0) & cavity
    if anatomy.ascites_mm > 0:
        ascites = (liver_q < 1.0 + anatomy.ascites_mm / 60.0) & cavity & ~liver & (ct < HU["muscle"]) & (ct > HU["gas"])
        ct[ascites] = HU["ascites"]
    texture = anatomy.texture_hu * _smooth_field(shape, spacing, 4.0, rng)
    ct[liver] = HU["liver"] + anatomy.liver_hu_shift + texture[liver]
    labels[liver] = 1

    spleen_radii = tuple(r * anatomy.spleen_scale for r in (55.0, 36.0, 32.0))
    spleen = (_ellipsoid(coords, (25.0, 42.0, 78.0), spleen_radii) < 1.0) & cavity & ~liver
    ct[spleen] = HU["spleen"]
    labels[spleen] = 2

    confluence = np.array([-5.0, 20.0, 0.0])
    hilum = np.array([20.0, 8.0, -40.0])
    splenic_hilum = np.array([20.0, 38.0, 78.0 - 22.0 * anatomy.spleen_scale])
    portal = (_tube(coords, confluence, hilum, anatomy.portal_radius_mm)
              | _tube(coords, confluence, splenic_hilum, 0.7 * anatomy.portal_radius_mm)) & cavity
    ct[portal] = HU["portal_vein"]
    labels[portal] = 3
    labels[spleen & ~portal] = 2

    blurred = ndimage.gaussian_filter(ct, sigma=scanner.blur_mm / spacing)
    noisy = blurred + scanner.hu_offset + scanner.noise_sd * rng.standard_normal(shape).astype(np.float32)
    image = sitk.GetImageFromArray(np.clip(np.rint(noisy), -1024, 3071).astype(np.int16))
    label_image = sitk.GetImageFromArray(labels)
    for volume in (image, label_image):
        volume.SetSpacing(tuple(float(s) for s in spacing[::-1]))
        volume.SetOrigin(tuple(float(-(n - 1) / 2.0 * s) for n, s in zip(shape[::-1], spacing[::-1])))
    return image, label_image
