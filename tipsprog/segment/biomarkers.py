"""Imaging biomarkers of a segmented CT, as the cirrhosis and TIPS literature reports them: body composition at L3,
ascites, liver and spleen size and liver surface, portal-vein calibre (the store's feature block `biomarkers`).

Body composition follows the Alberta protocol: on the axial slices within SLAB_MM of the middle of L3
(vertebrae.py), skeletal muscle is tissue of MUSCLE_HU, fat of FAT_HU; subcutaneous fat and the fascia inside it are
fascia.py's; muscle is what of MUSCLE_HU is (a) reached from the fascia through muscle within WALL_MM (the
abdominal wall) or (b) in the boxes where the posterior muscles lie relative to the spinal canal's front
(vertebrae.py): paraspinal muscles behind it, psoas beside the vertebral body, quadratus lumborum behind the kidney;
never the spinal canal, the liver or the spleen. Visceral fat is the fat inside the fascia in front of the canal,
outside those boxes. Where L3 is out of view the nearest named lumbar level in view is used and the flag
`muscle:at_<level>` says so; without a named level there is no measurement (`muscle:no_vertebral_level`).

Ascites, on the CT averaged to about FLUID_GRID_MM (the spine and pelvis are found on the coarser grid of
vertebrae.py): free fluid (FLUID_HU, shifted by the scan's water offset read from the air around the body) inside the
fascia, RETROPERITONEUM_MM in front of the spinal canal (the kidneys and an old patient's paraspinal muscles can be
as dark), outside liver and spleen and above the pelvis (the bladder). It is grown, through fluid whose whole voxel
neighbourhood is fluid (a fat/soft-tissue border averages into the fluid window too, one voxel thin), from the fluid
that lies within WALL_REACH_MM of the fascia (the wall muscle and its fat lining) and LINING_MM of the liver's or
spleen's capsule (ascites collects first around the liver and spleen, between them and the wall; bowel lies inside
them). Layers too thin for such a core (one or two voxels: a 5 mm layer at 2 mm voxels) are grown from the same
seeds through fluid that fills at least SHEET_SHARE of its 3 × 3 × 3 neighbourhood (a two-voxel layer fills 2/3 of
it, a one-voxel border 1/3), except the pieces that reach the fascia: a thin, fatty wall muscle between the
subcutaneous and the properitoneal fat reads as such a layer, and ascites lies inside the wall. The fluid found is
given back its one-voxel rim. Pieces smaller than MIN_FLUID_ML, with more than BOWEL_GAS_SHARE of their
voxels within LINING_MM of gas (fluid under gas is in the bowel; a layer of ascites touches the lung bases over a
small part of it) or compact (a gallbladder, a cyst: filling more than COMPACT_FILL of their convex hull) are not
ascites. Without contrast (a liver under UNENHANCED_LIVER_HU) the bowel's fluid content reads as fluid too and
nothing here tells it from ascites: the flag `ascites:unenhanced` says so.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from tipsprog.manifest import BlockEntry
from tipsprog.segment.acquisition import air_offset_hu, roi_median_hu
from tipsprog.segment.fascia import FAT_HU, SKIN_MM, fascia_inside
from tipsprog.segment.landmarks import pelvis_top, slice_levels
from tipsprog.segment.morphology import depth_mm, dilated, eroded
from tipsprog.segment.portal import PortalVein
from tipsprog.segment.vertebrae import VertebralLevels, canal_front_rows, shrunk, vertebral_levels
from tipsprog.store import ROI_LABELS, FeatureBlock

MUSCLE_HU, FLUID_HU = (-29.0, 150.0), (-15.0, 25.0)
GAS_HU = -400.0
MAX_OFFSET_HU = 30.0
SLAB_MM = 5.0
WALL_MM = 20.0
POSTERIOR_MUSCLE_BOXES_MM = (
    ((-90.0, 0.0), (0.0, 80.0)),  # (mm ahead of the canal's front, mm from the midline):
    ((0.0, 45.0), (18.0, 60.0)),  # paraspinal muscles; psoas beside the vertebral body;
    ((-10.0, 15.0), (0.0, 90.0)),
)  # quadratus lumborum behind the kidney
CANAL_DEPTH_MM, CANAL_HALF_WIDTH_MM = 20.0, 12.0
RETROPERITONEUM_MM = 30.0
WALL_REACH_MM = 25.0
FLUID_GRID_MM = 2.0
MIN_FLUID_ML, LINING_MM, COMPACT_FILL, COMPACT_MAX_ML, BOWEL_GAS_SHARE = 2.0, 6.0, 0.7, 300.0, 0.2
SHEET_SHARE = 0.5
UNENHANCED_LIVER_HU = 75.0  # a liver below it reads as without contrast (about 55 HU; 90–130 portal venous)
SMOOTH_SURFACE_MM = 5.0
DEFAULT_TRUNK_RADIUS_MM = 6.0
COMPARTMENT_LABELS = {"skeletal_muscle": 4, "subcutaneous_fat": 5, "visceral_fat": 6, "ascites": 7}  # export's labels
LUMBAR_ORDER = ("L3", "L2", "L4", "L1")

EXTRACTOR, VERSION = "tipsprog-biomarkers", "1"
NAMES = (
    "muscle/l3_area[cm2]",
    "muscle/l3_density[HU]",
    "fat/l3_subcutaneous_area[cm2]",
    "fat/l3_visceral_area[cm2]",
    "ascites/volume[mL]",
    "liver/volume[mL]",
    "liver/caudate_right_ratio[1]",
    "liver/surface_roughness[mm]",
    "spleen/volume[mL]",
    "spleen/length[mm]",
    "portal_vein/diameter[mm]",
)


def groups() -> list[str]:
    """The token group of each biomarker (its organ or compartment)."""
    return [name.split("/")[0] for name in NAMES]


def composition_on_slice(
    hu: np.ndarray, spacing: np.ndarray, canal_front: float, organs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Skeletal muscle, subcutaneous and visceral fat masks on one median-filtered axial slice (y, x; spacing in mm)
    whose spinal canal's anterior edge lies on row canal_front; organs (liver, spleen) are never muscle."""
    body, subcutaneous, inside = fascia_inside(hu, spacing)
    midline = ndimage.center_of_mass(body)[1]
    muscle_range = (hu >= MUSCLE_HU[0]) & (hu <= MUSCLE_HU[1]) & inside
    lining = inside & ~eroded(inside, SKIN_MM / 2.0, spacing)
    wall = ndimage.binary_propagation(muscle_range & lining, mask=muscle_range & ~eroded(inside, WALL_MM, spacing))
    rows, columns = np.indices(hu.shape)
    ahead_mm, lateral_mm = (canal_front - rows) * spacing[0], np.abs(columns - midline) * spacing[1]
    posterior = np.zeros(hu.shape, bool)
    for (ahead_low, ahead_high), (lateral_low, lateral_high) in POSTERIOR_MUSCLE_BOXES_MM:
        posterior |= (ahead_mm >= ahead_low) & (ahead_mm < ahead_high) & (lateral_mm >= lateral_low) & (lateral_mm < lateral_high)
    posterior &= ~((ahead_mm > -CANAL_DEPTH_MM) & (lateral_mm < CANAL_HALF_WIDTH_MM))  # the spinal canal
    muscle = (wall | (muscle_range & posterior)) & ~organs
    fat = (hu >= FAT_HU[0]) & (hu <= FAT_HU[1]) & inside
    return muscle, subcutaneous, fat & (ahead_mm > 0) & ~posterior


