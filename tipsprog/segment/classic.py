"""Training-free segmentation from anatomy: HU windows, morphology, watersheds and landmarks.

Liver and spleen (3 mm grid): the organs are searched above the pelvis (its iliac wings: landmarks.py), deeper than
the body wall and inside the rib cage's inner surface where ribs (and, without contrast, costal cartilages) are near
(the wall muscles touch the organs with no fat plane and, without contrast, have their HU); the liver's HU window
comes from a parenchyma core on the patient's right; organs of that window that touch are split by a watershed on
the depth map (organs touch through necks thinner than themselves); the liver is the largest basin on the right, the
spleen the highest large basin on the left and posterior. Vessels and lesions the parenchyma window leaves out are
filled back (closing, enclosed holes); what hangs below the liver no wider than a vein (the IVC, without contrast)
is left out, and the IVC's course on up through the liver. On the finer grid of the portal vein their borders are
moved out to the half-maximum edge between parenchyma and the tissue around it.

Portal vein (1.5 mm grid, contrast scans): the enhancing vessel tree that branches inside the liver and leaves it at
the hilum, cleared of bone, of the vertebral column's neighbourhood (aorta) and of thick blobs (kidneys, heart),
followed along the vessels up to a trunk's length outside the liver. Non-contrast scans get no portal vein.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from skimage.filters import threshold_otsu

from tipsprog.images import antialiased_resample
from tipsprog.segment.fascia import fascia_inside
from tipsprog.segment.landmarks import pelvis_top, slice_levels
from tipsprog.segment.morphology import depth_mm, dilated, eroded, largest
from tipsprog.store import ROI_LABELS

SETTINGS: dict[str, Any] = {
    "working_spacing_mm": 3.0,
    "refine_mm": 3.0,
    "median_voxels": 3,
    "body_hu": -400.0,
    "wall_mm": 15.0,
    "seed_window_hu": 40.0,
    "core_mm": 8.0,
    "window_robust_sd": 2.5,
    "min_half_window_hu": 25.0,
    "marker_depth_mm": 10.0,
    "opening_mm": 6.0,
    "lesion_closing_mm": 12.0,
    "lesion_min_hu": 0.0,
    "spleen_above_liver_hu": 30.0,
    "organ_min_class_share": 0.25,
    "spleen_min_marker_share": 0.25,
    "vessel_spacing_mm": 1.5,
    "vessel_above_liver_hu": 40.0,
    "vessel_max_above_liver_hu": 250.0,
    "vessel_rim_mm": 3.0,
    "vessel_background_mm": 6.0,
    "bone_hu": 350.0,
    "bone_margin_mm": 3.0,
    "spine_lateral_mm": 40.0,
    "spine_margin_mm": 20.0,
    "blob_radius_mm": 10.0,
    "blob_rim_mm": 4.0,
    "hepatic_margin_mm": 3.0,
    "portal_reach_mm": 100.0,
    "portal_min_radius_mm": 3.0,
    "portal_min_extrahepatic_ml": 1.0,
    "portal_min_intrahepatic_ml": 2.0,
    "vessel_box_margin_mm": 60.0,
    "vessel_max_spacing_mm": 3.5,
    "rib_hu": 250.0,
    "rib_blob_radius_mm": 6.0,
    "rib_max_depth_mm": 25.0,
    "rib_bins": 72,
    "rib_reach_deg": 15.0,
    "rib_reach_mm": 6.0,
    "diaphragm_mm": 3.0,
    "unenhanced_liver_max_hu": 80.0,
    "cartilage_min_hu": 70.0,
    "vein_max_cm2": 8.0,
    "vein_min_mm": 30.0,
}


def _body(hu: np.ndarray) -> np.ndarray:
    """Body outline: largest component above the air threshold, holes filled slice by slice."""
    body = largest(hu > SETTINGS["body_hu"])
    return np.stack([ndimage.binary_fill_holes(s) for s in body])


def _centroid_index(region: tuple[slice, ...], component: np.ndarray) -> np.ndarray:
    """Centroid of a component in full-array voxel indices (z, y, x)."""
    return np.array(ndimage.center_of_mass(component)) + np.array([s.start for s in region])


def _inside_rib_cage(hu: np.ndarray, cartilage: np.ndarray, body: np.ndarray, spacing: np.ndarray, mid_x: float) -> np.ndarray:
    """What lies inside the rib cage's inner surface less DIAPHRAGM_MM: the liver and spleen lie under the
    diaphragm, which lines the ribs and costal cartilages, and the intercostal and outer wall muscles that touch
    them with no fat plane lie outside it. True where no rib is near (below the costal margin).

    Ribs: voxels above RIB_HU (bone; brighter than enhanced blood on a 3 mm grid) or in the cartilage mask (the
    costal cartilages, brighter than the parenchyma without contrast: _cartilage) away from the vertebral column
    (found about the body's midline, column index mid_x) and from thick bright blobs (kidneys, vessels: deeper than
    RIB_BLOB_RADIUS_MM), at most RIB_MAX_DEPTH_MM inside the fascia along rays from each slice's body centre (the
    wall muscles outside the ribs are thinner than that; an enhancing vessel or kidney deeper in is no rib). The
    cage's inner radius at each angle is the median of the innermost ribs' radii within RIB_REACH_DEG and
    RIB_REACH_MM above and below, where a rib lies at that angle or on both sides of it: ribs run obliquely, so an
    axial slice cuts them at a few angles with the intercostal spaces between, and past the lowest ribs' ends
    nothing is cut."""
    bright = ((hu > SETTINGS["rib_hu"]) | cartilage) & body
    depth = depth_mm(bright, spacing)
    blob_radius = SETTINGS["rib_blob_radius_mm"]
    blobs = ndimage.binary_propagation(depth > blob_radius, mask=bright & (depth > 0.5 * blob_radius))
    _, column = _vertebral_column(hu, spacing, mid_x)
    ribs = bright & ~dilated(blobs | column, spacing.max(), spacing)
    z, radius, angle = _polar(body, spacing)
    enclosed = fascia_inside(hu, spacing[1:])[2] & body
    fascia_radius = np.zeros((len(hu), SETTINGS["rib_bins"]))
    np.maximum.at(fascia_radius, (z[enclosed], angle[enclosed]), radius[enclosed])
    ribs &= radius >= fascia_radius[z, angle] - SETTINGS["rib_max_depth_mm"]
    innermost = np.full(fascia_radius.shape, np.inf)
    np.minimum.at(innermost, (z[ribs], angle[ribs]), radius[ribs])
    cage = _nearby_median(np.where(np.isfinite(innermost), innermost, np.nan), spacing[0])
    return ~(radius > cage[z, angle] - SETTINGS["diaphragm_mm"])  # NaN (no rib near): inside


def _cartilage(smooth: np.ndarray, inside_wall: np.ndarray, spacing: np.ndarray, mid_x: float) -> np.ndarray:
    """On an unenhanced scan, tissue brighter than the liver parenchyma's window (found inside the body wall,
    _liver_seed) and than CARTILAGE_MIN_HU (unenhanced muscle, spleen and blood read under it, and a fatty liver's
    window lies under them): the costal cartilages (about 80-130 HU; they do not enhance), which carry the rib cage
    in front of the ribs' ends, and bone. Empty on an enhanced scan (liver median UNENHANCED_LIVER_MAX_HU or more:
    about 55 HU unenhanced, 90-130 portal venous): there the spleen and vessels may outshine the liver and the
    parenchyma reads like the cartilages."""
    seed = _liver_seed(smooth, inside_wall, spacing, mid_x)
    if not seed.any():
        return seed
    centre, half = _parenchyma_window(smooth, seed)
    if centre >= SETTINGS["unenhanced_liver_max_hu"]:
        return np.zeros_like(seed)
    return smooth > max(centre + half, SETTINGS["cartilage_min_hu"])


def _polar(body: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slice index, in-plane radius (mm) and angular bin of every voxel about its slice's body centre (RIB_BINS bins:
    5°, about a rib's width at the cage's radius)."""
    grid = np.indices(body.shape)
    z, y, x = grid[0], grid[1], grid[2]
    centres = np.array([ndimage.center_of_mass(plane) if plane.any() else (0.0, 0.0) for plane in body])
    dy, dx = (y - centres[:, 0, None, None]) * spacing[1], (x - centres[:, 1, None, None]) * spacing[2]
    bins = SETTINGS["rib_bins"]
    return z, np.hypot(dy, dx), ((np.arctan2(dy, dx) + np.pi) / (2 * np.pi) * bins).astype(int) % bins


