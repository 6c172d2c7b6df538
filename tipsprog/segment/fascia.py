"""The body wall's layers on axial slices: the body, its subcutaneous fat and what the fascia encloses (the wall
muscles and the cavity inside them). Subcutaneous fat is the fat reached from the skin through fat wider than
2 × SAT_NECK_MM (a gap in the muscle wall does not let it into the abdomen); what it surrounds, less the skin, is
inside the fascia. Body composition and ascites (biomarkers.py) and the rib cage's reach (classic.py) use it."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from tipsprog.segment.morphology import dilated, eroded

BODY_HU = -500.0
FAT_HU = (-190.0, -30.0)
SKIN_MM = 10.0
SAT_NECK_MM = 6.0
SLICES_APART_MM = 1e6  # the z spacing a stack of slices is given: no distance reaches from one slice to the next
IN_PLANE = np.zeros((3, 3, 3), bool)
IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)  # 4-connected within an axial slice, nothing across slices


def fascia_inside(hu: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Body, subcutaneous fat and what the fascia encloses on an axial slice (y, x) or on each slice of a stack
    (z, y, x) on its own; spacing is the in-plane (y, x) one."""
    stack = hu if hu.ndim == 3 else hu[None]
    grid = np.array([SLICES_APART_MM, *spacing])
    body = per_slice(ndimage.binary_fill_holes, largest_per_slice(stack > BODY_HU))
    fat = (stack >= FAT_HU[0]) & (stack <= FAT_HU[1]) & body
    skin = body & ~eroded(body, SKIN_MM, grid)
    core = eroded(fat, SAT_NECK_MM, grid)  # reached through fat wider than a gap in the muscle wall
    reached = per_slice(ndimage.binary_propagation, core & skin, mask=core)
    subcutaneous = per_slice(
        ndimage.binary_propagation,
        reached | (fat & skin),
        mask=fat & dilated(reached, SAT_NECK_MM + spacing.max(), grid) | (fat & skin),
    )
    inside = per_slice(ndimage.binary_fill_holes, largest_per_slice(body & ~subcutaneous & ~(skin & ~fat)))
    return (body, subcutaneous, inside) if hu.ndim == 3 else (body[0], subcutaneous[0], inside[0])


def per_slice(operation, image: np.ndarray, **limits: np.ndarray) -> np.ndarray:
    """A scipy binary operation (fill holes, propagation) on each axial slice of a stack on its own."""
    return operation(image, structure=IN_PLANE, **limits)


def largest_per_slice(mask: np.ndarray) -> np.ndarray:
    """The largest (4-)connected component of each axial slice of a stack (ties: the first in raster order)."""
    components, count = ndimage.label(mask, structure=IN_PLANE)
    if count == 0:
        return mask.copy()
    sizes = np.bincount(components.ravel())[1:]
    plane = np.array([region[0].start for region in ndimage.find_objects(components)])
    order = np.lexsort((np.arange(count), -sizes, plane))
    first = order[np.r_[True, plane[order][1:] != plane[order][:-1]]]
    keep = np.zeros(count + 1, bool)
    keep[first + 1] = True
    return keep[components]
