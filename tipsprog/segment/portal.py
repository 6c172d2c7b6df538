"""Main portal vein diameter and portal venous volume from a label image, as the TIPS literature reports them.

The portal-vein label holds the whole portal venous system (splenic and superior mesenteric veins, the confluence,
the main trunk, the intrahepatic branches). The trunk is found on the label's centreline (skeleton, on a 1 mm
isotropic LPS grid, so any scan orientation and slice spacing give the same tree) of its largest connected piece,
with the liver closed over its vessels telling inside from outside:

- the tree is rooted at its extrahepatic end farthest along it from the liver;
- the hilum is where it enters the liver: the node with the most centreline in the liver below it and the most
  outside the liver above it;
- the bifurcation is the first branch point within hilum_reach_mm of the hilum whose side branch is a vessel of its
  own (long, and at least half as thick as the trunk) that runs into the liver; where there is none, the trunk ends
  at the hilum;
- the confluence is the last branch point before it where another vessel of its own joins (the splenic or the
  superior mesenteric vein); where there is none, the trunk starts where the label ends and has no length;
- the diameter is measured on cross-sections perpendicular to the centreline along the middle third of the trunk
  (mid-way between confluence and bifurcation), or 10–30 mm upstream of its hepatic end where the label has no
  confluence (no mesenteric or no splenic vein in it).

Where the trunk cannot be identified the diameter is NaN, never a guess: an empty or fragmentary label, no liver, no
vessel both in and outside the liver, a grid coarser than max_spacing_mm, or a "trunk" that is thinner than the vessel
it leads into or does not run up and to the patient's right into the liver (as the portal vein does, from the
confluence behind the pancreas neck to the porta hepatis; a mislabelled structure mostly does not).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, depth_first_order, dijkstra, minimum_spanning_tree
from skimage.morphology import skeletonize

from tipsprog.segment.morphology import depth_mm, dilated, eroded
from tipsprog.store import ROI_LABELS

SETTINGS: dict[str, Any] = {
    "max_spacing_mm": 5.0,  # a coarser label grid does not resolve the vein: no diameter
    "skeleton_mm": 1.0,  # isotropic grid of the centreline
    "liver_grid_mm": 2.0,  # grid of the liver closing
    "liver_closing_mm": 10.0,  # vessels up to this radius inside the liver count as intrahepatic
    "branch_min_mm": 15.0,  # a side branch shorter than this is a spur or a small tributary
    "branch_radius_ratio": 0.5,  # ... and one thinner than this fraction of the trunk's radius too
    "hilum_reach_mm": 25.0,  # the bifurcation lies within this distance of the hilum along the centreline
    "hepatic_fraction": 0.25,  # ... and its side branch has at least this fraction of its length in the liver
    "trunk_min_mm": 20.0,  # a shorter trunk is not measured
    "tangent_mm": 6.0,  # centreline points within this distance give the local direction
    "sample_step_mm": 2.0,  # cross-sections along the middle third of the trunk
    "hepatic_window_mm": (10.0, 30.0),  # ... or this far upstream of its hepatic end where no confluence is found
    "onward_radius_ratio": 0.8,  # the trunk is at least this fraction as thick as the vessel it leads into
    "plane_step_mm": 0.2,  # pixel size of a cross-section
}


@dataclass(frozen=True)
class PortalVein:
    """Portal vein measurements of one scan (NaN: not measured)."""

    main_diameter_mm: float = np.nan  # trunk: equivalent-circle diameter of its cross-sections
    main_length_mm: float = np.nan  # trunk: centreline length, confluence to bifurcation (or hilum)
    volume_ml: float = np.nan  # the whole portal-vein label (NaN: the label is empty)
    extrahepatic_volume_ml: float = np.nan  # its part outside the liver closed over its vessels
    hepatic_end_mm: tuple[float, float, float] | None = field(default=None, compare=False)  # LPS point, not stored

    def as_array(self) -> np.ndarray:
        """The stored values, PORTAL_VEIN_FIELDS in order (float64)."""
        return np.array([getattr(self, name) for name in PORTAL_VEIN_FIELDS], dtype=np.float64)


PORTAL_VEIN_FIELDS = tuple(f.name for f in fields(PortalVein) if f.name != "hepatic_end_mm")


@dataclass
class Trunk:
    """The main portal vein's centreline nodes, upstream end first, and the landmarks that bound it."""

    nodes: list[int]
    confluence: bool  # its upstream end is where a splenic or mesenteric vein joins (else where the label ends)
    bifurcation: bool  # its hepatic end is the bifurcation (else where the vein enters the liver)

    def window_mm(self, line: Centreline) -> tuple[float, float]:
        """Where the diameter is measured, in mm along the centreline from the upstream end: the middle third, or
        hepatic_window_mm upstream of the hepatic end where no confluence was found."""
        length = float(line.depth[self.nodes[-1]] - line.depth[self.nodes[0]])
        if self.confluence:
            return length / 3.0, 2.0 * length / 3.0
        return length - SETTINGS["hepatic_window_mm"][1], length - SETTINGS["hepatic_window_mm"][0]