def _nearby_median(radii: np.ndarray, slice_mm: float) -> np.ndarray:
    """Median of the (slice, angular bin) radii within RIB_REACH_DEG and RIB_REACH_MM, where a rib is known at the
    bin's own angle or on both sides of it (between ribs, not beyond a rib's end); NaN elsewhere."""
    reach_bins = int(round(SETTINGS["rib_reach_deg"] / 360.0 * radii.shape[1]))
    reach_slices = int(round(SETTINGS["rib_reach_mm"] / slice_mm))
    padded = np.pad(radii, ((reach_slices, reach_slices), (0, 0)), constant_values=np.nan)
    near = np.stack(
        [
            np.stack(
                [
                    np.roll(padded[reach_slices + dz : reach_slices + dz + len(radii)], shift, axis=1)
                    for dz in range(-reach_slices, reach_slices + 1)
                ]
            )
            for shift in range(-reach_bins, reach_bins + 1)
        ]
    )  # (angular shift, slice offset, slice, bin)
    seen = np.isfinite(near).any(axis=1)
    known = seen[reach_bins] | (seen[:reach_bins].any(axis=0) & seen[reach_bins + 1 :].any(axis=0))
    median = np.full(radii.shape, np.nan)
    median[known] = np.nanmedian(near.reshape(-1, *radii.shape)[:, known], axis=0)
    return median


