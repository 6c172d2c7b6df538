"""Synthetic abdominal CT phantoms whose anatomy follows patient-level latent variables.

Coordinates are (z, y, x) in mm, LPS, origin at the centre of the field of view: z up (superior), y from anterior to
posterior, x from the patient's right to left (the liver lies at x < 0). Every structure is painted as a tissue class
into one array, later structures over earlier ones; the HU image, the label image (1 liver, 2 spleen, 3 portal vein)
and the imaging biomarkers of truth.csv all come from that array. docs/synth.md lists the anatomy and its numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import SimpleITK as sitk
from numpy.typing import ArrayLike
from scipy import ndimage

GRID = {"small": (32, 64, 64), "full": (96, 192, 192)}
FIELD_OF_VIEW_MM = (160.0, 384.0, 384.0)
TISSUES = (
    "air",
    "sat",
    "muscle",
    "vat",
    "cortex",
    "marrow",
    "disc",
    "canal",
    "aorta",
    "kidney",
    "cyst",
    "bowel",
    "gas",
    "ascites",
    "colon",
    "stomach_wall",
    "gallbladder",
    "liver",
    "spleen",
    "portal_vein",
)
CODE = {name: code for code, name in enumerate(TISSUES)}
HU = {
    "air": -1000.0,
    "sat": -100.0,
    "vat": -85.0,
    "cortex": 900.0,
    "marrow": 450.0,
    "disc": 90.0,
    "canal": 15.0,
    "aorta": 190.0,
    "kidney": 170.0,
    "cyst": 5.0,
    "bowel": 30.0,
    "gas": -900.0,
    "ascites": 8.0,
    "colon": 30.0,
    "stomach_wall": 40.0,
    "gallbladder": 10.0,
    "liver": 110.0,
    "spleen": 125.0,
    "portal_vein": 175.0,
}
# (muscle has each patient's Anatomy.muscle_hu)
LABELS = {"liver": 1, "spleen": 2, "portal_vein": 3}

CAVITY_YX_MM = (90.0, 120.0)  # semi-axes of the abdominal wall muscle's inner surface
SAT_LATERAL_SHARE = 0.75  # subcutaneous fat over the flanks, as a share of its anterior/posterior thickness
BACK_MM = 8.0  # the back's muscle (erector spinae) reaches this much further behind the cavity than the wall ring

L1_CENTRE_MM = 2.0
VERTEBRA_PITCH_MM = 32.0
LEVELS = {"T11": 2, "T12": 1, "L1": 0, "L2": -1, "L3": -2}  # vertebral centre = L1_CENTRE_MM + pitch * index
BODY_HEIGHT_MM = 25.0  # the remaining 7 mm of each pitch is the intervertebral disc
BODY_YX_MM = (62.0, 0.0)
BODY_RADIUS_MM = 20.0
MARROW_SHARE = 0.8  # marrow inside 80 % of the body's radius: a 4 mm cortex rim
ENDPLATE_MM = 1.5
CANAL_YX_MM = (90.0, 0.0)  # the spinal canal (cerebrospinal fluid and cord) right behind the vertebral body
CANAL_RADII_MM = (8.0, 11.0)  # (y, x): an oval 16 x 22 mm, 2.8 cm²
ARCH_MM = 8.0  # pedicles and laminae: a bony ring this thick around the canal
SPINOUS_Y_MM = (100.0, 108.0)
SPINOUS_HALF_WIDTH_MM = 4.0
ARCH_HALF_HEIGHT_MM = 10.0  # neural arch and spinous process, about each body's centre

RIB_RADIUS_MM = 4.0
RIB_CLEARANCE_MM = 4.0  # intercostal muscle between a rib and the cavity (diaphragm, transversalis)
RIB_HEAD_YX_MM = (74.0, 20.0)
RIB_ANGLE_YX_MM = (85.0, 75.0)  # the rib runs horizontally back and out to its angle, behind the spinal canal's front
RIB_BLEND_MM = 40.0  # past its angle the rib sweeps onto the wall over this length
RIB_TIP_ANGLE = {"T11": 2.06, "T12": 1.41}  # radians around the wall from the posterior midline
RIB_SLOPE = 0.6  # descent per mm along the shaft

PARASPINAL_YX_MM = (96.0, 30.0)
PARASPINAL_RADII_MM = (12.0, 18.0)  # plus 0.8 * muscle_mm
PSOAS_Y_MM = 54.0
PSOAS_MEDIAL_X_MM = 16.0
PSOAS_TOP_MM = 18.0  # the T12/L1 disc; the cross-section grows linearly with depth below it
PSOAS_L3_RADII = (0.85, 1.05)  # times (10 + 0.6 * muscle_mm)

AORTA_YX_MM = (33.0, 16.0)  # in front of the vertebral body, left of the midline
AORTA_RADIUS_MM = 12.0
KIDNEY_CENTRE_MM = (-45.0, 52.0, 68.0)
KIDNEY_RADII_MM = (50.0, 24.0, 28.0)
CYST_LATERAL_MM = 6.0
STOMACH_CENTRE_MM, STOMACH_RADII_MM = (30.0, -25.0, 48.0), (40.0, 28.0, 32.0)
COLONS = (((10.0, -88.0), 20.0, -38.0), ((25.0, 92.0), 17.0, -5.0))  # (y, x), radius, top z: ascending, descending
COLON_WALL_MM = 4.0
SMALL_BOWEL_TOP_MM = -12.0
SMALL_BOWEL_CENTRE_YX_MM, SMALL_BOWEL_RADII_YX_MM = (-20.0, 15.0), (46.0, 95.0)  # the loops' package (mesentery)
SMALL_BOWEL_SCALE_MM = 8.0
SMALL_BOWEL_GAS = 1.3  # gas where the loops' field exceeds this (about 10 % of the package)
ORGAN_MARGIN = 1.12  # small bowel keeps this normalised distance from the solid organs

RIGHT_LOBE_CENTRE_ZY_MM = (20.0, 0.0)
RIGHT_LOBE_MEDIAL_X_MM = -26.0
RIGHT_LOBE_RADII_MM = (82.0, 84.0, 56.0)
LEFT_LOBE_CENTRE_MM, LEFT_LOBE_RADII_MM = (35.0, -35.0, 5.0), (42.0, 36.0, 58.0)
CAUDATE_CENTRE_ZY_MM = (16.0, 17.0)
CAUDATE_RADII_ZY_MM = (32.0, 8.0)
CAUDATE_OVERLAP_MM = 10.0  # the caudate process reaches this far lateral of the portal vein into the right lobe
LIVER_RADIUS_MM = 75.0  # converts mm of surface displacement into normalised ellipsoid units
SPLEEN_CENTRE_MM, SPLEEN_RADII_MM = (25.0, 42.0, 78.0), (55.0, 36.0, 32.0)
SPLEEN_RADIUS_MM = 40.0
GALLBLADDER_CENTRE_MM = (-28.0, -38.0, -42.0)
GALLBLADDER_AXIS = (0.5, 0.85, -0.15)  # fundus (anterior, inferior) to neck (towards the porta hepatis)
GALLBLADDER_RADII_MM = (35.0, 15.0)

CONFLUENCE_MM = (-5.0, 8.0, 0.0)
BIFURCATION_MM = (20.0, 5.0, -30.0)
MESENTERIC_END_MM = (-90.0, 12.0, 4.0)  # the superior mesenteric vein runs down in the mesentery
PORTAL_TREE = {  # branch: (parent, offset from the parent (z, y, x) in a liver of scale 1, radius / trunk radius)
    "right": ("bifurcation", (4.0, 1.0, -25.0), 0.8),
    "right_anterior": ("right", (30.0, -20.0, -18.0), 0.6),
    "right_anterior_upper": ("right_anterior", (25.0, -10.0, -5.0), 0.45),
    "right_posterior": ("right", (-28.0, 16.0, -25.0), 0.6),
    "right_posterior_lower": ("right_posterior", (-25.0, 8.0, -8.0), 0.45),
    "left": ("bifurcation", (10.0, -25.0, 22.0), 0.65),
    "umbilical": ("left", (15.0, -22.0, 20.0), 0.5),
    "left_lateral": ("left", (10.0, -5.0, 35.0), 0.45),
}
SPLENIC_BEND_MM = (10.0, 10.0, 35.0)  # the splenic vein runs left in front of the aorta, then back to the hilum
SPLENIC_SHARE = 0.7
MESENTERIC_SHARE = 0.75

PERITONEUM_Y_MM = 26.0  # posterior parietal peritoneum in the midline (anterior to the kidneys, psoas, aorta)
GUTTER_DEPTH_MM = 40.0  # how much further back the paracolic gutters reach at the flanks
GUTTER_EXPONENT = 6.0
PROPERITONEAL_FAT = (3.0, 0.1)  # fat lining the wall muscle's inner surface (mm + share of fat_mm); fluid lies inside
ASCITES_WALL_WEIGHT = (0.5, 1.2)  # fluid layer along the wall, per mm of ascites_mm: anterior, posterior
ASCITES_POOL_SHARE = 0.5  # dependent pool on the posterior peritoneum, per mm of ascites_mm
ASCITES_POOL_MIN_X_MM = 45.0  # the pool lies lateral to the mesenteric root
REPLACEABLE = ("vat", "bowel", "gas")  # what free fluid displaces


@dataclass(frozen=True)
class Anatomy:
    """Per-patient anatomical parameters derived from the latents."""

    liver_scale: float
    right_lobe_scale: float
    caudate_ratio: float
    nodularity_mm: float
    texture_hu: float
    liver_hu_shift: float
    spleen_scale: float
    portal_radius_mm: float
    ascites_mm: float
    muscle_mm: float
    muscle_hu: float
    fat_mm: float
    bowel_fill: float
    cyst_mm: float
    cyst_side: float
    cyst_z_mm: float
    habitus: float


@dataclass(frozen=True)
class Scanner:
    """Center-specific acquisition effects."""

    spacing_scale: float
    hu_offset: float
    noise_sd: float
    blur_mm: float


class Phantom(NamedTuple):
    """A rendered patient: CT (int16 HU), labels, the noise-free tissue classes (codes of CODE) and its biomarkers."""

    image: sitk.Image
    labels: sitk.Image
    tissue: np.ndarray
    biomarkers: dict[str, float]


Coords = tuple[np.ndarray, np.ndarray, np.ndarray]


def _smooth_field(shape: tuple[int, ...], spacing: np.ndarray, scale_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance smooth random field with a correlation length in mm."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=scale_mm / spacing)
    return field / (field.std() + 1e-6)


def _ellipsoid(coords: tuple[np.ndarray, ...], centre: tuple[float, ...], radii: tuple[float | np.ndarray, ...]) -> np.ndarray:
    """Normalised ellipsoid (or ellipse) distance, < 1 inside, on broadcastable coordinates in mm."""
    return np.sqrt(sum(((c - m) / r) ** 2 for c, m, r in zip(coords, centre, radii)))


def _spheroid(coords: Coords, centre: tuple[float, ...], axis: np.ndarray, radii: tuple[float, float]) -> np.ndarray:
    """Normalised distance (< 1 inside) of a prolate spheroid with a unit long axis and (long, short) radii."""
    rel = [c - m for c, m in zip(coords, centre)]
    along = sum(r * a for r, a in zip(rel, axis))
    across2 = sum(r**2 for r in rel) - along**2
    return np.sqrt((along / radii[0]) ** 2 + across2 / radii[1] ** 2)


def _tube(coords: Coords, start: np.ndarray, end: np.ndarray, radius: float) -> np.ndarray:
    """Mask of a straight cylinder with round caps between two (z, y, x) points."""
    axis = end - start
    rel = [c - s for c, s in zip(coords, start)]
    t = np.clip(sum(r * a for r, a in zip(rel, axis)) / float(axis @ axis), 0.0, 1.0)
    dist2 = sum((r - t * a) ** 2 for r, a in zip(rel, axis))
    return dist2 < radius**2


def _axis(coords: Coords, axis: int) -> np.ndarray:
    """The 1-D voxel-centre positions (mm) along one axis."""
    return coords[axis].ravel()


def _box(coords: Coords, low: np.ndarray, high: np.ndarray) -> tuple[slice, slice, slice]:
    """Index slices of the voxels whose centres lie within [low, high] (mm, per axis)."""
    slices = []
    for axis in range(3):
        centres = _axis(coords, axis)
        step = float(centres[1] - centres[0])
        first = max(0, int(np.ceil((low[axis] - centres[0]) / step)))
        last = min(len(centres), int(np.floor((high[axis] - centres[0]) / step)) + 1)
        slices.append(slice(first, max(first, last)))
    return slices[0], slices[1], slices[2]


def _sub(coords: Coords, box: tuple[slice, slice, slice]) -> Coords:
    """The coordinates restricted to a box."""
    z, y, x = coords
    return z[box[0]], y[:, box[1]], x[:, :, box[2]]


def _paint_ellipsoid(
    tissue: np.ndarray,
    coords: Coords,
    centre: tuple[float, ...],
    radii: tuple[float, ...],
    code: int,
    where: np.ndarray | None = None,
) -> np.ndarray:
    """Paint an ellipsoid (optionally only where `where` holds) and return its full-size mask."""
    box = _box(coords, np.subtract(centre, radii), np.add(centre, radii))
    mask = np.zeros(tissue.shape, bool)
    mask[box] = _ellipsoid(_sub(coords, box), centre, radii) < 1.0
    if where is not None:
        mask &= where
    tissue[mask] = code
    return mask


def _paint_balls(tissue: np.ndarray, coords: Coords, points: np.ndarray, radius: float, code: int) -> None:
    """Paint the union of balls of `radius` around points (n, 3): a tube along a densely sampled curve."""
    for point in points:
        box = _box(coords, point - radius, point + radius)
        sub = _sub(coords, box)
        inside = sum((c - p) ** 2 for c, p in zip(sub, point)) < radius**2
        tissue[box][inside] = code


def _vertebral_offset(z: np.ndarray) -> np.ndarray:
    """Signed distance (mm) from each z to the nearest vertebral centre."""
    return (z - L1_CENTRE_MM + VERTEBRA_PITCH_MM / 2) % VERTEBRA_PITCH_MM - VERTEBRA_PITCH_MM / 2


def level_z_mm(level: str) -> float:
    """z (mm) of a vertebral centre (T11 ... L3)."""
    return L1_CENTRE_MM + VERTEBRA_PITCH_MM * LEVELS[level]


def _cavity_axes(anatomy: Anatomy) -> tuple[float, float]:
    """(y, x) semi-axes of the visceral cavity."""
    return CAVITY_YX_MM[0] * anatomy.habitus, CAVITY_YX_MM[1] * anatomy.habitus


def _outline(plane: tuple[np.ndarray, np.ndarray], front_y: float, back_y: float, half_x: float) -> np.ndarray:
    """Inside an outline (y, x) made of two half ellipses: semi-axis front_y in front (y < 0), back_y behind."""
    y, x = plane
    return (y / np.where(y < 0, front_y, back_y)) ** 2 + (x / half_x) ** 2 < 1.0


def _body_wall(tissue: np.ndarray, plane: tuple[np.ndarray, np.ndarray], anatomy: Anatomy) -> np.ndarray:
    """Subcutaneous fat, the abdominal wall muscle (a ring, thicker in the back) and the visceral cavity (filled
    with fat); the cavity (y, x)."""
    cy, cx = _cavity_axes(anatomy)
    m, f = anatomy.muscle_mm, anatomy.fat_mm
    tissue[:, _outline(plane, cy + m + f, cy + m + BACK_MM + f, cx + m + SAT_LATERAL_SHARE * f)] = CODE["sat"]
    tissue[:, _outline(plane, cy + m, cy + m + BACK_MM, cx + m)] = CODE["muscle"]
    cavity = _ellipsoid(plane, (0.0, 0.0), (cy, cx)) < 1.0
    tissue[:, cavity] = CODE["vat"]
    return cavity


def _back_muscles(tissue: np.ndarray, coords: Coords, anatomy: Anatomy) -> None:
    """Paraspinal muscles at every level and the psoas muscles, growing from the T12/L1 disc down to L3."""
    z, y, x = coords
    m = anatomy.muscle_mm
    radii = (PARASPINAL_RADII_MM[0] + 0.8 * m, PARASPINAL_RADII_MM[1] + 0.8 * m)
    for side in (-1.0, 1.0):
        paraspinal = _ellipsoid((y[0], x[0]), (PARASPINAL_YX_MM[0], side * PARASPINAL_YX_MM[1]), radii) < 1.0
        tissue[:, paraspinal] = CODE["muscle"]
    growth = np.sqrt(np.clip((PSOAS_TOP_MM - z) / (PSOAS_TOP_MM - level_z_mm("L3")), 0.0, None))
    ry, rx = (np.maximum(share * (10.0 + 0.6 * m) * growth, 1e-3) for share in PSOAS_L3_RADII)
    for side in (-1.0, 1.0):
        psoas = ((y - PSOAS_Y_MM) / ry) ** 2 + ((x - side * (PSOAS_MEDIAL_X_MM + rx)) / rx) ** 2 < 1.0
        tissue[psoas & (growth > 0)] = CODE["muscle"]


def _spine(tissue: np.ndarray, coords: Coords) -> None:
    """Vertebral bodies (cortex rim and endplates, marrow), intervertebral discs, the spinal canal and, per vertebra,
    the neural arch around it and the spinous process behind."""
    z, y, x = coords
    offset = np.abs(_vertebral_offset(z))
    body_slab = offset < BODY_HEIGHT_MM / 2
    q = _ellipsoid((y, x), BODY_YX_MM, (BODY_RADIUS_MM, BODY_RADIUS_MM))
    tissue[(q < 1.0) & ~body_slab] = CODE["disc"]
    tissue[(q < 1.0) & body_slab] = CODE["cortex"]
    tissue[(q < MARROW_SHARE) & (offset < BODY_HEIGHT_MM / 2 - ENDPLATE_MM)] = CODE["marrow"]
    arch = _ellipsoid((y[0], x[0]), CANAL_YX_MM, tuple(r + ARCH_MM for r in CANAL_RADII_MM)) < 1.0
    spinous = (np.abs(x[0]) < SPINOUS_HALF_WIDTH_MM) & (y[0] > SPINOUS_Y_MM[0]) & (y[0] < SPINOUS_Y_MM[1])
    tissue[(offset < ARCH_HALF_HEIGHT_MM) & (arch | spinous)[None]] = CODE["cortex"]
    tissue[:, _ellipsoid((y[0], x[0]), CANAL_YX_MM, CANAL_RADII_MM) < 1.0] = CODE["canal"]


def _samples(length_mm: float, step_mm: float) -> int:
    """How many points sample a segment of length_mm at most step_mm apart (ends included)."""
    return int(np.ceil(length_mm / step_mm)) + 1


def rib_centreline(level: str, side: float, anatomy: Anatomy, step_mm: float) -> np.ndarray:
    """Points (n, 3) at most step_mm apart along a rib: from its head beside the vertebral body horizontally back and
    out to its angle, then forward along the inside of the wall muscle (RIB_CLEARANCE_MM outside the cavity),
    descending RIB_SLOPE per mm, to its tip."""
    cy, cx = _cavity_axes(anatomy)
    semi_y, semi_x = cy + RIB_RADIUS_MM + RIB_CLEARANCE_MM, cx + RIB_RADIUS_MM + RIB_CLEARANCE_MM
    head = np.array([RIB_HEAD_YX_MM[0], side * RIB_HEAD_YX_MM[1]])
    corner = np.array([RIB_ANGLE_YX_MM[0], side * RIB_ANGLE_YX_MM[1]])
    along_neck = np.linspace(0.0, 1.0, _samples(float(np.linalg.norm(corner - head)), step_mm))
    neck = head + along_neck[:, None] * (corner - head)
    angles = np.linspace(np.arcsin(RIB_ANGLE_YX_MM[1] / semi_x), RIB_TIP_ANGLE[level], 400)
    wall = np.stack([semi_y * np.cos(angles), side * semi_x * np.sin(angles)], axis=1)
    along = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(wall, axis=0), axis=1))])
    wall += np.clip(1.0 - along / RIB_BLEND_MM, 0.0, 1.0)[:, None] * (corner - wall[0])
    along = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(wall, axis=0), axis=1))])
    at = np.linspace(0.0, along[-1], _samples(float(along[-1]), step_mm))
    shaft = np.stack([np.interp(at, along, wall[:, 0]), np.interp(at, along, wall[:, 1])], axis=1)
    z = np.concatenate([np.zeros(len(neck)), -RIB_SLOPE * at]) + level_z_mm(level)
    return np.column_stack([z, np.vstack([neck, shaft])])


def _ribs(tissue: np.ndarray, coords: Coords, anatomy: Anatomy) -> None:
    """The 11th and 12th ribs on both sides (cortical bone): balls one radius apart along each centreline (their
    union departs from a tube by 0.5 mm)."""
    for level in RIB_TIP_ANGLE:
        for side in (-1.0, 1.0):
            points = rib_centreline(level, side, anatomy, RIB_RADIUS_MM)
            _paint_balls(tissue, coords, points, RIB_RADIUS_MM, CODE["cortex"])


def _kidneys(tissue: np.ndarray, coords: Coords, anatomy: Anatomy) -> None:
    """Both kidneys and, where the patient has one, a simple cyst inside one of them."""
    for side in (-1.0, 1.0):
        centre = (KIDNEY_CENTRE_MM[0], KIDNEY_CENTRE_MM[1], side * KIDNEY_CENTRE_MM[2])
        kidney = _paint_ellipsoid(tissue, coords, centre, KIDNEY_RADII_MM, CODE["kidney"])
        if anatomy.cyst_mm > 0 and side == anatomy.cyst_side:
            cyst_centre = (centre[0] + anatomy.cyst_z_mm, centre[1], side * (KIDNEY_CENTRE_MM[2] + CYST_LATERAL_MM))
            _paint_ellipsoid(tissue, coords, cyst_centre, (anatomy.cyst_mm,) * 3, CODE["cyst"], where=kidney)


def _peritoneum_y(x: np.ndarray, anatomy: Anatomy) -> np.ndarray:
    """y (mm) of the posterior parietal peritoneum: in front of the kidneys, psoas and aorta, bending back into the
    paracolic gutters at the flanks."""
    return PERITONEUM_Y_MM + GUTTER_DEPTH_MM * (np.abs(x) / _cavity_axes(anatomy)[1]) ** GUTTER_EXPONENT


def _colons(tissue: np.ndarray, coords: Coords) -> None:
    """Ascending and descending colon: vertical gas-filled tubes up to their flexures."""
    z, y, x = coords
    for (cy, cx), radius, top in COLONS:
        r = np.sqrt((y - cy) ** 2 + (x - cx) ** 2)
        tissue[(r < radius) & (z < top)] = CODE["colon"]
        tissue[(r < radius - COLON_WALL_MM) & (z < top)] = CODE["gas"]


def _small_bowel(
    tissue: np.ndarray, coords: Coords, spacing: np.ndarray, package: np.ndarray, fill: float, rng: np.random.Generator
) -> None:
    """Small-bowel loops (soft tissue with gas) filling `fill` of their package below SMALL_BOWEL_TOP_MM; the rest of
    the package stays visceral fat, so visceral fat falls as the fill rises."""
    rows = np.flatnonzero(_axis(coords, 0) < SMALL_BOWEL_TOP_MM)
    if not len(rows):
        return
    box = (slice(rows[0], rows[-1] + 1), slice(None), slice(None))
    field = _smooth_field(tissue[box].shape, spacing, SMALL_BOWEL_SCALE_MM, rng)
    threshold = float(np.quantile(field[package[box]], 1.0 - fill)) if package[box].any() else np.inf
    region = tissue[box]
    inside = package[box] & (region == CODE["vat"])
    region[inside & (field > threshold)] = CODE["bowel"]
    region[inside & (field > max(threshold, SMALL_BOWEL_GAS))] = CODE["gas"]


def _liver_shape(coords: Coords, anatomy: Anatomy, nodules: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalised distance of the nodular liver surface (right lobe, left lobe, caudate; < 1 inside) and the
    caudate's own (nodular) mask."""
    s = anatomy.liver_scale
    rx = RIGHT_LOBE_RADII_MM[2] * s * anatomy.right_lobe_scale
    right = _ellipsoid(
        coords,
        (*RIGHT_LOBE_CENTRE_ZY_MM, RIGHT_LOBE_MEDIAL_X_MM - rx),
        (RIGHT_LOBE_RADII_MM[0] * s, RIGHT_LOBE_RADII_MM[1] * s, rx),
    )
    left = _ellipsoid(coords, LEFT_LOBE_CENTRE_MM, tuple(r * s for r in LEFT_LOBE_RADII_MM))
    wall = portal_wall_x_mm(anatomy)
    lateral = max(RIGHT_LOBE_MEDIAL_X_MM - 2.0 * rx, -_cavity_axes(anatomy)[1])
    medial = wall + anatomy.caudate_ratio * (wall - lateral)
    caudate = _ellipsoid(
        coords,
        (*CAUDATE_CENTRE_ZY_MM, (medial + wall - CAUDATE_OVERLAP_MM) / 2.0),
        (*CAUDATE_RADII_ZY_MM, (medial - wall + CAUDATE_OVERLAP_MM) / 2.0),
    )
    bumps = anatomy.nodularity_mm / LIVER_RADIUS_MM * nodules
    return np.minimum(np.minimum(right, left), caudate) - bumps, caudate - bumps < 1.0