@dataclass
class Centreline:
    """The skeleton tree of the portal vein on an isotropic grid, rooted at its end farthest from the liver."""

    points: np.ndarray  # [N, 3] physical LPS (x, y, z) in mm, in depth-first order
    parent: np.ndarray  # parent position (-1 for the root)
    radius: np.ndarray  # distance to the vessel wall (maximal inscribed sphere), mm
    depth: np.ndarray  # centreline distance from the root, mm
    size: np.ndarray  # nodes in the subtree (the subtree of i is i … i + size[i] − 1)
    length: np.ndarray  # centreline length of the subtree, with the edge to the parent, mm
    hepatic_length: np.ndarray  # ... of it inside the closed liver

    def children(self, node: int) -> list[int]:
        """Direct children of a node."""
        kids, child = [], node + 1
        while child < node + self.size[node]:
            kids.append(child)
            child += self.size[child]
        return kids


def _grid(lower: np.ndarray, upper: np.ndarray, spacing: float) -> sitk.Image:
    """An identity-direction (LPS) grid covering the physical box lower…upper."""
    size = np.maximum(np.ceil((upper - lower) / spacing).astype(int) + 1, 1)
    grid = sitk.Image([int(n) for n in size], sitk.sitkUInt8)
    grid.SetSpacing((spacing,) * 3)
    grid.SetOrigin(tuple(float(v) for v in lower))
    return grid


def _physical_box(image: sitk.Image, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Physical LPS bounding box of a mask's voxels (array order z, y, x) in any image orientation."""
    index = np.argwhere(mask)
    low, high = index.min(axis=0)[::-1], index.max(axis=0)[::-1]
    corners = [
        image.TransformContinuousIndexToPhysicalPoint([float(c) for c in (x, y, z)])
        for x in (low[0], high[0])
        for y in (low[1], high[1])
        for z in (low[2], high[2])
    ]
    return np.min(corners, axis=0), np.max(corners, axis=0)


def _resampled(image: sitk.Image, grid: sitk.Image, linear: bool) -> np.ndarray:
    """A binary image on another grid: linear interpolation thresholded at one half, or nearest neighbour."""
    if linear:
        moved = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), grid, sitk.Transform(), sitk.sitkLinear, 0.0)
        return sitk.GetArrayFromImage(moved) >= 0.5
    return sitk.GetArrayFromImage(sitk.Resample(image, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0)) > 0