def _liver_seed(smooth: np.ndarray, deep: np.ndarray, spacing: np.ndarray, mid_x: float) -> np.ndarray:
    """A core of liver parenchyma: the largest thick soft-tissue region in the patient's right half (a body wall
    thick enough to survive the erosion is cut by the midline into smaller arcs), narrowed to the voxels within
    SEED_WINDOW of its median HU (which drops fat, bone, air and enhancing vessels)."""
    core = eroded(deep & (smooth > -30) & (smooth < 250), SETTINGS["core_mm"], spacing)
    core[..., int(mid_x) :] = False
    seed = largest(core)
    if not seed.any():
        return seed
    window = deep & (np.abs(smooth - np.median(smooth[seed])) < SETTINGS["seed_window_hu"])
    return largest(eroded(window, SETTINGS["core_mm"], spacing) & dilated(seed, 1.0, spacing))


def _parenchyma_window(smooth: np.ndarray, seed: np.ndarray) -> tuple[float, float]:
    """Centre and half-width (HU) of an organ's parenchyma: median ± WINDOW_ROBUST_SD robust SDs (MAD), at least
    MIN_HALF_WINDOW (the noise of a 3 mm median-filtered grid)."""
    values = smooth[seed]
    centre = float(np.median(values))
    robust_sd = 1.4826 * float(np.median(np.abs(values - centre)))
    return centre, max(SETTINGS["window_robust_sd"] * robust_sd, SETTINGS["min_half_window_hu"])


def _organ_basins(candidate: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, list[tuple[slice, ...]]]:
    """Split organs of one HU window where they touch: every region deeper than MARKER_DEPTH inside the window is a
    marker, and a watershed on the depth map gives each window voxel to the marker it is deepest-connected to
    (organs touch through necks thinner than the organs). Returns the basin labels and each marker's bounding box."""
    depth = depth_mm(candidate, spacing)
    markers, count = ndimage.label(depth > SETTINGS["marker_depth_mm"])
    regions = ndimage.find_objects(markers)
    markers[~candidate] = count + 1  # outside the window: its own basin
    basins = sitk.MorphologicalWatershedFromMarkers(
        sitk.GetImageFromArray(-depth), sitk.GetImageFromArray(markers.astype(np.uint32)), False, False
    )
    return sitk.GetArrayFromImage(basins) * candidate, regions


def _markers(basins: np.ndarray, regions: list[tuple[slice, ...]], keep) -> list[tuple[int, int, np.ndarray]]:
    """(label, size in voxels, centroid z, y, x) of each marker whose centroid satisfies keep."""
    found = []
    for label, region in enumerate(regions, start=1):
        component = basins[region] == label
        centroid = _centroid_index(region, component)
        if keep(centroid):
            found.append((label, int(component.sum()), centroid))
    return found


def _largest_marker(basins: np.ndarray, regions: list[tuple[slice, ...]], keep) -> int:
    """Label of the largest marker whose centroid (z, y, x) satisfies keep, 0 if none does."""
    found = _markers(basins, regions, keep)
    return max(found, key=lambda marker: marker[1])[0] if found else 0