def portal_wall_x_mm(anatomy: Anatomy) -> float:
    """x (mm) of the main portal vein's right lateral wall at the bifurcation."""
    return BIFURCATION_MM[2] - anatomy.portal_radius_mm


def _gallbladder(coords: Coords) -> np.ndarray:
    """Normalised distance of the gallbladder (< 1 inside), under the right lobe's inferior surface, anterior."""
    axis = np.array(GALLBLADDER_AXIS) / np.linalg.norm(GALLBLADDER_AXIS)
    return _spheroid(coords, GALLBLADDER_CENTRE_MM, axis, GALLBLADDER_RADII_MM)


def _ascites(
    tissue: np.ndarray,
    coords: Coords,
    plane: tuple[np.ndarray, np.ndarray],
    peritoneal: np.ndarray,
    liver_q: np.ndarray,
    spleen_q: np.ndarray,
    anatomy: Anatomy,
) -> None:
    """Free fluid where it collects in a supine patient: a layer along the wall thickening towards the back
    (paracolic gutters), a dependent pool on the posterior peritoneum lateral to the mesenteric root, and shells
    around the liver and spleen; it displaces only visceral fat and small bowel, never an organ."""
    a = anatomy.ascites_mm
    if a <= 0:
        return
    y, x = plane
    cy, cx = _cavity_axes(anatomy)
    low, high = ASCITES_WALL_WEIGHT
    lining_mm = PROPERITONEAL_FAT[0] + PROPERITONEAL_FAT[1] * anatomy.fat_mm
    inner = lining_mm + a * (low + (high - low) * np.clip((y + cy) / (2.0 * cy), 0.0, 1.0))
    wall_layer = _ellipsoid(plane, (0.0, 0.0), (cy - inner, cx - inner)) >= 1.0
    pool = (y > _peritoneum_y(x, anatomy) - ASCITES_POOL_SHARE * a) & (np.abs(x) > ASCITES_POOL_MIN_X_MM)
    lining = _ellipsoid(plane, (0.0, 0.0), (cy - lining_mm, cx - lining_mm)) >= 1.0
    fluid = ((wall_layer | pool) & peritoneal)[None] | (liver_q < 1.0 + a / LIVER_RADIUS_MM)
    fluid |= spleen_q < 1.0 + a / SPLEEN_RADIUS_MM
    fluid &= np.isin(tissue, [CODE[name] for name in REPLACEABLE]) & ~lining
    tissue[fluid] = CODE["ascites"]