def _closed_liver(liver: sitk.Image, lower: np.ndarray, upper: np.ndarray) -> sitk.Image:
    """The liver closed over its vessels (a ball of liver_closing_mm) on a coarse grid around lower…upper."""
    radius, spacing = SETTINGS["liver_closing_mm"], SETTINGS["liver_grid_mm"]
    margin = 2.0 * radius + 2.0 * spacing
    grid = _grid(lower - margin, upper + margin, spacing)
    mask = _resampled(liver, grid, linear=False)
    closed = np.zeros_like(mask)
    if mask.any():
        padded = np.pad(dilated(mask, radius, np.full(3, spacing)), 1, constant_values=True)  # no erosion from the grid's edge
        closed = eroded(padded, radius, np.full(3, spacing))[1:-1, 1:-1, 1:-1]
    image = sitk.GetImageFromArray(closed.astype(np.uint8))
    image.CopyInformation(grid)
    return image


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a mask."""
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if count <= 1:
        return mask
    return components == np.argmax(np.bincount(components.ravel())[1:]) + 1


def _skeleton_tree(skeleton: np.ndarray, spacing: float) -> tuple[np.ndarray, coo_matrix]:
    """Skeleton voxels and their minimum spanning tree over 26-neighbour steps (lengths in mm)."""
    voxels = np.argwhere(skeleton)
    number = np.full(skeleton.shape, -1, dtype=np.int64)
    number[tuple(voxels.T)] = np.arange(len(voxels))
    padded = np.pad(number, 1, constant_values=-1)
    rows, cols, lengths = [], [], []
    for offset in np.argwhere(np.ones((3, 3, 3))) - 1:
        if tuple(offset) <= (0, 0, 0):
            continue  # each pair once
        neighbour = padded[tuple((voxels + 1 + offset).T)]
        found = neighbour >= 0
        rows.append(np.flatnonzero(found))
        cols.append(neighbour[found])
        lengths.append(np.full(found.sum(), spacing * float(np.linalg.norm(offset))))
    graph = coo_matrix((np.concatenate(lengths), (np.concatenate(rows), np.concatenate(cols))), shape=(len(voxels),) * 2)
    return voxels, minimum_spanning_tree(graph.tocsr())


def _tree_arrays(
    order: np.ndarray, predecessor: np.ndarray, step_of: np.ndarray, hepatic_of: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Parent position, subtree size, depth, subtree length and subtree liver length of nodes in depth-first order."""
    position = np.empty(len(predecessor), dtype=np.int64)
    position[order] = np.arange(len(order))
    parent = np.where(predecessor[order] >= 0, position[np.maximum(predecessor[order], 0)], -1)
    step, hepatic = step_of[order], hepatic_of[order]
    depth = np.zeros(len(order))
    for node in range(1, len(order)):
        depth[node] = depth[parent[node]] + step[node]
    size, length, hepatic_length = np.ones(len(order), np.int64), step.copy(), step * hepatic
    for node in range(len(order) - 1, 0, -1):
        size[parent[node]] += size[node]
        length[parent[node]] += length[node]
        hepatic_length[parent[node]] += hepatic_length[node]
    return parent, size, depth, length, hepatic_length


def centreline(vessel: np.ndarray, hepatic: np.ndarray, grid: sitk.Image) -> Centreline | None:
    """The skeleton tree of a vessel mask on an isotropic LPS grid, rooted at its extrahepatic end farthest along it
    from the liver (None: the vessel does not both run in the liver and outside it)."""
    spacing = grid.GetSpacing()[0]
    voxels, tree = _skeleton_tree(skeletonize(vessel) > 0, spacing)
    if len(voxels) < 2:
        return None
    _, component = connected_components(tree, directed=False)
    main = component == np.argmax(np.bincount(component))
    hepatic_of = hepatic[tuple(voxels.T)]
    inside, outside = np.flatnonzero(main & hepatic_of), np.flatnonzero(main & ~hepatic_of)
    if not len(inside) or not len(outside):
        return None
    to_liver = dijkstra(tree, directed=False, indices=inside, min_only=True)
    order, predecessor = depth_first_order(tree, int(outside[np.argmax(to_liver[outside])]), directed=False)
    step_of = np.zeros(len(voxels))
    linked = np.flatnonzero(predecessor >= 0)
    step_of[linked] = np.asarray((tree + tree.T).tocsr()[linked, predecessor[linked]]).ravel()
    parent, size, depth, length, hepatic_length = _tree_arrays(order, predecessor, step_of, hepatic_of.astype(float))
    radius = depth_mm(vessel, np.full(3, spacing))[tuple(voxels[order].T)]
    points = np.array(grid.GetOrigin()) + voxels[order][:, ::-1] * spacing
    return Centreline(points, parent, radius, depth, size, length, hepatic_length)


def _chain(line: Centreline, hilum: int) -> list[int]:
    """Root → hilum, then on through the child with the most liver below it, as far as hilum_reach_mm and
    branch_min_mm more."""
    chain, node = [], hilum
    while node >= 0:
        chain.append(node)
        node = line.parent[node]
    chain.reverse()
    node = hilum
    reach = SETTINGS["hilum_reach_mm"] + SETTINGS["branch_min_mm"]
    while line.depth[node] - line.depth[hilum] < reach and line.size[node] > 1:
        node = max(line.children(node), key=lambda child: line.hepatic_length[child])
        chain.append(node)
    return chain


def _hilum(line: Centreline) -> int:
    """Where the tree enters the liver: the node with the most liver length below it and the most extrahepatic
    length above it."""
    extrahepatic = line.length - line.hepatic_length
    return int(np.argmax(line.hepatic_length + extrahepatic[0] - extrahepatic))


def _subtree_radius(line: Centreline, branch: int, start_mm: float) -> float:
    """Median radius of a subtree's first branch_min_mm beyond start_mm from its parent (NaN: shorter)."""
    nodes = np.arange(branch, branch + line.size[branch])
    along = line.depth[nodes] - line.depth[line.parent[branch]]
    near = (along > start_mm) & (along <= start_mm + SETTINGS["branch_min_mm"])
    return float(np.median(line.radius[nodes[near]])) if near.any() else np.nan


