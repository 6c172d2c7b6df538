"""The classic backend's portal vein: the enhancing tree that branches in the liver and leaves it at the hilum, not
the aorta beside the spine, not a kidney, and nothing at all on a scan without contrast."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from tipsprog.segment.classic import _portal_venous_system

SPACING = np.array([1.6, 1.5, 1.5])  # z, y, x (mm)
SHAPE = (110, 170, 170)
SOFT_HU, LIVER_HU, BLOOD_HU, BONE_HU, MARROW_HU = 40.0, 110.0, 180.0, 700.0, 250.0
SPINE_X_MM = 128.0  # the body's midline


def _mm_grid() -> list[np.ndarray]:
    """Voxel centres in mm (z, y, x), broadcastable."""
    return np.meshgrid(*(np.arange(n) * step for n, step in zip(SHAPE, SPACING)), indexing="ij", sparse=True)


def _tube(points: list[tuple[float, float, float]], radius: float) -> np.ndarray:
    """Voxels within radius (mm) of a polyline given in mm (z, y, x)."""
    z, y, x = _mm_grid()
    inside = np.zeros(SHAPE, bool)
    for start, end in zip(points[:-1], points[1:]):
        a, b = np.array(start), np.array(end)
        direction = b - a
        t = ((z - a[0]) * direction[0] + (y - a[1]) * direction[1] + (x - a[2]) * direction[2]) / float(direction @ direction)
        t = np.clip(t, 0.0, 1.0)
        inside |= (z - a[0] - t * direction[0]) ** 2 + (y - a[1] - t * direction[1]) ** 2 + (
            x - a[2] - t * direction[2]
        ) ** 2 <= radius**2
    return inside


def _ellipsoid(centre: tuple[float, float, float], radii: tuple[float, float, float]) -> np.ndarray:
    """Voxels inside an axis-aligned ellipsoid (mm)."""
    z, y, x = _mm_grid()
    return sum(((c - m) / r) ** 2 for c, m, r in zip((z, y, x), centre, radii)) <= 1.0


@pytest.fixture(scope="module")
def abdomen() -> dict[str, np.ndarray]:
    """A contrast-enhanced upper abdomen: liver on the patient's right (low x) holding the portal tree, whose trunk
    leaves the liver down and towards the midline into the splenic vein; the aorta against the vertebral body; a kidney under the liver."""
    liver = _ellipsoid((110.0, 100.0, 65.0), (60.0, 60.0, 55.0))
    hilum = (100.0, 105.0, 75.0)
    splenic_vein = _tube([(55.0, 130.0, 135.0), (55.0, 140.0, 250.0)], 4.5)  # to the left, beyond the reach
    portal = (
        _tube([(55.0, 130.0, 135.0), (75.0, 120.0, 100.0), hilum], 6.0)
        | splenic_vein
        | _tube([hilum, (135.0, 85.0, 40.0)], 4.0)
        | _tube([hilum, (140.0, 130.0, 70.0)], 4.0)
    )
    axis = [(0.0, 205.0, SPINE_X_MM), (175.0, 205.0, SPINE_X_MM)]
    spine_outer, spine_inner = _tube(axis, 18.0), _tube(axis, 14.0)
    aorta = _tube([(0.0, 176.0, 140.0), (175.0, 176.0, 140.0)], 10.0)
    kidney = _ellipsoid((40.0, 190.0, 75.0), (45.0, 28.0, 25.0)) & ~liver
    hu = np.full(SHAPE, SOFT_HU, np.float32)
    hu[liver] = LIVER_HU
    for structure in (kidney, aorta, portal):
        hu[structure] = BLOOD_HU
    hu[spine_outer] = BONE_HU
    hu[spine_inner] = MARROW_HU
    return {"hu": hu, "liver": liver, "portal": portal, "aorta": aorta, "kidney": kidney}  # the liver with its vessels


@pytest.fixture(scope="module")
def found(abdomen) -> np.ndarray:
    return _portal_venous_system(abdomen["hu"], abdomen["liver"], SPACING, SPINE_X_MM / SPACING[2])


def test_the_portal_tree_is_found_and_the_aorta_and_kidney_are_not(abdomen, found):
    portal = abdomen["portal"]
    within_reach = portal & (np.arange(SHAPE[2]) * SPACING[2] < 200.0)
    dice = 2 * (found & within_reach).sum() / (found.sum() + within_reach.sum())
    assert dice >= 0.85, dice
    assert (found & abdomen["aorta"]).sum() == 0
    assert (found & abdomen["kidney"]).sum() == 0


def test_the_veins_are_followed_a_trunk_length_outside_the_liver(abdomen, found):
    """The splenic vein is kept near the confluence and cut where, along the vessels, it is farther from the liver
    than PORTAL_REACH_MM (its far end lies ~170 mm away)."""
    x_mm = np.arange(SHAPE[2]) * SPACING[2]
    splenic = abdomen["portal"] & (np.abs(np.arange(SHAPE[0]) * SPACING[0] - 55.0) < 6.0)[:, None, None]
    assert (found & splenic & (x_mm < 160.0)).sum() >= 0.8 * (splenic & (x_mm < 160.0)).sum()
    assert not (found & (x_mm > 220.0)).any()


def test_no_portal_vein_without_contrast(abdomen):
    hu = abdomen["hu"].copy()
    hu[abdomen["liver"]] = SOFT_HU + 15.0
    hu[hu == BLOOD_HU] = SOFT_HU + 5.0  # unenhanced blood is as dense as soft tissue
    hu[abdomen["portal"]] = SOFT_HU + 5.0
    assert not _portal_venous_system(hu, abdomen["liver"], SPACING, SPINE_X_MM / SPACING[2]).any()


def test_a_faint_blurred_vein_is_found_out_to_its_wall(abdomen):
    """A portal vein 55 HU over the liver seen through a scanner's blur (σ 1.5 mm): a fixed enhancement threshold
    cuts it inside its wall; grown to its half-maximum edge it keeps its calibre."""
    hu = abdomen["hu"].copy()
    hu[abdomen["portal"]] = LIVER_HU + 55.0
    blurred = ndimage.gaussian_filter(hu, 1.5 / SPACING)
    found = _portal_venous_system(blurred, abdomen["liver"], SPACING, SPINE_X_MM / SPACING[2])
    within_reach = abdomen["portal"] & (np.arange(SHAPE[2]) * SPACING[2] < 200.0)
    dice = 2 * (found & within_reach).sum() / (found.sum() + within_reach.sum())
    assert dice >= 0.9, dice
    assert 0.9 <= found.sum() / within_reach.sum() <= 1.1
