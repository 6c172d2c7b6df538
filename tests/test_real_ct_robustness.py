"""Segmentation holds up on the real CT stored in other orientations, pixel types and formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import ndimage

from conftest import REAL_CT, shared_data, write_dicom_series
from tipsprog.errors import InputError
from tipsprog.images import read_ct, read_mask, resample_to_spacing
from tipsprog.segment import Backend, dice_per_roi, run_segment, segment_scan
from tipsprog.segment.crops import roi_volumes
from tipsprog.segment.landmarks import pelvis_top, slice_levels
from tipsprog.segment.masks import TOTALSEGMENTATOR_IDS, map_labels
from tipsprog.segment.qc import qc_reason, qc_status, quality_flags


def _variants(raw: sitk.Image, folder: Path) -> dict[str, Path]:
    """The real CT stored in other ways that keep its physical content.

    Resampled variants use a cubic B-spline onto grids no coarser than the original's 3 mm, as a scanner
    reconstructing the same field of view on another matrix would: no information is lost, so Dice must hold.
    """
    images = {
        "RAS": sitk.DICOMOrient(raw, "RAS"),
        "LPS": sitk.DICOMOrient(raw, "LPS"),
        "ASL": sitk.DICOMOrient(raw, "ASL"),
        "flipped-x": sitk.Flip(raw, [True, False, False]),
        "flipped-z": sitk.Flip(raw, [False, False, True]),
        "int32": sitk.Cast(raw, sitk.sitkInt32),
        "float32": sitk.Cast(raw, sitk.sitkFloat32),
    }
    paths = {}
    for name, image in images.items():
        paths[name] = folder / f"{name}.nii.gz"
        sitk.WriteImage(image, str(paths[name]))
    for extension in ("nrrd", "mha"):
        paths[extension] = folder / f"ct.{extension}"
        sitk.WriteImage(raw, str(paths[extension]))
    paths["dicom"] = write_dicom_series(raw, folder / "dicom")
    for spacing in RESAMPLED_SPACINGS:
        paths[_grid_name(spacing)] = folder / f"{_grid_name(spacing)}.nii.gz"
        sitk.WriteImage(resample_to_spacing(raw, spacing, sitk.sitkBSpline, -1024.0), str(paths[_grid_name(spacing)]))
    return paths


RESAMPLED_SPACINGS = [(2.5, 2.5, 2.5), (1.5, 1.5, 3.0), (1.0, 1.0, 2.0), (2.0, 2.0, 1.5)]


def _grid_name(spacing: tuple[float, float, float]) -> str:
    """A test id for a grid, e.g. '1.5x1.5x3mm'."""
    return "x".join(f"{s:g}" for s in spacing) + "mm"


def _dice_on_reference_grid(ct_path: Path, reference: sitk.Image) -> np.ndarray:
    labels = segment_scan(read_ct(ct_path), Backend("classic"))
    on_reference = sitk.Resample(labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return dice_per_roi(on_reference, reference)


@pytest.fixture(scope="module")
def stored_variants(tmp_path_factory):
    shared_data(REAL_CT)
    raw = sitk.ReadImage(str(REAL_CT / "example_ct_sm.nii.gz"))
    reference = map_labels(sitk.ReadImage(str(REAL_CT / "example_seg.nii.gz")), TOTALSEGMENTATOR_IDS)
    return REAL_CT / "example_ct_sm.nii.gz", reference, _variants(raw, tmp_path_factory.mktemp("variants"))


@pytest.fixture(scope="module")
def baseline_dice(stored_variants) -> np.ndarray:
    """Classic Dice of the CT as shipped, computed once for every variant to compare with."""
    original, reference, _ = stored_variants
    return _dice_on_reference_grid(original, reference)


def test_dicom_series_reads_as_the_same_volume(stored_variants):
    original, _, variants = stored_variants
    a, b = read_ct(original), read_ct(variants["dicom"])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)


@pytest.mark.parametrize("variant", ["RAS", "LPS", "ASL", "flipped-x", "flipped-z", "int32", "float32", "nrrd", "mha", "dicom"])
def test_classic_dice_does_not_depend_on_storage(stored_variants, baseline_dice, variant):
    """Re-storing the same voxels (orientation, flips, pixel type, format, DICOM) moves Dice by at most 0.005."""
    _, reference, variants = stored_variants
    changed = _dice_on_reference_grid(variants[variant], reference)
    assert np.all(np.abs(changed[:2] - baseline_dice[:2]) <= 0.005), (variant, baseline_dice, changed)


@pytest.mark.parametrize("variant", [*map(_grid_name, RESAMPLED_SPACINGS)])
def test_classic_dice_holds_on_other_grids(stored_variants, baseline_dice, variant):
    """Another reconstruction grid changes the voxels themselves (two resamplings blur them), the organs
    are split where they touch by a watershed whose cuts move by a voxel, and their borders are refined on a grid
    as fine as the scan's (1.5 mm here, 3 mm for the original): Dice drops by at most 0.03 (measured: spleen
    0.927–0.936 against 0.938 on the original)."""
    _, reference, variants = stored_variants
    changed = _dice_on_reference_grid(variants[variant], reference)
    assert np.all(changed[:2] >= baseline_dice[:2] - 0.03), (variant, baseline_dice, changed)


def test_masks_on_another_grid_are_resampled_in_physical_space(stored_variants, tmp_path):
    original, reference, _ = stored_variants
    fine = sitk.Resample(
        reference,
        [2 * n for n in reference.GetSize()],
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        reference.TransformContinuousIndexToPhysicalPoint((-0.25, -0.25, -0.25)),
        [s / 2 for s in reference.GetSpacing()],
        reference.GetDirection(),
        0,
        sitk.sitkUInt8,
    )
    path = tmp_path / "label_fine_ras.nrrd"
    sitk.WriteImage(sitk.DICOMOrient(fine, "RAS"), str(path))
    labels = segment_scan(read_ct(original), Backend("masks"), pd.Series({"patient_id": "x", "label": str(path)}))
    back = sitk.Resample(labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    assert np.all(dice_per_roi(back, reference) == 1.0)


def test_quality_flags_on_the_real_slab(stored_variants):
    original, reference, _ = stored_variants
    ct, labels = read_ct(original), reference
    flags = quality_flags(ct, labels, roi_volumes(labels))
    assert flags == ["liver:truncated", "spleen:truncated"]  # a 90 mm slab cuts the organs; the liver is in view
    tiny = sitk.Image(labels.GetSize(), sitk.sitkUInt8)
    tiny.CopyInformation(labels)
    tiny[40, 40, 10] = 1
    assert quality_flags(ct, tiny, roi_volumes(tiny)) == ["liver:implausible_volume", "spleen:empty", "portal_vein:empty"]


def _whole_scan_labels(real_ct: Path) -> tuple[sitk.Image, sitk.Image]:
    """The 112-slice real CT (pelvis to upper abdomen) and its liver and spleen labels: the reference labels belong
    to example_ct_sm, which is this scan's top 30 slices (its header repeats the whole scan's origin)."""
    ct = read_ct(real_ct / "example_ct.nii.gz")
    top = read_mask(real_ct / "example_seg.nii.gz", read_ct(real_ct / "example_ct_sm.nii.gz"))
    labels = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8)
    labels[-top.GetDepth() :] = sitk.GetArrayFromImage(map_labels(top, TOTALSEGMENTATOR_IDS))
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(ct)
    return ct, image


def test_liver_in_view_checks_pass_the_real_liver_and_catch_a_liver_where_none_can_be(real_ct):
    ct, labels = _whole_scan_labels(real_ct)
    liver = sitk.GetArrayFromImage(labels) == 1
    assert quality_flags(ct, labels, roi_volumes(labels)) == ["liver:truncated", "spleen:truncated"]

    in_pelvis = np.zeros_like(liver)
    in_pelvis[:30] = liver[-30:]  # the same liver moved down among the hip bones
    flags = quality_flags(ct, _labels_like(ct, in_pelvis), roi_volumes(labels))
    assert "liver:in_pelvis" in flags and qc_status(flags) == "failed"
    assert "no liver in view" in qc_reason(flags)

    head_to_foot = liver.any(axis=0) & np.ones_like(liver)  # taller than any liver
    flags = quality_flags(ct, _labels_like(ct, head_to_foot), roi_volumes(labels))
    assert flags[-1] == "liver:implausible_extent" and qc_status(flags) == "failed"

    chest = sitk.GetArrayFromImage(ct)
    for z in range(len(chest) - 30, len(chest)):  # lungs filling the body around the same liver: a chest slab
        inside = ndimage.distance_transform_edt(ndimage.binary_fill_holes(chest[z] > -400), sampling=3.0) > 20
        chest[z][inside & ~liver[z]] = -850
    chest_ct = sitk.GetImageFromArray(chest)
    chest_ct.CopyInformation(ct)
    assert "liver:in_chest" in quality_flags(chest_ct, labels, roi_volumes(labels))


def _labels_like(ct: sitk.Image, liver: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(liver.astype(np.uint8))
    image.CopyInformation(ct)
    return image


def test_segment_fails_a_pelvis_only_scan_with_its_reason(real_ct, tmp_path):
    """A pelvis-only crop holds no liver: the classic backend searches above the pelvis and finds none, and QC says
    why from the scan's landmarks (it once labelled pelvic muscle and bowel 'liver'). The store records the failure
    beside the usable scan; alone, it is a run in which no scan could be used: an error."""
    sitk.WriteImage(read_ct(real_ct / "example_ct.nii.gz")[:, :, :40], str(tmp_path / "pelvis.nii.gz"))
    pd.DataFrame({"patient_id": ["pelvis", "abdomen"], "ct": ["pelvis.nii.gz", str(real_ct / "example_ct_sm.nii.gz")]}).to_csv(
        tmp_path / "cohort.csv", index=False
    )
    pelvis, abdomen = run_segment(tmp_path / "cohort.csv", tmp_path / "seg.h5")
    assert pelvis.status == "failed" and pelvis.flags[0] == "scan:pelvis_only" and abdomen.status == "ok"
    assert "no liver in view" in pelvis.reason
    pd.DataFrame({"patient_id": ["pelvis"], "ct": ["pelvis.nii.gz"]}).to_csv(tmp_path / "alone.csv", index=False)
    with pytest.raises(InputError, match="alone.csv: no scan could be segmented .patient pelvis: scan:pelvis_only"):
        run_segment(tmp_path / "alone.csv", tmp_path / "alone.h5")
    assert not (tmp_path / "alone.h5").exists() and not (tmp_path / "alone.h5.partial").exists()


def test_segment_fails_a_chest_slab_with_its_reason(real_ct, tmp_path):
    """No scan in ../shared reaches above the liver dome by more than a few slices, so the chest-only crop is the
    real upper-abdominal scan with both lungs put in (air beside a mediastinum 90 mm wide, below the same body
    wall and over the same spine, aorta and heart-level soft tissue): whatever the backend labels in it, QC fails
    the scan with 'no liver in view'."""
    chest = sitk.GetArrayFromImage(read_ct(real_ct / "example_ct_sm.nii.gz"))
    for plane in chest:
        body = ndimage.binary_fill_holes(plane > -400)
        lateral_mm = np.abs(np.arange(plane.shape[1]) - ndimage.center_of_mass(body)[1]) * 3.0
        plane[(ndimage.distance_transform_edt(body, sampling=3.0) > 20) & (lateral_mm > 45)[None] & (plane < 200)] = -850
    image = sitk.GetImageFromArray(chest)
    image.CopyInformation(read_ct(real_ct / "example_ct_sm.nii.gz"))
    sitk.WriteImage(image, str(tmp_path / "chest.nii.gz"))
    pd.DataFrame({"patient_id": ["chest", "abdomen"], "ct": ["chest.nii.gz", str(real_ct / "example_ct_sm.nii.gz")]}).to_csv(
        tmp_path / "cohort.csv", index=False
    )
    chest_result, abdomen = run_segment(tmp_path / "cohort.csv", tmp_path / "seg.h5")
    assert chest_result.status == "failed" and abdomen.status == "ok", (chest_result.flags, abdomen.flags)
    assert "no liver in view" in chest_result.reason


IRCADB = REAL_CT.parent / "ircadb-1.1"  # CC BY-NC-ND: read in place from ../shared, never copied


def _dice_against(ct: sitk.Image, labels: sitk.Image, reference: np.ndarray) -> np.ndarray:
    """Dice per ROI of labels against a reference label array on the CT's grid."""
    image = sitk.GetImageFromArray(reference)
    image.CopyInformation(ct)
    return dice_per_roi(labels, image)