def _side_branches(line: Centreline, chain: list[int], at: int) -> list[int]:
    """The side branches at chain position `at` thick and long enough to be vessels of their own."""
    node = chain[at]
    depth = line.depth[chain]
    nearby = np.abs(depth - depth[at]) <= SETTINGS["branch_min_mm"]
    trunk_radius = float(np.median(line.radius[np.array(chain)[nearby]]))
    followed = chain[at + 1] if at + 1 < len(chain) else -1
    start = line.radius[node]
    return [
        child
        for child in line.children(node)
        if child != followed
        and line.length[child] - start >= SETTINGS["branch_min_mm"]
        and _subtree_radius(line, child, start) >= SETTINGS["branch_radius_ratio"] * trunk_radius
    ]


def main_trunk(line: Centreline) -> Trunk | None:
    """The main portal vein on the centreline (None where it cannot be identified)."""
    hilum = _hilum(line)
    if line.hepatic_length[hilum] < SETTINGS["branch_min_mm"]:
        return None
    chain = _chain(line, hilum)
    depth = line.depth[chain]
    at_hilum = chain.index(hilum)
    end = next(
        (
            at
            for at in range(len(chain))
            if abs(depth[at] - depth[at_hilum]) <= SETTINGS["hilum_reach_mm"]
            and any(
                line.hepatic_length[side] >= SETTINGS["hepatic_fraction"] * line.length[side]
                for side in _side_branches(line, chain, at)
            )
        ),
        None,
    )
    bifurcation = end is not None
    if end is None:
        end = at_hilum
    start = next((at for at in range(end - 1, 0, -1) if _side_branches(line, chain, at)), 0)
    trunk = Trunk(chain[start : end + 1], start > 0, bifurcation)
    if depth[end] - depth[start] < (SETTINGS["trunk_min_mm"] if trunk.confluence else SETTINGS["hepatic_window_mm"][1]):
        return None
    low, high = trunk.window_mm(line)
    along = depth[: end + 1] - depth[start]
    measured = (along >= low) & (along <= high)
    trunk_radius = np.median(line.radius[chain[: end + 1]][measured])
    beyond = depth[end + 1 :] - depth[end] - line.radius[chain[end]]
    onward = line.radius[chain[end + 1 :]][(beyond > 0) & (beyond <= SETTINGS["branch_min_mm"])]
    if not len(onward) or trunk_radius < SETTINGS["onward_radius_ratio"] * np.median(onward):
        return None  # what looks like the trunk is thinner than the vessel it leads into: a tributary
    upstream = chain[start] if trunk.confluence else chain[int(np.argmax(measured))]
    rise = line.points[chain[end]] - line.points[upstream]
    if rise[0] >= 0.0 or rise[2] <= 0.0:
        return None  # the trunk runs up (+z) and to the patient's right (−x) into the liver; this does not
    return trunk


def _direction(points: np.ndarray) -> np.ndarray:
    """Principal direction of a run of centreline points."""
    return np.linalg.svd(points - points.mean(axis=0), full_matrices=False)[2][0]