def _portal_points(anatomy: Anatomy) -> dict[str, np.ndarray]:
    """Where the portal branches end: their offsets scaled with the liver (and, on the right, its right lobe)."""
    points = {"bifurcation": np.array(BIFURCATION_MM)}
    for name, (parent, offset, _) in PORTAL_TREE.items():
        lobe = anatomy.right_lobe_scale if name.startswith("right") else 1.0
        points[name] = points[parent] + anatomy.liver_scale * np.array([1.0, 1.0, lobe]) * np.array(offset)
    return points


def _portal_vein(tissue: np.ndarray, coords: Coords, cavity: np.ndarray, anatomy: Anatomy) -> None:
    """Main portal vein from the confluence to its bifurcation, the splenic and superior mesenteric veins that join
    at the confluence, and the right and left portal veins with their first divisions."""
    points = _portal_points(anatomy)
    splenic_hilum = (20.0, 38.0, 78.0 - 22.0 * anatomy.spleen_scale)
    segments: list[tuple[ArrayLike, ArrayLike, float]] = [
        (CONFLUENCE_MM, BIFURCATION_MM, 1.0),
        (CONFLUENCE_MM, MESENTERIC_END_MM, MESENTERIC_SHARE),
        (CONFLUENCE_MM, SPLENIC_BEND_MM, SPLENIC_SHARE),
        (SPLENIC_BEND_MM, splenic_hilum, SPLENIC_SHARE),
    ]
    segments += [(points[parent], points[name], share) for name, (parent, _, share) in PORTAL_TREE.items()]
    for first, last, share in segments:
        start, end, radius = np.array(first), np.array(last), share * anatomy.portal_radius_mm
        box = _box(coords, np.minimum(start, end) - radius, np.maximum(start, end) + radius)
        region = tissue[box]
        region[_tube(_sub(coords, box), start, end, radius) & cavity[box[1:]][None]] = CODE["portal_vein"]