def _measured_level(levels: VertebralLevels) -> tuple[str | None, list[str]]:
    """The lumbar level to measure body composition at (L3, else the nearest named one in view) and its flags."""
    level = next((name for name in LUMBAR_ORDER if levels.z_of(name) is not None), None)
    if level is None:
        return None, ["muscle:no_vertebral_level"]
    flags = [] if level == "L3" else [f"muscle:at_{level}"]
    return level, flags + (["muscle:rib_anchored"] if levels.anchor == "ribs" else [])


def composition_masks(
    ct: sitk.Image, labels: sitk.Image, levels: VertebralLevels
) -> tuple[dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]], list[str]]:
    """Muscle, subcutaneous and visceral fat masks of each axial slice within SLAB_MM/2 of the middle of L3 (or the
    level _measured_level falls back to), by slice index, with the flags saying which level; none without one."""
    level, flags = _measured_level(levels)
    if level is None:
        return {}, flags
    hu = sitk.GetArrayViewFromImage(ct)
    z_of_slice = np.array([ct.TransformIndexToPhysicalPoint((0, 0, k))[2] for k in range(len(hu))])
    distance = np.abs(z_of_slice - levels.z_of(level))
    slab = np.flatnonzero(distance <= max(SLAB_MM / 2.0, distance.min()))
    spacing = np.array(ct.GetSpacing()[1::-1])
    canal_front = ct.TransformPhysicalPointToContinuousIndex((0.0, levels.canal_front_of(level), 0.0))[1]
    organs = sitk.GetArrayViewFromImage(labels) > 0
    masks = {
        int(k): composition_on_slice(ndimage.median_filter(hu[k].astype(np.float32), size=3), spacing, canal_front, organs[k])
        for k in slab
    }
    return masks, flags