def cross_section_mm2(vessel: sitk.Image, centre: np.ndarray, direction: np.ndarray, half_width_mm: float) -> float:
    """Area of the vessel's cross-section through `centre` perpendicular to `direction` (NaN: the section misses
    the centre or reaches the edge of the square it is sampled on)."""
    axis = direction / np.linalg.norm(direction)
    helper = np.eye(3)[np.argmin(np.abs(axis))]
    u = np.cross(axis, helper)
    u /= np.linalg.norm(u)
    v = np.cross(axis, u)
    step = SETTINGS["plane_step_mm"]
    n = 2 * int(np.ceil(half_width_mm / step)) + 1
    plane = sitk.Image([n, n, 1], sitk.sitkFloat32)
    plane.SetSpacing((step, step, step))
    plane.SetDirection(tuple(float(a) for a in np.column_stack([u, v, axis]).ravel()))
    plane.SetOrigin(tuple(float(a) for a in centre - (n - 1) / 2.0 * step * (u + v)))
    inside = sitk.GetArrayFromImage(sitk.Resample(vessel, plane, sitk.Transform(), sitk.sitkLinear, 0.0))[0] >= 0.5
    components, _ = ndimage.label(inside)
    label = components[n // 2, n // 2]
    section = components == label
    if label == 0 or section[[0, -1]].any() or section[:, [0, -1]].any():
        return np.nan
    return float(section.sum()) * step * step


def trunk_diameter_mm(vessel: sitk.Image, line: Centreline, trunk: Trunk) -> float:
    """Main portal vein diameter: the median equivalent-circle diameter (2·√(area/π)) of cross-sections
    perpendicular to the centreline every sample_step_mm along the middle third of the trunk, or along
    hepatic_window_mm upstream of its hepatic end where no confluence was found (NaN: most sections fail)."""
    depth = line.depth[trunk.nodes] - line.depth[trunk.nodes[0]]
    low, high = trunk.window_mm(line)
    sections = []
    for target in np.linspace(low, high, max(3, int((high - low) / SETTINGS["sample_step_mm"]) + 1)):
        at = int(np.argmin(np.abs(depth - target)))
        node = trunk.nodes[at]
        run = line.points[trunk.nodes][np.abs(depth - depth[at]) <= SETTINGS["tangent_mm"]]
        half_width = max(15.0, 4.0 * float(line.radius[node]))
        sections.append(cross_section_mm2(vessel, line.points[node], _direction(run), half_width))
    areas = np.array(sections)
    if np.isfinite(areas).sum() * 2 <= len(areas):
        return np.nan
    return float(2.0 * np.sqrt(np.nanmedian(areas) / np.pi))


def portal_vein_measurements(labels: sitk.Image) -> PortalVein:
    """Main portal vein diameter and length, and the portal-vein label's volume, whole and outside the liver; with
    the trunk's hepatic end (the bifurcation, or where the trunk enters the liver) where the trunk is found."""
    array = sitk.GetArrayViewFromImage(labels)
    pv_array = array == ROI_LABELS["portal_vein"]
    if not pv_array.any():
        return PortalVein()
    volume_ml = float(pv_array.sum()) * float(np.prod(labels.GetSpacing())) / 1000.0
    if not (array == ROI_LABELS["liver"]).any() or max(labels.GetSpacing()) > SETTINGS["max_spacing_mm"]:
        return PortalVein(volume_ml=volume_ml)  # no liver, or a grid too coarse to tell the vein's course
    extrahepatic_share, line, found = _traced(labels, pv_array)
    extrahepatic_ml = volume_ml * extrahepatic_share
    if line is None or found is None:  # a trunk is only found on a centreline
        return PortalVein(volume_ml=volume_ml, extrahepatic_volume_ml=extrahepatic_ml)
    diameter = trunk_diameter_mm(_vessel_image(labels, pv_array), line, found)
    measured = np.isfinite(diameter) and found.confluence
    length = float(line.depth[found.nodes[-1]] - line.depth[found.nodes[0]]) if measured else np.nan
    z, y, x = map(float, line.points[found.nodes[-1]])
    return PortalVein(diameter, length, volume_ml, extrahepatic_ml, (z, y, x))


def _traced(labels: sitk.Image, pv_array: np.ndarray) -> tuple[float, Centreline | None, Trunk | None]:
    """The share of the portal-vein label outside the liver closed over its vessels, its centreline on a
    skeleton_mm grid, and the main trunk on it (None where not found)."""
    lower, upper = _physical_box(labels, pv_array)
    spacing = SETTINGS["skeleton_mm"]
    grid = _grid(lower - 2.0 * spacing, upper + 2.0 * spacing, spacing)
    vessel = _resampled(labels == ROI_LABELS["portal_vein"], grid, linear=True)
    hepatic = _resampled(_closed_liver(labels == ROI_LABELS["liver"], lower, upper), grid, linear=False)
    share = float((vessel & ~hepatic).sum()) / max(float(vessel.sum()), 1.0)
    line = centreline(_largest_component(vessel), hepatic, grid)
    return share, line, main_trunk(line) if line is not None else None


def _vessel_image(labels: sitk.Image, pv_array: np.ndarray) -> sitk.Image:
    """The portal-vein mask as a float image on the label grid, cropped to the vein and a few voxels around it."""
    index = np.argwhere(pv_array)
    low = np.maximum(index.min(axis=0) - 3, 0)[::-1]
    high = np.minimum(index.max(axis=0) + 4, pv_array.shape)[::-1]
    cropped = sitk.RegionOfInterest(labels, [int(n) for n in high - low], [int(i) for i in low])
    return sitk.Cast(cropped == ROI_LABELS["portal_vein"], sitk.sitkFloat32)