def _tissues(
    anatomy: Anatomy, coords: Coords, spacing: np.ndarray, nodules: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The tissue class of every voxel and the caudate's mask."""
    z, y, x = coords
    plane = (y[0], x[0])
    tissue = np.full(nodules.shape, CODE["air"], dtype=np.uint8)
    cavity = _body_wall(tissue, plane, anatomy)
    _kidneys(tissue, coords, anatomy)
    _back_muscles(tissue, coords, anatomy)
    peritoneal = cavity & (y[0] < _peritoneum_y(x[0], anatomy))
    liver_q, caudate = _liver_shape(coords, anatomy, nodules)
    spleen_q = _ellipsoid(coords, SPLEEN_CENTRE_MM, tuple(r * anatomy.spleen_scale for r in SPLEEN_RADII_MM))
    stomach_q = _ellipsoid(coords, STOMACH_CENTRE_MM, STOMACH_RADII_MM)
    gallbladder_q = _gallbladder(coords)
    package = peritoneal & (_ellipsoid(plane, SMALL_BOWEL_CENTRE_YX_MM, SMALL_BOWEL_RADII_YX_MM) < 1.0)
    for centre, radius, _ in COLONS:
        package &= _ellipsoid(plane, centre, (radius + COLON_WALL_MM,) * 2) > 1.0
    organs_q = np.minimum(np.minimum(liver_q, spleen_q), np.minimum(stomach_q, gallbladder_q))
    _small_bowel(tissue, coords, spacing, package[None] & (organs_q > ORGAN_MARGIN), anatomy.bowel_fill, rng)
    _ascites(tissue, coords, plane, peritoneal, liver_q, spleen_q, anatomy)
    _colons(tissue, coords)
    tissue[stomach_q < 1.0] = CODE["stomach_wall"]
    tissue[(stomach_q < 0.8) & (y < -30.0)] = CODE["gas"]
    gallbladder = gallbladder_q < 1.0
    tissue[gallbladder & cavity] = CODE["gallbladder"]
    liver = (liver_q < 1.0) & cavity & ~gallbladder
    tissue[liver] = CODE["liver"]
    tissue[(spleen_q < 1.0) & cavity & ~liver] = CODE["spleen"]
    tissue[:, _ellipsoid(plane, AORTA_YX_MM, (AORTA_RADIUS_MM, AORTA_RADIUS_MM)) < 1.0] = CODE["aorta"]
    _portal_vein(tissue, coords, cavity, anatomy)
    _spine(tissue, coords)
    _ribs(tissue, coords, anatomy)
    return tissue, caudate


def _caudate_right_ratio(tissue: np.ndarray, caudate: np.ndarray, coords: Coords, spacing: np.ndarray, anatomy: Anatomy) -> float:
    """Harbin's caudate-to-right-lobe ratio on the axial slice through the portal bifurcation: caudate width (main
    portal vein's right wall to the caudate's medial edge) over right-lobe width (that wall to the lobe's lateral
    edge), both along x, voxel edges included."""
    k = int(np.argmin(np.abs(_axis(coords, 0) - BIFURCATION_MM[0])))
    liver = tissue[k] == CODE["liver"]
    x = np.broadcast_to(coords[2][0], liver.shape)
    if not (liver & caudate[k]).any():
        return float("nan")
    wall = portal_wall_x_mm(anatomy)
    lateral = x[liver].min() - spacing[2] / 2.0
    medial = x[liver & caudate[k]].max() + spacing[2] / 2.0
    return float((medial - wall) / (wall - lateral))


def _biomarkers(
    tissue: np.ndarray, hu: np.ndarray, caudate: np.ndarray, coords: Coords, spacing: np.ndarray, anatomy: Anatomy
) -> dict[str, float]:
    """The truth of the imaging biomarkers, measured on the noise-free tissue classes of the phantom's own grid."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    pixel_cm2 = float(spacing[1] * spacing[2]) / 100.0
    l3 = int(np.argmin(np.abs(_axis(coords, 0) - level_z_mm("L3"))))
    muscle = tissue[l3] == CODE["muscle"]
    spleen_slices = np.flatnonzero((tissue == CODE["spleen"]).any(axis=(1, 2)))
    spleen_length = (spleen_slices[-1] - spleen_slices[0] + 1) * spacing[0] if len(spleen_slices) else 0.0
    return {
        "liver_volume_ml": float((tissue == CODE["liver"]).sum() * voxel_ml),
        "spleen_volume_ml": float((tissue == CODE["spleen"]).sum() * voxel_ml),
        "muscle_l3_area_cm2": float(muscle.sum() * pixel_cm2),
        "muscle_l3_hu": float(hu[l3][muscle].mean()) if muscle.any() else float("nan"),
        "sat_l3_area_cm2": float((tissue[l3] == CODE["sat"]).sum() * pixel_cm2),
        "vat_l3_area_cm2": float((tissue[l3] == CODE["vat"]).sum() * pixel_cm2),
        "ascites_ml": float((tissue == CODE["ascites"]).sum() * voxel_ml),
        "spleen_length_mm": float(spleen_length),
        "caudate_right_ratio": _caudate_right_ratio(tissue, caudate, coords, spacing, anatomy),
        "nodularity": anatomy.nodularity_mm,
        "pv_diameter_mm": 2.0 * anatomy.portal_radius_mm,
    }


def render(anatomy: Anatomy, scanner: Scanner, size: str, rng: np.random.Generator) -> Phantom:
    """Render one CT (int16 HU), its label image (1 liver, 2 spleen, 3 portal vein) and its biomarkers' truth."""
    shape = GRID[size]
    spacing = np.array(FIELD_OF_VIEW_MM) / np.array(shape) * scanner.spacing_scale
    coords = tuple(
        ((np.arange(n) - (n - 1) / 2.0) * s).reshape([-1 if i == axis else 1 for i in range(3)]).astype(np.float32)
        for axis, (n, s) in enumerate(zip(shape, spacing))
    )
    nodules = _smooth_field(shape, spacing, 14.0, rng)
    texture = anatomy.texture_hu * _smooth_field(shape, spacing, 4.0, rng)
    tissue, caudate = _tissues(anatomy, coords, spacing, nodules, rng.spawn(1)[0])
    table = np.array([anatomy.muscle_hu if name == "muscle" else HU[name] for name in TISSUES], dtype=np.float32)
    ct = table[tissue]
    liver = tissue == CODE["liver"]
    ct[liver] += anatomy.liver_hu_shift + texture[liver]
    labels = np.zeros(shape, dtype=np.uint8)
    for name, label in LABELS.items():
        labels[tissue == CODE[name]] = label
    biomarkers = _biomarkers(tissue, ct, caudate, coords, spacing, anatomy)

    blurred = ndimage.gaussian_filter(ct, sigma=scanner.blur_mm / spacing)
    noisy = blurred + scanner.hu_offset + scanner.noise_sd * rng.standard_normal(shape).astype(np.float32)
    image = sitk.GetImageFromArray(np.clip(np.rint(noisy), -1024, 3071).astype(np.int16))
    label_image = sitk.GetImageFromArray(labels)
    for volume in (image, label_image):
        volume.SetSpacing(tuple(float(s) for s in spacing[::-1]))
        volume.SetOrigin(tuple(float(-(n - 1) / 2.0 * s) for n, s in zip(shape[::-1], spacing[::-1])))
    return Phantom(image, label_image, tissue, biomarkers)