def _opened(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """The largest component of the mask less what a ball of OPENING_MM cannot reach (thin attachments: body
    wall, vessels, bowel touching the organ)."""
    radius = SETTINGS["opening_mm"]
    return largest(dilated(eroded(mask, radius, spacing), radius + 0.5 * spacing.max(), spacing) & mask)


def _filled(mask: np.ndarray) -> np.ndarray:
    """The mask with what it encloses (vessels, lesions) in each axial slice (a closing would also fill the hilum,
    the IVC's groove and the gallbladder fossa: what opens onto the surface is _enclosed_tissue's job)."""
    return np.stack([ndimage.binary_fill_holes(plane) for plane in mask])


def _enclosed_tissue(organ: np.ndarray, smooth: np.ndarray, deep: np.ndarray, max_hu: float, spacing: np.ndarray) -> np.ndarray:
    """Soft tissue no brighter than the organ that a closing by LESION_CLOSING_MM adds to it: lesions darker than
    the parenchyma (tumours, cysts, fibrosis) that open onto the organ's surface, which fill_holes cannot reach."""
    radius = SETTINGS["lesion_closing_mm"]
    closed = eroded(dilated(organ, radius, spacing), radius, spacing)
    return closed & deep & ~organ & (smooth > SETTINGS["lesion_min_hu"]) & (smooth < max_hu)


def _liver_and_spleen(
    smooth: np.ndarray, deep: np.ndarray, spacing: np.ndarray, mid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Liver and spleen: the liver's HU window split into organ basins; the liver is the largest basin centred on
    the patient's right, grown back over its vessels and lesions; the spleen as _spleen finds it."""
    seed = _liver_seed(smooth, deep, spacing, mid[2])
    if not seed.any():
        return seed, seed
    centre, half = _parenchyma_window(smooth, seed)
    candidate = deep & (np.abs(smooth - centre) < half)
    basins, regions = _organ_basins(candidate, spacing)
    liver_label = _largest_marker(basins, regions, lambda zyx: zyx[2] < mid[2])
    liver = _filled(_opened(basins == liver_label, spacing))
    liver |= _enclosed_tissue(liver, smooth, deep, centre + half, spacing)
    liver = _without_hanging_veins(liver, spacing)
    return liver, _spleen(smooth, deep & ~dilated(liver, spacing.max(), spacing), centre, half, liver, spacing, mid)


def _without_hanging_veins(organ: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """The organ less the branches hanging below its widest axial slice that are no wider than a vein all along
    (VEIN_MAX_CM2: the IVC is at most about 30 mm across) for at least VEIN_MIN_MM, and less the widest such vein's
    course on up through the organ: without contrast the IVC has the liver's HU, joins it at the caudate lobe and
    runs up through it to the diaphragm (its cross-section where it joins is carried straight up), while a lobe's
    tip leaves the liver wide and narrows. A branch is a run of axial pieces each overlapping one piece above it and
    nothing else below that one; where pieces split or merge, new branches start (and go with their parents where
    those all go)."""
    if not organ.any():
        return organ
    pixel_cm2 = float(spacing[1] * spacing[2]) / 100.0
    widest = int(np.argmax(organ.sum(axis=(1, 2))))
    above = ndimage.label(organ[widest])[0]
    above_branch = np.zeros(above.max() + 1, int)  # branch 0: the organ's body
    widest_cm2: list[float] = [np.inf]  # per branch: its widest piece, its slices, the branches it hangs from
    slices: list[int] = [0]
    parents: list[set[int]] = [set()]
    tops: list[tuple[int, np.ndarray]] = [(widest, organ[widest])]  # per branch: its top slice and cross-section
    branches_below: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for z in range(widest - 1, -1, -1):
        pieces, count = ndimage.label(organ[z])
        piece_cm2 = np.bincount(pieces.ravel(), minlength=count + 1) * pixel_cm2
        touching = (pieces > 0) & (above > 0)
        links = np.unique(np.stack([pieces[touching], above[touching]]), axis=1).T  # (piece, piece above) pairs
        branch_of = np.full(count + 1, -1)
        for piece in range(1, count + 1):
            ups = links[links[:, 0] == piece, 1]
            if not len(ups):
                continue  # joins the organ below this slice only: left as it is
            if len(ups) == 1 and (links[:, 1] == ups[0]).sum() == 1:
                branch = above_branch[ups[0]]
            else:
                branch = len(widest_cm2)
                widest_cm2.append(0.0)
                slices.append(0)
                parents.append({int(above_branch[up]) for up in ups})
                tops.append((z, pieces == piece))
            branch_of[piece] = branch
            widest_cm2[branch] = max(widest_cm2[branch], float(piece_cm2[piece]))
            slices[branch] += 1
        branches_below[z] = (pieces, branch_of)
        above, above_branch = np.where(branch_of[pieces] >= 0, pieces, 0), np.maximum(branch_of, 0)
    removed = np.zeros(len(widest_cm2), bool)
    joining_veins = []  # veins hanging from what is kept
    for branch in range(1, len(widest_cm2)):  # a branch comes after its parents
        vein = widest_cm2[branch] <= SETTINGS["vein_max_cm2"] and slices[branch] * spacing[0] >= SETTINGS["vein_min_mm"]
        if vein and not all(removed[parent] for parent in parents[branch]):
            joining_veins.append(branch)
        removed[branch] = vein or all(removed[parent] for parent in parents[branch])
    kept = organ.copy()
    for z, (pieces, branch_of) in branches_below.items():
        kept[z] &= ((branch_of < 0) | ~removed[np.maximum(branch_of, 0)])[pieces]
    if joining_veins:
        top, cross_section = tops[max(joining_veins, key=lambda branch: widest_cm2[branch])]
        kept[top + 1 :] &= ~cross_section
    return kept


def _nearest_hu_class(region: np.ndarray, smooth: np.ndarray, target_hu: float, separation_hu: float) -> np.ndarray:
    """The part of a region on target_hu's side of its Otsu threshold, where the two HU classes differ by more than
    separation_hu (an organ basin holding two organs: spleen and kidney); the whole region otherwise."""
    values = smooth[region]
    threshold = threshold_otsu(values)
    low, high = values[values <= threshold], values[values > threshold]
    if not len(low) or not len(high) or np.median(high) - np.median(low) <= separation_hu:
        return region
    keep_high = abs(np.median(high) - target_hu) < abs(np.median(low) - target_hu)
    if min(len(low), len(high)) < SETTINGS["organ_min_class_share"] * len(values):
        keep_high = len(high) > len(low)  # one class is a rim (partial volume), not a second organ
    return region & ((smooth > threshold) if keep_high else (smooth <= threshold))


def _spleen(
    smooth: np.ndarray,
    allowed: np.ndarray,
    liver_hu: float,
    liver_half: float,
    liver: np.ndarray,
    spacing: np.ndarray,
    mid: np.ndarray,
) -> np.ndarray:
    """Spleen: of the organ basins centred on the patient's left and posterior at the liver's levels and at least
    SPLEEN_MIN_MARKER_SHARE of the largest, the highest (the kidney lies below the spleen), in a window from the
    liver's lower bound to SPLEEN_ABOVE_LIVER_HU above its upper one (the spleen enhances as much as the liver or
    more), trimmed to its own parenchyma window."""
    candidate = allowed & (smooth > liver_hu - liver_half) & (smooth < liver_hu + liver_half + SETTINGS["spleen_above_liver_hu"])
    basins, regions = _organ_basins(candidate, spacing)
    levels = np.flatnonzero(liver.any(axis=(1, 2)))
    found = _markers(
        basins,
        regions,
        lambda zyx: zyx[2] > mid[2] and zyx[1] > mid[1] - 0.1 * len(smooth[0]) and levels[0] <= zyx[0] <= levels[-1],
    )
    if not found:
        return np.zeros_like(liver)
    largest = max(size for _, size, _ in found)
    label = max(
        (marker for marker in found if marker[1] >= SETTINGS["spleen_min_marker_share"] * largest),
        key=lambda marker: marker[2][0],
    )[0]  # the highest: the kidney lies below the spleen
    basin = basins == label
    centre, half = _parenchyma_window(smooth, _nearest_hu_class(basin, smooth, liver_hu, liver_half))
    return _filled(_opened(basin & (np.abs(smooth - centre) < half), spacing)) & allowed


def _vertebral_column(hu: np.ndarray, spacing: np.ndarray, body_mid_x: float) -> tuple[np.ndarray, np.ndarray]:
    """Bone (cortex with the marrow it encloses, slice by slice) and the vertebral column: the largest bone
    component within SPINE_LATERAL_MM of the body's midline (column index body_mid_x)."""
    bone = np.stack([ndimage.binary_fill_holes(plane) for plane in hu > SETTINGS["bone_hu"]])
    lateral_mm = np.abs(np.arange(hu.shape[2]) - body_mid_x) * spacing[2]
    return bone, largest(bone & (lateral_mm < SETTINGS["spine_lateral_mm"])[None, None, :])


def _portal_venous_system(hu: np.ndarray, liver: np.ndarray, spacing: np.ndarray, body_mid_x: float) -> np.ndarray:
    """Portal vein on a contrast CT (a ~1.5 mm grid): the enhancing vessels that branch inside the liver and leave
    it at the hilum, followed up to PORTAL_REACH_MM outside it (trunk, confluence, first centimetres of the splenic
    and mesenteric veins). Empty where no such vessel tree is brighter than the liver (a non-contrast scan).

    Enhancing voxels (VESSEL_ABOVE_LIVER_HU over the liver's median) are kept away from bone, from the vertebral
    column's neighbourhood (the aorta and the crura lie against it) and from thick blobs (kidneys, heart, aorta:
    deeper than BLOB_RADIUS_MM); of the vessel components, the portal system is the one with most voxels inside
    the liver, grown out to its wall (_to_half_maximum), and its extrahepatic part is what lies within
    PORTAL_REACH_MM of the liver along the vessels. It is kept only if it branches inside the liver
    (PORTAL_MIN_INTRAHEPATIC_ML) and leaves it as a trunk (at least PORTAL_MIN_EXTRAHEPATIC_ML, PORTAL_MIN_RADIUS_MM
    thick)."""
    liver_hu = float(np.median(hu[liver]))
    bright = (hu > liver_hu + SETTINGS["vessel_above_liver_hu"]) & (hu < liver_hu + SETTINGS["vessel_max_above_liver_hu"])
    bone, column = _vertebral_column(hu, spacing, body_mid_x)
    levels = np.flatnonzero(liver.any(axis=(1, 2)))
    bright[: levels[0]], bright[levels[-1] + 1 :] = False, False
    allowed = ~dilated(bone, SETTINGS["bone_margin_mm"], spacing) & ~dilated(column, SETTINGS["spine_margin_mm"], spacing)
    depth = depth_mm(bright & allowed, spacing)
    blobs = ndimage.binary_propagation(
        depth > SETTINGS["blob_radius_mm"], mask=bright & allowed & (depth > SETTINGS["blob_rim_mm"])
    )
    allowed &= ~dilated(blobs, SETTINGS["bone_margin_mm"], spacing)
    inside = eroded(liver, SETTINGS["hepatic_margin_mm"], spacing)
    components, count = ndimage.label(bright & allowed)
    if count == 0 or not (components & inside).any():
        return np.zeros_like(liver)
    system = components == np.argmax(np.bincount(components[inside], minlength=count + 1)[1:]) + 1
    system = _to_half_maximum(system, hu, liver_hu, allowed, spacing)
    reach = _along_vessels_mm(system, system & inside, spacing)
    portal = system & (reach <= SETTINGS["portal_reach_mm"])
    outside = portal & ~dilated(liver, SETTINGS["hepatic_margin_mm"], spacing)
    thick = depth_mm(portal, spacing)[outside].max(initial=0.0)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    tree = (portal & inside).sum() * voxel_ml >= SETTINGS["portal_min_intrahepatic_ml"]
    trunk = outside.sum() * voxel_ml >= SETTINGS["portal_min_extrahepatic_ml"] and thick >= SETTINGS["portal_min_radius_mm"]
    return portal if tree and trunk else np.zeros_like(liver)


def _to_half_maximum(
    vessels: np.ndarray, hu: np.ndarray, liver_hu: float, allowed: np.ndarray, spacing: np.ndarray
) -> np.ndarray:
    """Vessels found above a fixed enhancement grown out to their wall, where the HU is half-way from the tissue
    around them to their median lumen HU (full width at half maximum: a fixed threshold cuts a faint or blurred
    vessel inside its wall, most of all one running in fat), through allowed voxels within VESSEL_RIM_MM of them."""
    box = _grown_box(vessels, 2.0 * SETTINGS["vessel_rim_mm"] + 3.0 * SETTINGS["vessel_background_mm"], spacing)
    core, image = vessels[box], hu[box]
    near = dilated(core, SETTINGS["vessel_rim_mm"], spacing)
    edge_hu = 0.5 * (float(np.median(image[core])) + _surrounding_hu(image, ~near, spacing, SETTINGS["vessel_background_mm"]))
    rim = near & allowed[box] & (image > edge_hu) & (image < liver_hu + SETTINGS["vessel_max_above_liver_hu"])
    grown = vessels.copy()
    grown[box] = ndimage.binary_propagation(core, mask=core | rim)
    return grown


def _surrounding_hu(hu: np.ndarray, tissue: np.ndarray, spacing: np.ndarray, scale_mm: float) -> np.ndarray:
    """The mean HU of the tissue voxels around every voxel (Gaussian-weighted, σ scale_mm)."""
    sigma = scale_mm / spacing
    weight = ndimage.gaussian_filter(tissue.astype(np.float32), sigma)
    total = ndimage.gaussian_filter(np.where(tissue, hu, 0.0).astype(np.float32), sigma)
    return total / np.maximum(weight, 1e-3)


def _along_vessels_mm(region: np.ndarray, start: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Geodesic distance (mm) inside a region from a start set (fast marching at unit speed; inf where unreached)."""
    speed = sitk.GetImageFromArray(region.astype(np.float32) + 1e-6)
    speed.SetSpacing(tuple(float(v) for v in spacing[::-1]))
    marching = sitk.FastMarchingImageFilter()
    for z, y, x in np.argwhere(start):
        marching.AddTrialPoint((int(x), int(y), int(z), 0))
    marching.SetStoppingValue(2.0 * SETTINGS["portal_reach_mm"])
    arrival = sitk.GetArrayFromImage(marching.Execute(speed))
    return np.where(region & (arrival < 2.0 * SETTINGS["portal_reach_mm"]), arrival, np.inf)


def segment_classic(ct: sitk.Image) -> sitk.Image:
    """Label liver (1), spleen (2) and portal vein (3) on a canonical LPS CT.

    Liver and spleen are segmented on a grid no finer than 3 mm per axis and the portal vein on one no finer than
    1.5 mm around the liver, so inputs sampled finer than that all give (nearly) the same result; labels are
    mapped back onto the input grid.
    """
    fine = _no_finer_than(ct, SETTINGS["vessel_spacing_mm"])
    working = _no_finer_than(fine, SETTINGS["working_spacing_mm"])
    fine_hu = _median_hu(fine)
    organs = sitk.GetImageFromArray(_label_array(fine_hu if working is fine else _median_hu(working), working))
    organs.CopyInformation(working)
    organs = _refined_organs(fine, fine_hu, organs)
    labels = upsampled_labels(organs, ct)
    portal = _portal_vein(fine, fine_hu, organs)
    if portal is not None:
        array = sitk.GetArrayFromImage(labels)
        array[sitk.GetArrayFromImage(upsampled_labels(portal, ct)) == ROI_LABELS["portal_vein"]] = ROI_LABELS["portal_vein"]
        labels = sitk.GetImageFromArray(array)
        labels.CopyInformation(ct)
    return labels


def _no_finer_than(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """The image resampled (antialiased) so that no axis is finer than spacing_mm; unchanged where none is."""
    spacing = tuple(max(s, spacing_mm) for s in image.GetSpacing())
    return antialiased_resample(image, spacing, -1024.0) if spacing != image.GetSpacing() else image


def _refined_organs(fine: sitk.Image, fine_hu: np.ndarray, organs: sitk.Image) -> sitk.Image:
    """Liver and spleen on the fine grid, their borders moved by up to REFINE_MM into unlabelled voxels out to their
    half-maximum edge: brighter than half-way from the tissue around them within that reach (Gaussian-weighted, gas
    left out) to their parenchyma, and no brighter than its window (what the opening, the body-wall margin and, on a
    thin-slice scan, the 3 mm grid's partial volume left out; a border at the parenchyma window's floor cut a blurred
    organ about 2 mm inside its edge)."""
    labels = sitk.GetArrayFromImage(upsampled_labels(organs, fine))
    spacing = np.array(fine.GetSpacing()[::-1])
    refined = labels.copy()
    for label in (ROI_LABELS["liver"], ROI_LABELS["spleen"]):
        if not (labels == label).any():
            continue
        box = _grown_box(labels == label, SETTINGS["refine_mm"], spacing)
        organ, hu = labels[box] == label, fine_hu[box]
        core = eroded(organ, SETTINGS["opening_mm"], spacing)
        centre, half = _parenchyma_window(hu, core if core.any() else organ)
        near = dilated(organ, SETTINGS["refine_mm"], spacing)
        edge = 0.5 * (centre + _surrounding_hu(hu, ~near & (hu > SETTINGS["body_hu"]), spacing, SETTINGS["refine_mm"]))
        border = near & (labels[box] == 0) & (hu > edge) & (hu < centre + half)
        grown = ndimage.binary_propagation(organ, mask=organ | border)
        refined[box][grown & (refined[box] == 0)] = label
    image = sitk.GetImageFromArray(refined)
    image.CopyInformation(fine)
    return image


def _grown_box(mask: np.ndarray, margin_mm: float, spacing: np.ndarray) -> tuple[slice, ...]:
    """The mask's bounding box grown by margin_mm (one voxel more) on each side, within the array."""
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    return tuple(
        slice(max(0, r.start - int(margin_mm / s) - 1), min(n, r.stop + int(margin_mm / s) + 1))
        for r, n, s in zip(box, mask.shape, spacing)
    )


def _portal_vein(fine: sitk.Image, fine_hu: np.ndarray, organs: sitk.Image) -> sitk.Image | None:
    """The portal vein label (3) on the fine grid around the liver (VESSEL_BOX_MARGIN_MM in plane, the liver's
    levels), or None where there is no liver or the scan is coarser than VESSEL_MAX_SPACING_MM."""
    if max(fine.GetSpacing()) > SETTINGS["vessel_max_spacing_mm"]:
        return None  # a 10-15 mm vein spans two voxels: its tree cannot be told from noise
    liver = sitk.GetArrayFromImage(upsampled_labels(organs, fine)) == ROI_LABELS["liver"]
    if not liver.any():
        return None
    margin = [int(SETTINGS["vessel_box_margin_mm"] / s) for s in fine.GetSpacing()[:2]] + [0]
    box = ndimage.find_objects(liver.astype(np.uint8))[0]
    box = tuple(slice(max(0, r.start - m), min(n, r.stop + m)) for r, n, m in zip(box, liver.shape, margin[::-1]))
    region = fine[box[::-1]]
    body_mid_x = ndimage.center_of_mass(fine_hu > SETTINGS["body_hu"])[2] - box[2].start
    portal = _portal_venous_system(fine_hu[box], liver[box], np.array(region.GetSpacing()[::-1]), body_mid_x)
    image = sitk.GetImageFromArray(portal.astype(np.uint8) * ROI_LABELS["portal_vein"])
    image.CopyInformation(region)
    return image


def upsampled_labels(labels: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """Labels of a coarse grid on a finer one with smooth boundaries: each ROI's mask is interpolated linearly (over
    its bounding box) and every voxel takes the ROI whose interpolated mask exceeds one half the most (nearest
    neighbour would leave the coarse grid's steps: 2 points of liver Dice on a 0.6 mm scan)."""
    if labels.GetSpacing() == reference.GetSpacing() and labels.GetSize() == reference.GetSize():
        return sitk.Cast(labels, sitk.sitkUInt8)
    coarse = sitk.GetArrayFromImage(labels)
    shape = sitk.GetArrayViewFromImage(reference).shape
    best, fine = np.full(shape, 0.5, np.float32), np.zeros(shape, np.uint8)
    for label in ROI_LABELS.values():
        if not (coarse == label).any():
            continue
        box = _box_on(reference, labels, ndimage.find_objects((coarse == label).astype(np.uint8))[0])
        mask = sitk.Cast(labels == label, sitk.sitkFloat32)
        share = sitk.GetArrayFromImage(sitk.Resample(mask, reference[box[::-1]], sitk.Transform(), sitk.sitkLinear, 0.0))
        wins = share > best[box]
        fine[box][wins] = label
        best[box] = np.maximum(best[box], share)
    image = sitk.GetImageFromArray(fine)
    image.CopyInformation(reference)
    return image


def _box_on(reference: sitk.Image, source: sitk.Image, box: tuple[slice, ...]) -> tuple[slice, ...]:
    """A (z, y, x) index box of the source grid, grown by one source voxel, as a box of the reference grid."""
    corners = [
        source.TransformContinuousIndexToPhysicalPoint(
            [float(b.start - 1 if bit == 0 else b.stop) for b, bit in zip(box[::-1], bits)]
        )
        for bits in np.ndindex(2, 2, 2)
    ]
    indices = np.array([reference.TransformPhysicalPointToContinuousIndex(c) for c in corners])
    low = np.clip(np.floor(indices.min(axis=0)).astype(int), 0, reference.GetSize())
    high = np.clip(np.ceil(indices.max(axis=0)).astype(int) + 1, 0, reference.GetSize())
    return tuple(slice(int(a), int(b)) for a, b in zip(low[::-1], high[::-1]))


def _median_hu(ct: sitk.Image) -> np.ndarray:
    """The CT's HU array (z, y, x) after a MEDIAN_VOXELS median filter."""
    radius = SETTINGS["median_voxels"] // 2
    return sitk.GetArrayFromImage(sitk.Median(sitk.Cast(ct, sitk.sitkFloat32), [radius] * 3))


def _label_array(smooth: np.ndarray, ct: sitk.Image) -> np.ndarray:
    """Liver and spleen labels of a CT on its own grid, from its median-filtered HU array."""
    hu = sitk.GetArrayFromImage(ct).astype(np.float32)
    spacing = np.array(ct.GetSpacing()[::-1])
    body = _body(smooth)
    labels = np.zeros(smooth.shape, dtype=np.uint8)
    top = pelvis_top(slice_levels(smooth, spacing)[0], float(spacing[0]))
    if top is not None:
        body[: top + 1] = False  # the liver and spleen lie above the pelvis
    if body.any():
        mid = np.array(ndimage.center_of_mass(body))
        inside_wall = eroded(body, SETTINGS["wall_mm"], spacing)
        cartilage = _cartilage(smooth, inside_wall, spacing, mid[2])
        deep = inside_wall & _inside_rib_cage(hu, cartilage, body, spacing, mid[2])
        liver, spleen = _liver_and_spleen(smooth, deep, spacing, mid)
        labels[liver] = ROI_LABELS["liver"]
        labels[spleen & ~liver] = ROI_LABELS["spleen"]
    return labels
