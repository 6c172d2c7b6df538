"""Vertebral levels read from a CT: the vertebral bodies along the spine, split at the intervertebral discs, and named
by counting up from the iliac crests or, where the pelvis is not in view, from the lowest rib-bearing vertebra (T12).

On a grid of about GRID_MM: per slice, the body's midline and the spinal canal (the hole that the vertebral body,
pedicles and laminae enclose in what is denser than soft tissue; the anterior bone edge is no landmark: contrast in
the aorta, in front of the spine, is as dense as a young patient's trabecular bone). The mean HU in the back of the
vertebral body, just in front of the canal, dips at every disc (soft tissue between two dense endplates), so discs
are the profile's dips (below the brightest slices within ENDPLATE_MM on both sides by DISC_DIP_HU), chained
PITCH_MM apart by a dynamic programme. Names: the disc nearest the top of the iliac wings (the first slice holding
4 cm² of deep bone on both sides, landmarks.py: below the crests' highest point, at the sacrum) is L5/S1. Without
the pelvis in view, a slice holds a rib where bone denser than RIB_MIN_PEAK_HU lies RIB_LATERAL_MM from the midline
behind the canal's front (the ribs' necks and angles; the lumbar transverse processes end closer to the midline,
enhancing kidneys are not that dense), and the vertebra holding the lowest rib slice is T12. The 11th and 12th ribs
run down and out, so their lateral ends can lie a level lower: a rib-anchored L3 can be L4 (the store says which
anchor named the levels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from tipsprog.segment.landmarks import pelvis_top, slice_levels

GRID_MM = 3.0
BODY_HU, BONE_HU, CANAL_WALL_HU = -400.0, 200.0, 80.0
CANAL_CM2 = (0.5, 6.0)
CANAL_OFFSET_MM = 15.0
CANAL_SMOOTHING_MM = 30.0
PROBE_DEPTH_MM = (0.0, 12.0)
PROBE_HALF_WIDTH_MM = 12.0
DISC_DIP_HU = 20.0
ENDPLATE_MM = 6.0
PITCH_MM = (23.0, 48.0)
RIB_LATERAL_MM = (70.0, 110.0)
RIB_MIN_PEAK_HU = 300.0
LEVEL_NAMES = {**{index - 12: f"T{index}" for index in range(1, 13)}, **{index: f"L{index}" for index in range(1, 6)}}


@dataclass(frozen=True)
class VertebralLevels:
    """Vertebral bodies of a scan (physical z of each body's centre, mm, ordered bottom to top) and their names."""

    centres_z_mm: list[float]
    names: list[str]
    anchor: str
    canal_front_y_mm: list[float]

    def z_of(self, name: str) -> float | None:
        """Physical z (mm) of a named vertebral body's centre, None where it is not in view."""
        return self.centres_z_mm[self.names.index(name)] if name in self.names else None

    def canal_front_of(self, name: str) -> float:
        """Physical y (mm) of the spinal canal's anterior edge at a named vertebral body's centre."""
        return self.canal_front_y_mm[self.names.index(name)]


def shrunk(ct: sitk.Image) -> sitk.Image:
    """The CT averaged down to about GRID_MM per axis (nearest integer factors), as float, median-filtered in plane
    where its pixels are no coarser than 1.5 GRID_MM (on coarser ones a median erases the spinal canal)."""
    factors = [max(1, round(GRID_MM / spacing)) for spacing in ct.GetSpacing()]
    grid = sitk.BinShrink(sitk.Cast(ct, sitk.sitkFloat32), factors)
    radius = [int(spacing <= 1.5 * GRID_MM) for spacing in grid.GetSpacing()[:2]] + [0]
    return sitk.Median(grid, radius) if any(radius) else grid


def _body_midline(hu: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-slice body masks (largest component above BODY_HU, holes filled) and the body's midline column."""
    body = np.zeros(hu.shape, bool)
    for z, plane in enumerate(hu):
        labels, count = ndimage.label(plane > BODY_HU)
        if count:
            largest = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
            body[z] = ndimage.binary_fill_holes(largest)
    return body, float(ndimage.center_of_mass(body)[2]) if body.any() else hu.shape[2] / 2.0


def canal_hole(plane: np.ndarray, body: np.ndarray, midline: float, spacing: np.ndarray) -> np.ndarray | None:
    """The spinal canal on one axial slice (y, x): the most posterior hole of CANAL_CM2 area within CANAL_OFFSET_MM
    of the midline column in what is denser than CANAL_WALL_HU (an old patient's trabecular bone is not much denser
    than that; the canal's fluid is not); None where the slice shows no enclosed canal."""
    wall = (plane > CANAL_WALL_HU) & body
    holes, _ = ndimage.label(ndimage.binary_fill_holes(wall) & ~wall)
    pixel_cm2 = float(np.prod(spacing[-2:])) / 100.0
    best, best_row = None, -1.0
    for label, region in enumerate(ndimage.find_objects(holes), start=1):
        hole = holes[region] == label
        row, column = ndimage.center_of_mass(hole)
        near = abs(column + region[1].start - midline) * spacing[-1] < CANAL_OFFSET_MM
        if CANAL_CM2[0] <= hole.sum() * pixel_cm2 <= CANAL_CM2[1] and near and row + region[0].start > best_row:
            best, best_row = holes == label, row + region[0].start
    return best


def _canal_front(hu: np.ndarray, body: np.ndarray, midline: float, spacing: np.ndarray) -> np.ndarray:
    """Row (y index) of the spinal canal's anterior edge per slice, interpolated and smoothed along the spine (NaN
    outside the slices between the first and last where an enclosed canal is seen)."""
    front = np.full(len(hu), np.nan)
    for z in range(len(hu)):
        canal = canal_hole(hu[z], body[z], midline, spacing)
        if canal is not None:
            front[z] = np.flatnonzero(canal.any(axis=1))[0]
    seen = np.flatnonzero(np.isfinite(front))
    if len(seen) < 2:
        return np.full(len(hu), np.nan)
    filled = np.full(len(hu), np.nan)
    span = np.arange(seen[0], seen[-1] + 1)
    window = max(3, int(round(CANAL_SMOOTHING_MM / spacing[0])) | 1)
    filled[span] = ndimage.median_filter(np.interp(span, seen, front[seen]), size=window, mode="nearest")
    return filled


def _body_profile(hu: np.ndarray, canal: np.ndarray, midline: float, spacing: np.ndarray) -> np.ndarray:
    """Mean HU per slice in a probe inside the back of the vertebral body (or disc), just in front of the canal."""
    x0, x1 = (int(round(midline + sign * PROBE_HALF_WIDTH_MM / spacing[2])) for sign in (-1, 1))
    profile = np.full(len(hu), np.nan)
    for z in np.flatnonzero(np.isfinite(canal)):
        y0, y1 = (int(round(canal[z] - depth / spacing[1])) for depth in PROBE_DEPTH_MM[::-1])
        if y0 >= 0:
            profile[z] = float(np.mean(hu[z, y0 : y1 + 1, max(0, x0) : x1 + 1]))
    return profile


def _dip_scores(profile: np.ndarray, slice_mm: float) -> dict[int, float]:
    """Each local minimum of the body profile scored by how far it lies below the brightest slices within
    ENDPLATE_MM on both sides (a disc lies between two dense endplates; the dim middle of an old patient's
    vertebral body lies between its own endplates, farther apart)."""
    reach = max(1, int(round(ENDPLATE_MM / slice_mm)))
    scores = {}
    for z in range(reach, len(profile) - reach):
        window = profile[z - reach : z + reach + 1]
        if not np.all(np.isfinite(window)) or profile[z] > min(profile[z - 1], profile[z + 1]):
            continue
        left, right = profile[z - reach : z].max(), profile[z + 1 : z + reach + 1].max()
        scores[z] = 0.5 * (left + right) - profile[z]
    return scores


def _discs(profile: np.ndarray, slice_mm: float) -> np.ndarray:
    """Slices of the intervertebral discs: the chain of profile dips, consecutive ones PITCH_MM apart, with the
    largest total dip score (a dynamic programme; dips shallower than DISC_DIP_HU are not discs)."""
    scores = {z: v for z, v in _dip_scores(profile, slice_mm).items() if v >= DISC_DIP_HU}
    dips = sorted(scores)
    best = {z: (scores[z], -1) for z in dips}
    for i, z in enumerate(dips):
        for previous in dips[:i]:
            if PITCH_MM[0] <= (z - previous) * slice_mm <= PITCH_MM[1] and best[previous][0] + scores[z] > best[z][0]:
                best[z] = (best[previous][0] + scores[z], previous)
    if not best:
        return np.array([], int)
    chain, z = [], max(best, key=lambda key: best[key][0])
    while z >= 0:
        chain.append(z)
        z = best[z][1]
    return np.array(chain[::-1], int)


def _rib_slices(
    hu: np.ndarray, body: np.ndarray, front: np.ndarray, midline: float, spacing: np.ndarray, pelvic: np.ndarray
) -> np.ndarray:
    """Whether each slice holds rib bone: a bone component RIB_LATERAL_MM from the midline behind the canal's front
    whose densest voxel exceeds RIB_MIN_PEAK_HU (kidneys and transverse processes do not), pelvic slices excepted."""
    lateral = np.abs(np.arange(hu.shape[2]) - midline) * spacing[2]
    band = (lateral > RIB_LATERAL_MM[0]) & (lateral < RIB_LATERAL_MM[1])
    ribs = np.zeros(len(hu), bool)
    for z in np.flatnonzero(np.isfinite(front) & ~pelvic):
        candidate = (hu[z] > BONE_HU) & body[z] & band[None, :]
        candidate[: int(front[z])] = False
        labels, count = ndimage.label(candidate)
        if count:
            ribs[z] = ndimage.maximum(hu[z], labels, np.arange(1, count + 1)).max() > RIB_MIN_PEAK_HU
    return ribs


def _named(bodies: list[tuple[int, int]], anchor_index: int, anchor_level: int) -> list[str]:
    """Names of vertebral bodies (bottom to top) given that bodies[anchor_index] is level anchor_level."""
    return [LEVEL_NAMES.get(anchor_level - (i - anchor_index), "") for i in range(len(bodies))]


def _bodies(discs: np.ndarray, slices: int) -> list[tuple[int, int]]:
    """Vertebral bodies (first and last slice) between consecutive discs, plus the bodies beyond the first and the
    last disc where the scan reaches their middle (half the median pitch beyond the disc)."""
    if len(discs) < 2:
        return []
    inner = [(int(a) + 1, int(b)) for a, b in zip(discs[:-1], discs[1:])]
    reach = int(np.median(np.diff(discs)))
    below = [(int(discs[0]) - reach, int(discs[0]) - 1)] if discs[0] - reach // 2 >= 0 else []
    above = [(int(discs[-1]) + 1, int(discs[-1]) + reach)] if discs[-1] + reach // 2 < slices else []
    return below + inner + above


def _anchored_names(
    bodies: list[tuple[int, int]], discs: np.ndarray, crest: int | None, ribs: np.ndarray
) -> tuple[list[str], str]:
    """Names of the vertebral bodies from the iliac crests (the disc nearest their top is L5/S1) or, without the
    pelvis in view, from the ribs (the body holding the lowest rib slice, or the one above the top disc, is T12)."""
    if crest is not None:
        disc = discs[int(np.argmin(np.abs(discs - crest)))]
        above = next((i for i, (low, _) in enumerate(bodies) if low > disc), None)
        return (_named(bodies, above, 5), "iliac crests") if above is not None else ([], "none")
    if len(ribs):
        holding = next((i for i, (_, top) in enumerate(bodies) if top >= ribs[0]), len(bodies))
        return _named(bodies, holding, 0), "ribs"
    return [], "none"


def canal_front_rows(hu: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Row of the spinal canal's anterior edge on each slice of a (z, y, x) HU array on a grid of about GRID_MM
    (interpolated between the slices where the canal is enclosed; NaN beyond them)."""
    body, midline = _body_midline(hu)
    return _canal_front(hu, body, midline, spacing)


def vertebral_levels(ct: sitk.Image) -> VertebralLevels:
    """The named vertebral bodies of a canonical (LPS) CT; empty where the spine or every anchor is out of view."""
    grid = shrunk(ct)
    hu = sitk.GetArrayFromImage(grid)
    spacing = np.array(grid.GetSpacing()[::-1])
    body, midline = _body_midline(hu)
    canal = _canal_front(hu, body, midline, spacing)
    discs = _discs(_body_profile(hu, canal, midline, spacing), spacing[0])
    bodies = _bodies(discs, len(hu))
    pelvic, _ = slice_levels(hu, spacing)
    crest = pelvis_top(pelvic, spacing[0])
    ribs = np.flatnonzero(_rib_slices(hu, body, canal, midline, spacing, pelvic)) if crest is None else np.array([], int)
    names, anchor = _anchored_names(bodies, discs, crest, ribs) if bodies else ([], "none")
    centres = [
        grid.TransformContinuousIndexToPhysicalPoint((0.0, float(canal[(a + b) // 2]), (a + b) / 2.0))[1:] for a, b in bodies
    ]
    kept = [(centre, name) for centre, name in zip(centres, names) if name and np.isfinite(centre[0])]
    return VertebralLevels(
        [centre[1] for centre, _ in kept],
        [name for _, name in kept],
        anchor if kept else "none",
        [centre[0] for centre, _ in kept],
    )