def body_composition(ct: sitk.Image, labels: sitk.Image, levels: VertebralLevels) -> tuple[list[float], list[str]]:
    """Muscle area (cm²) and density (HU), subcutaneous and visceral fat areas (cm²) averaged over the slices of
    composition_masks, with its flags."""
    masks, flags = composition_masks(ct, labels, levels)
    if not masks:
        return [np.nan] * 4, flags
    hu = sitk.GetArrayViewFromImage(ct)
    pixel_cm2 = float(np.prod(ct.GetSpacing()[:2])) / 100.0
    areas = np.mean([[mask.sum() * pixel_cm2 for mask in on_slice] for on_slice in masks.values()], axis=0)
    muscle_hu = np.concatenate([hu[k][on_slice[0]] for k, on_slice in masks.items()])
    return [float(areas[0]), float(np.mean(muscle_hu)), float(areas[1]), float(areas[2])], flags


def _coarse(ct: sitk.Image, labels: sitk.Image) -> tuple[np.ndarray, np.ndarray, sitk.Image]:
    """HU and labels on the grid of about 3 mm that vertebrae.shrunk makes, and that grid."""
    grid = shrunk(ct)
    on_grid = sitk.Resample(labels, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(grid), sitk.GetArrayFromImage(on_grid), grid


def _compact(component: np.ndarray, spacing: np.ndarray) -> bool:
    """Whether a component fills more than COMPACT_FILL of its convex hull (a gallbladder, a cyst)."""
    points = np.argwhere(component) * spacing
    try:
        hull = ConvexHull(points)
    except QhullError:
        return False  # flat: a sheet of fluid
    return len(points) * float(np.prod(spacing)) / max(hull.volume, 1e-6) > COMPACT_FILL


def water_offset_hu(ct: sitk.Image) -> float:
    """How far the scan's HU scale sits from air at −1000 (water at 0 then sits as far off): the air offset of
    acquisition.py within ±MAX_OFFSET_HU, 0 where no air is in view."""
    offset = air_offset_hu(ct)
    return float(np.clip(offset, -MAX_OFFSET_HU, MAX_OFFSET_HU)) if np.isfinite(offset) else 0.0


def _peritoneal_region(ct: sitk.Image, labels: sitk.Image) -> sitk.Image | None:
    """Where peritoneal fluid may lie, found on the grid of about 3 mm: ahead of the retroperitoneum (the spinal
    canal's front less RETROPERITONEUM_MM) and above the iliac wings; None where no spine is in view."""
    hu, _, grid = _coarse(ct, labels)
    spacing = np.array(grid.GetSpacing()[::-1])
    canal = canal_front_rows(hu, spacing)
    if not np.isfinite(canal).any():
        return None
    canal = np.where(np.isfinite(canal), canal, np.nanmedian(canal))
    ahead = np.arange(hu.shape[1])[None, :] * spacing[1] < canal[:, None] * spacing[1] - RETROPERITONEUM_MM
    region = np.broadcast_to(ahead[:, :, None], hu.shape).copy()
    top = pelvis_top(slice_levels(hu, spacing)[0], spacing[0])
    if top is not None:
        region[: top + 1] = False
    image = sitk.GetImageFromArray(region.astype(np.uint8))
    image.CopyInformation(grid)
    return image


def _fluid_grid(ct: sitk.Image) -> sitk.Image:
    """The CT averaged down to about FLUID_GRID_MM per axis, unfiltered: a 5 mm layer of fluid keeps a core voxel."""
    factors = [max(1, round(FLUID_GRID_MM / spacing)) for spacing in ct.GetSpacing()]
    return sitk.BinShrink(sitk.Cast(ct, sitk.sitkFloat32), factors)


def _thin_layers(fluid: np.ndarray, seeds: np.ndarray, thick: np.ndarray, fascia: np.ndarray) -> np.ndarray:
    """Layers of fluid too thin for a core, grown from the seeds through fluid filling at least SHEET_SHARE of its
    3 × 3 × 3 neighbourhood (a two-voxel layer fills 2/3, a one-voxel fat/tissue border 1/3), less the pieces that
    reach the fascia: a thin fatty wall muscle reads as fluid between two fats, and ascites lies inside the wall."""
    sheet = fluid & (ndimage.uniform_filter(fluid.astype(np.float32), 3) >= SHEET_SHARE)
    layers = ndimage.binary_propagation(sheet & seeds, mask=sheet) & ~thick
    pieces, _ = ndimage.label(layers)
    return layers & ~np.isin(pieces, np.unique(pieces[layers & fascia]))


def ascites_mask(ct: sitk.Image, labels: sitk.Image) -> tuple[np.ndarray, sitk.Image] | None:
    """Free peritoneal fluid, as the module docstring defines it, on a grid of about FLUID_GRID_MM (the mask and its
    grid); None where no spine is in view (the retroperitoneum cannot be told from the peritoneal cavity)."""
    region = _peritoneal_region(ct, labels)
    if region is None:
        return None
    grid = _fluid_grid(ct)
    hu = sitk.GetArrayFromImage(grid)
    roi = sitk.GetArrayFromImage(sitk.Resample(labels, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
    allowed = sitk.GetArrayFromImage(sitk.Resample(region, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0)).astype(bool)
    spacing = np.array(grid.GetSpacing()[::-1])
    organs = (roi == ROI_LABELS["liver"]) | (roi == ROI_LABELS["spleen"])
    inside = fascia_inside(hu, spacing[1:])[2]
    water = water_offset_hu(ct)
    fluid = (hu >= FLUID_HU[0] + water) & (hu <= FLUID_HU[1] + water) & inside & allowed & ~organs
    core = ndimage.binary_erosion(fluid)  # a fat/tissue border averages into the fluid window too, one voxel thin
    seeds = inside & ~eroded(inside, WALL_REACH_MM, spacing) & dilated(organs, LINING_MM + spacing.max(), spacing)
    grown = ndimage.binary_propagation(core & seeds, mask=core)
    grown |= _thin_layers(fluid, seeds, grown, inside & ~eroded(inside, spacing.max(), spacing))
    gas = dilated((hu < GAS_HU) & inside, LINING_MM, spacing)
    components, _ = ndimage.label(ndimage.binary_dilation(grown) & fluid)
    ascites = np.zeros(hu.shape, bool)
    for label, region in enumerate(ndimage.find_objects(components), start=1):
        piece = components[region] == label
        volume = piece.sum() * float(np.prod(spacing)) / 1000.0
        if volume < MIN_FLUID_ML or (piece & gas[region]).sum() > BOWEL_GAS_SHARE * piece.sum():
            continue
        if volume < COMPACT_MAX_ML and _compact(piece, spacing):
            continue
        ascites[region] |= piece
    return ascites, grid


def compartment_labels(ct: sitk.Image, labels: sitk.Image) -> sitk.Image:
    """The ROI labels with the compartments the biomarkers measure painted where no ROI is (COMPARTMENT_LABELS):
    muscle and fat on the slices body composition is measured on, ascites on the CT's grid (nearest neighbour)."""
    painted = sitk.GetArrayFromImage(labels)
    masks, _ = composition_masks(ct, labels, vertebral_levels(ct))
    for k, on_slice in masks.items():
        for name, mask in zip(("skeletal_muscle", "subcutaneous_fat", "visceral_fat"), on_slice):
            painted[k][mask & (painted[k] == 0)] = COMPARTMENT_LABELS[name]
    fluid = ascites_mask(ct, labels)
    if fluid is not None:
        grid = sitk.GetImageFromArray(fluid[0].astype(np.uint8))
        grid.CopyInformation(fluid[1])
        on_ct = sitk.GetArrayFromImage(sitk.Resample(grid, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
        painted[(on_ct > 0) & (painted == 0)] = COMPARTMENT_LABELS["ascites"]
    image = sitk.GetImageFromArray(painted)
    image.CopyInformation(labels)
    return image


def ascites_ml(ct: sitk.Image, labels: sitk.Image) -> float:
    """Free peritoneal fluid (mL); NaN where no spine is in view."""
    found = ascites_mask(ct, labels)
    return np.nan if found is None else float(found[0].sum()) * float(np.prod(found[1].GetSpacing())) / 1000.0


def spleen_length_mm(labels: sitk.Image) -> float:
    """The spleen's length: its extent (mm) along its longest principal axis (NaN without a spleen)."""
    points = np.argwhere(sitk.GetArrayViewFromImage(labels) == ROI_LABELS["spleen"]) * np.array(labels.GetSpacing()[::-1])
    if len(points) < 10:
        return np.nan
    centred = points - points.mean(axis=0)
    axis = np.linalg.svd(centred[:: max(1, len(points) // 50000)], full_matrices=False)[2][0]
    projection = centred @ axis
    return float(projection.max() - projection.min())


def caudate_right_ratio(labels: sitk.Image, hepatic_end_mm: np.ndarray | None, trunk_diameter_mm: float) -> float:
    """Caudate-to-right-lobe ratio (Harbin) on the axial slice through the main portal vein's bifurcation: a
    sagittal line along the trunk's right wall; the caudate's width is from that line to the medial edge of the
    liver behind the vein, its right lobe's from that line to the liver's right edge. NaN without a trunk."""
    if hepatic_end_mm is None:
        return np.nan
    x, y, z = labels.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in hepatic_end_mm))
    spacing_x, spacing_y = labels.GetSpacing()[:2]
    radius = trunk_diameter_mm / 2.0 if np.isfinite(trunk_diameter_mm) else DEFAULT_TRUNK_RADIUS_MM
    wall = int(round(x - radius / spacing_x))
    liver = sitk.GetArrayViewFromImage(labels)[int(round(z))] == ROI_LABELS["liver"]
    behind = liver.copy()
    behind[: int(round(y + radius / spacing_y)) + 1], behind[:, : wall + 1] = False, False
    pieces, _ = ndimage.label(behind)
    touching = np.unique(pieces[:, wall + 1][pieces[:, wall + 1] > 0])
    columns = np.flatnonzero(liver.any(axis=0))
    if not len(touching) or not len(columns) or columns[0] >= wall:
        return np.nan
    caudate = np.flatnonzero(np.isin(pieces, touching).any(axis=0))
    return float((caudate.max() - wall) / (wall - columns[0]))


def surface_roughness_mm(labels: sitk.Image) -> float:
    """Mean distance (mm) of the liver's surface from the same surface smoothed by a SMOOTH_SURFACE_MM Gaussian (a
    nodular liver deviates more; NaN without a liver)."""
    liver = sitk.GetArrayViewFromImage(labels) == ROI_LABELS["liver"]
    if liver.sum() < 100:
        return np.nan
    spacing = np.array(labels.GetSpacing()[::-1])
    box = tuple(slice(max(0, r.start - 5), r.stop + 5) for r in ndimage.find_objects(liver.astype(np.uint8))[0])
    raw = liver[box]
    smooth = ndimage.gaussian_filter(raw.astype(np.float32), SMOOTH_SURFACE_MM / spacing) > 0.5
    signed = depth_mm(smooth, spacing) - depth_mm(~smooth, spacing)
    surface = raw & ~eroded(raw, 1.01 * spacing.max(), spacing)
    return float(np.mean(np.abs(signed[surface])))


def measure(ct: sitk.Image, labels: sitk.Image, volumes: np.ndarray, portal_vein: PortalVein) -> tuple[np.ndarray, list[str]]:
    """Every biomarker of NAMES for one canonical CT and its labels (NaN where not measurable) and the flags."""
    composition, flags = body_composition(ct, labels, vertebral_levels(ct))
    if roi_median_hu(ct, labels, "liver") < UNENHANCED_LIVER_HU:
        flags = [*flags, "ascites:unenhanced"]
    liver_ml, spleen_ml = volumes[ROI_LABELS["liver"] - 1], volumes[ROI_LABELS["spleen"] - 1]
    hepatic_end = None if portal_vein.hepatic_end_mm is None else np.array(portal_vein.hepatic_end_mm)
    caudate = caudate_right_ratio(labels, hepatic_end, portal_vein.main_diameter_mm)
    values = [
        *composition,
        ascites_ml(ct, labels),
        liver_ml,
        caudate,
        surface_roughness_mm(labels),
        spleen_ml,
        spleen_length_mm(labels),
        portal_vein.main_diameter_mm,
    ]
    return np.array(values, dtype=np.float32), flags


def training_percentiles(block: FeatureBlock) -> dict[str, list[float | None]]:
    """Each biomarker's 0th…100th percentiles over the patients measured (None where nobody was): what predict ranks
    a new patient against."""
    percentiles = {}
    for column, name in enumerate(block.names):
        values = block.values[:, column][np.isfinite(block.values[:, column])]
        percentiles[name] = np.percentile(values, np.arange(101)).round(4).tolist() if len(values) else [None] * 101
    return percentiles


def manifest_entry(block: FeatureBlock) -> dict:
    """What a bundle records of the training cohort's block: each biomarker's percentiles."""
    return {"training_percentiles": training_percentiles(block)}


def replay(
    entry: BlockEntry, ct: sitk.Image, labels: sitk.Image, volumes: np.ndarray, portal_vein: PortalVein
) -> tuple[np.ndarray, list[str]]:
    """A new scan's biomarkers in the bundle's order (NaN for one this version does not measure), and their flags."""
    measured, flags = measure(ct, labels, volumes, portal_vein)
    value_of = dict(zip(NAMES, measured))
    return np.array([value_of.get(name, np.nan) for name in entry.names], dtype=float), flags