@pytest.mark.slow
def test_portal_venous_ct_is_segmented_and_passes_qc():
    """The real contrast CT (dense young lumbar spine, contrast in the vessels and kidneys) was refused as
    'liver:in_pelvis' when QC counted all deep bone; the iliac-wing landmark passes it. Dice liver / spleen /
    portal vein measured 0.928 / 0.904 / 0.575 (0.848 / 0.860 / 0.000 before the organ basins, the lesion closing,
    the smooth upsampling and the portal vein tree); the #20 targets are 0.92 / 0.88 / 0.50."""
    ct = read_ct(shared_data(IRCADB) / "ct.nii.gz")
    labels = segment_scan(ct, Backend("classic"))
    flags = quality_flags(ct, labels, roi_volumes(labels))
    assert qc_status(flags) == "ok", flags
    reference = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8)
    for name, label in (("liver", 1), ("spleen", 2), ("portalvein", 3)):
        reference[sitk.GetArrayFromImage(read_mask(IRCADB / f"{name}.nii.gz", ct)) > 0] = label
    dice = _dice_against(ct, labels, reference)
    assert dice[0] >= 0.92 and dice[1] >= 0.88 and dice[2] >= 0.5, dice


def test_pelvis_to_abdomen_scan_is_segmented_above_the_pelvis(real_ct):
    """The full example CT (pelvis to upper abdomen) was refused: the liver leaked into the pelvis (3,317 mL). The
    organs are now searched above the iliac wings: not refused. Liver Dice on the 30 slices the reference labels
    cover (the liver continues below them, unlabelled): 0.891 (0.690 with the iliac-wing bound alone, 0.434 before)."""
    ct, reference = _whole_scan_labels(real_ct)
    pelvic, _ = slice_levels(sitk.GetArrayFromImage(ct), np.array(ct.GetSpacing()[::-1]))
    assert 25 <= pelvis_top(pelvic, ct.GetSpacing()[2]) <= 45  # the iliac crests, about a third of the way up
    labels = segment_scan(ct, Backend("classic"))
    volumes = roi_volumes(labels)
    assert qc_status(quality_flags(ct, labels, volumes)) == "ok" and volumes[0] < 2500
    labelled = slice(ct.GetDepth() - 30, None)
    assert dice_per_roi(labels[:, :, labelled], reference[:, :, labelled])[0] >= 0.88


def test_no_pelvis_is_found_in_upper_abdominal_scans(real_ct):
    """Neither upper-abdominal scan holds the iliac wings above their lowest few centimetres."""
    for path in (real_ct / "example_ct_sm.nii.gz", shared_data(IRCADB) / "ct.nii.gz"):
        ct = read_ct(path)
        small = sitk.BinShrink(ct, [max(1, round(3.0 / s)) for s in ct.GetSpacing()])
        pelvic, thoracic = slice_levels(sitk.GetArrayFromImage(small), np.array(small.GetSpacing()[::-1]))
        top = pelvis_top(pelvic, small.GetSpacing()[2])
        assert top is None or top * small.GetSpacing()[2] <= 20.0, (path, top)
