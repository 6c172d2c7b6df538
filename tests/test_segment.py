"""Segmentation on synthetic and real CT, masks backend resampling, crops and volumes."""

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import ndimage

from conftest import interrupt_after
from tipsprog.images import read_ct, read_mask
from tipsprog.journal import partial_path
from tipsprog.segment import Backend, SegmentOptions, dice_per_roi, run_segment, segment_scan
from tipsprog.segment.crops import CROP_SHAPE, roi_crops, roi_volumes
from tipsprog.segment.masks import TOTALSEGMENTATOR_IDS, map_labels
from tipsprog.store import open_store, read_qc, read_roi_table
from tipsprog.synth import CohortSpec, make_cohort


def _real_reference(real_ct: Path, ct: sitk.Image) -> sitk.Image:
    return map_labels(read_mask(real_ct / "example_seg.nii.gz", ct), TOTALSEGMENTATOR_IDS)


def test_classic_on_synthetic_scans(tmp_path):
    make_cohort(tmp_path / "c", CohortSpec(n=4, centers=2, seed=11))
    for pid in ["P0000", "P0001", "P0002", "P0003"]:
        ct = read_ct(tmp_path / "c" / "images" / f"{pid}.nii.gz")
        dice = dice_per_roi(segment_scan(ct, Backend("classic")), read_mask(tmp_path / "c" / "labels" / f"{pid}.nii.gz", ct))
        assert dice[0] >= 0.9, f"{pid} liver Dice {dice[0]:.3f}"
        assert dice[1] >= 0.7, f"{pid} spleen Dice {dice[1]:.3f}"


def test_classic_on_real_ct(real_ct):
    ct = read_ct(real_ct / "example_ct_sm.nii.gz")
    labels = segment_scan(ct, Backend("classic"))
    reference = _real_reference(real_ct, ct)
    dice = dice_per_roi(labels, reference)
    print(f"real CT Dice liver {dice[0]:.3f} spleen {dice[1]:.3f} portal vein {dice[2]:.3f}")
    # the #20 targets (0.90 / 0.88); measured 0.934 / 0.947 (non-contrast scan, 90 mm of upper abdomen; 0.901 /
    # 0.900 while the wall muscle along the ribs was searched too)
    assert dice[0] >= 0.91 and dice[1] >= 0.92
    volumes, reference_ml = roi_volumes(labels), roi_volumes(reference)
    print(f"real CT liver / spleen {volumes[0]:.0f} / {volumes[1]:.0f} mL against {reference_ml[0]:.0f} / {reference_ml[1]:.0f}")
    # #21's goal; measured +9.5% / +1.1%: the liver was +14.0% with the wall muscle under the costal cartilages and
    # the intrahepatic IVC, +19.9% with the wall muscle along the ribs too; the spleen +13% then
    assert abs(volumes[0] / reference_ml[0] - 1.0) <= 0.10 and abs(volumes[1] / reference_ml[1] - 1.0) <= 0.10
    assert volumes[2] == 0  # no contrast, no enhancing vessel tree: no portal vein rather than a wrong one


def test_masks_backend_resamples_any_orientation(tmp_path, real_ct):
    ct_path = real_ct / "example_ct_sm.nii.gz"
    ct = read_ct(ct_path)
    reference = _real_reference(real_ct, ct)
    flipped = sitk.DICOMOrient(reference, "RAI")
    sitk.WriteImage(flipped, str(tmp_path / "label_rai.nii.gz"))
    row = pd.Series({"patient_id": "real", "ct": str(ct_path), "label": str(tmp_path / "label_rai.nii.gz")})
    labels = segment_scan(ct, Backend("masks"), row)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(reference))


def test_crops_are_fixed_size_and_centred(real_ct):
    ct = read_ct(real_ct / "example_ct_sm.nii.gz")
    crops = roi_crops(ct, _real_reference(real_ct, ct))
    for roi, crop in crops.items():
        assert crop.shape == (2, *CROP_SHAPE)
        assert -1.0 <= crop[0].min() and crop[0].max() <= 1.0
        centre = crop[1][tuple(slice(n // 2 - 2, n // 2 + 2) for n in CROP_SHAPE)]
        assert crop[1].sum() > 0 and (roi == "portal_vein" or centre.mean() > 0.5)


def test_segment_store_records_failed_scans(tmp_path):
    make_cohort(tmp_path / "c", CohortSpec(n=3, centers=1, seed=5))
    cohort = pd.read_csv(tmp_path / "c" / "cohort.csv")
    cohort.loc[1, "ct"] = "images/missing.nii.gz"
    cohort.to_csv(tmp_path / "c" / "cohort.csv", index=False)
    results = run_segment(tmp_path / "c" / "cohort.csv", tmp_path / "seg.h5")
    assert [r.status for r in results] == ["ok", "failed", "ok"]
    with open_store(tmp_path / "seg.h5") as h5:
        status, reasons = read_qc(h5)
        assert "missing.nii.gz: CT file not found" in reasons[1]
        dice, names = read_roi_table(h5, "segment/dice")
        assert names[0] == "liver" and dice[0, 0] > 0.9 and np.isnan(dice[1, 0])


def test_resume_takes_finished_scans_from_the_journal_only_when_inputs_and_settings_match(tmp_path):
    make_cohort(tmp_path / "c", CohortSpec(n=5, centers=1, seed=5))
    cohort_csv, out = tmp_path / "c" / "cohort.csv", tmp_path / "seg.h5"
    with pytest.raises(KeyboardInterrupt):
        run_segment(cohort_csv, out, progress=interrupt_after(3))
    assert not out.exists()
    with h5py.File(partial_path(out), "a") as journal:
        assert len(journal["records"]) == 3
        for record in journal["records"].values():
            record["volumes"][0] = 1234.0  # only a reused record can carry this into the store
    (tmp_path / "c" / "images" / "P0001.nii.gz").write_bytes((tmp_path / "c" / "images" / "P0003.nii.gz").read_bytes())
    run_segment(cohort_csv, out, SegmentOptions(resume=True))
    assert not partial_path(out).exists()
    with open_store(out) as h5:
        volumes = read_roi_table(h5, "segment/volumes")[0][:, 0]
    assert volumes[0] == 1234.0 and volumes[2] == 1234.0  # reused
    assert volumes[1] != 1234.0 and volumes[3:].tolist() != [1234.0, 1234.0]  # changed CT and unfinished: segmented

    with pytest.raises(KeyboardInterrupt):
        run_segment(cohort_csv, out, progress=interrupt_after(3))
    with h5py.File(partial_path(out), "a") as journal:
        journal["records/0/volumes"][0] = 1234.0
    run_segment(cohort_csv, out, SegmentOptions("masks", resume=True))  # other settings: the journal is set aside
    with open_store(out) as h5:
        assert read_qc(h5)[0] == ["ok"] * 5 and 1234.0 not in read_roi_table(h5, "segment/volumes")[0][:, 0]


def test_a_spleens_partial_volume_rim_is_not_taken_for_a_second_organ():
    """The spleen's basin is split at its Otsu threshold only to drop a kidney in it; a spleen that enhances more
    than the liver with a rim of partial volume (10% of the basin, nearer the liver's HU) lost everything but the
    rim (synthetic spleen Dice 0.07 / 0.03 / 0.00 on three of twelve full-size phantoms)."""
    from tipsprog.segment.classic import _nearest_hu_class

    rng = np.random.default_rng(0)
    region = np.ones((20, 20, 20), bool)
    smooth = 125.0 + 4.0 * rng.standard_normal(region.shape)
    rim = rng.random(region.shape) < 0.1
    smooth[rim] = 95.0 + 4.0 * rng.standard_normal(rim.sum())
    kept = _nearest_hu_class(region, smooth, target_hu=109.0, separation_hu=25.0)
    assert (kept & ~rim).sum() > 0.95 * (~rim).sum() and not (kept & rim).any()
    kidney = np.zeros(region.shape, bool)
    kidney[:8] = True  # 40% of the basin 45 HU brighter: a second organ, dropped
    smooth[kidney] += 45.0
    assert not (_nearest_hu_class(region, smooth, target_hu=109.0, separation_hu=25.0) & kidney & ~rim).any()


def test_an_organ_border_is_moved_out_to_its_half_maximum_edge():
    """A spleen (120 HU) in fat seen through a scanner's blur (σ 1.5 mm) and labelled 3 mm inside its edge, as the
    3 mm grid leaves it: its parenchyma window (median ± 25 HU) stopped the refinement about 2 mm inside the blurred
    edge (volume −18%; IRCAD's spleen against its manual mask: −10%); moved to the half-maximum edge between it and
    the fat it keeps its volume."""
    from tipsprog.segment.classic import _refined_organs
    from tipsprog.segment.morphology import depth_mm
    from tipsprog.store import ROI_LABELS

    spacing = np.array([1.5, 1.5, 1.5])
    zz, yy, xx = np.indices((50, 50, 50)) * spacing[:, None, None, None]
    spleen = (zz - 37.5) ** 2 + (yy - 37.5) ** 2 + (xx - 37.5) ** 2 <= 30.0**2
    rng = np.random.default_rng(0)
    hu = np.where(spleen, 120.0, -100.0) + 8.0 * rng.standard_normal(spleen.shape)
    hu = ndimage.gaussian_filter(hu, 1.5 / spacing).astype(np.float32)
    fine = sitk.GetImageFromArray(hu)
    fine.SetSpacing(tuple(spacing))
    labelled = sitk.GetImageFromArray((depth_mm(spleen, spacing) > 3.0).astype(np.uint8) * ROI_LABELS["spleen"])
    labelled.CopyInformation(fine)
    refined = sitk.GetArrayFromImage(_refined_organs(fine, hu, labelled)) == ROI_LABELS["spleen"]
    assert 0.97 <= refined.sum() / spleen.sum() <= 1.03, refined.sum() / spleen.sum()


def test_the_organs_are_searched_inside_the_rib_cage_where_ribs_are_near():
    """A body wall whose muscle reads like the organs (a non-contrast scan) with ribs in it on the patient's right:
    what lies beyond the ribs' inner surface there is not searched, the patient's left (no ribs) and what lies
    beyond the ribs' ends are searched up to the wall as before (extrapolated past the lowest ribs' ends, the cage cut
    the spleen's side on a 1.5 mm reconstruction: Dice 0.85). Without it the classic liver took the wall muscle along its side (non-contrast example:
    spleen +13% and liver +20% against TotalSegmentator's masks)."""
    from tipsprog.segment.classic import _inside_rib_cage

    spacing = np.array([3.0, 3.0, 3.0])
    z, y, x = np.indices((20, 100, 120)).astype(float)
    scale = np.hypot((y - 50.0) * 3.0 / 140.0, (x - 60.0) * 3.0 / 170.0)  # an ellipse 280 × 340 mm: 1 at the skin
    body = scale <= 1.0
    hu = np.where(body, np.where(scale > 0.9, -100.0, 40.0), -1000.0)  # subcutaneous fat, then muscle and organs
    angle = np.degrees(np.arctan2(y - 50.0, x - 60.0))
    for k in range(20):  # ribs cross each slice at a few angles, turning along z as oblique ribs do
        rib_angles = np.radians(130.0 + 20.0 * np.arange(5) + 2.0 * k)
        for a in rib_angles:
            row, column = 50.0 + 0.82 * 140.0 / 3.0 * np.sin(a), 60.0 + 0.82 * 170.0 / 3.0 * np.cos(a)
            hu[k, int(row) : int(row) + 2, int(column) : int(column) + 2] = 600.0
    inside = _inside_rib_cage(hu.astype(np.float32), np.zeros_like(body), body, spacing, 60.0)
    covered = body & (np.abs(angle % 360.0 - 189.0) < 19.0)  # the patient's right, between ribs on every slice
    assert not (inside & covered & (scale > 0.86)).any()  # the wall beyond the ribs
    assert inside[covered & (scale < 0.7)].all()  # the organs inside them
    assert inside[(np.abs(angle) < 60.0) & body].all()  # no rib near: nothing cut
    assert inside[body & (np.abs(angle % 360.0 - 122.0) < 4.0)].all()  # beyond the ribs' ends: not extrapolated


def test_costal_cartilage_carries_the_rib_cage_without_contrast_only():
    """Costal cartilages (about 100 HU) are brighter than the liver without contrast (40-70 HU) and carry the rib
    cage in front of the ribs' ends: the wall muscle beyond them is not searched (without them the classic liver took
    the anterior wall muscle under the cartilages: example_ct_sm liver +14.0%, +9.5% with them and the IVC rule,
    against TotalSegmentator's). On an enhanced scan (liver 120 HU) nothing is taken for cartilage: the spleen may
    outshine the liver there (taken for cartilage near the wall, its brightest voxels cut phantom spleens by up to 7
    points of Dice); nor, under a fatty liver's window, the unenhanced spleen and muscle."""
    from tipsprog.segment.classic import _cartilage, _inside_rib_cage
    from tipsprog.segment.morphology import eroded

    spacing = np.array([3.0, 3.0, 3.0])
    z, y, x = np.indices((20, 100, 120)).astype(float)
    scale = np.hypot((y - 50.0) * 3.0 / 140.0, (x - 60.0) * 3.0 / 170.0)  # an ellipse 280 × 340 mm: 1 at the skin
    body = scale <= 1.0
    angle = np.degrees(np.arctan2(y - 50.0, x - 60.0)) % 360.0  # 180: the patient's right, 270: anterior
    liver = np.hypot((y - 50.0) / 28.0, (x - 40.0) / 20.0) <= 1.0
    arc = (np.abs(angle - 225.0) < 20.0) & (scale > 0.8) & (scale < 0.85)  # cartilage in front, right of midline
    spleen = np.hypot((y - 62.0) / 12.0, (x - 95.0) / 8.0) <= 1.0  # on the left, its tip near the wall
    inside_wall = eroded(body, 15.0, spacing)
    for liver_hu, spleen_hu in ((50.0, 45.0), (10.0, 45.0), (120.0, 140.0)):  # unenhanced, fatty, portal venous
        hu = np.where(body, np.where(scale > 0.9, -100.0, 40.0), -1000.0)  # subcutaneous fat, wall muscle
        hu[liver], hu[spleen], hu[arc] = liver_hu, spleen_hu, 100.0
        hu = hu.astype(np.float32)
        cartilage = _cartilage(hu, inside_wall, spacing, 60.0)
        assert not cartilage[spleen].any() and not cartilage[body & ~arc].any()
        if liver_hu < 80.0:
            inside = _inside_rib_cage(hu, cartilage, body, spacing, 60.0)
            assert cartilage[arc].all()
            assert not (inside & (np.abs(angle - 225.0) < 15.0) & (scale > 0.8)).any()  # the wall beyond it
            assert inside[liver].all() and inside[body & (np.abs(angle - 315.0) < 30.0)].all()  # no cartilage
        else:
            assert not cartilage[arc].any()


def test_veins_hanging_below_the_liver_and_the_ivc_through_it_are_left_out_and_a_lobe_is_kept():
    """Without contrast the IVC has the liver's HU, joins it at the caudate lobe and runs up through it, so the
    liver followed it 6 cm below its tip on the pelvis-to-abdomen example and kept its intrahepatic part (example_ct_sm:
    17 mL of TotalSegmentator's IVC): tubes no wider than a vein hanging 60 mm below the liver are left out, and the
    widest one's course on up through the liver too (a narrower portal or mesenteric vein turns into the hilum and
    is not carried); a lobe's tip that leaves wide and narrows, and a short knob, are kept."""
    from tipsprog.segment.classic import _without_hanging_veins

    spacing = np.array([3.0, 3.0, 3.0])
    organ = np.zeros((40, 60, 60), bool)
    z, y, x = np.indices(organ.shape)
    body = (z >= 30) & (np.abs(y - 30) < 20) & (np.abs(x - 30) < 25)  # z grows upwards (LPS)
    lobe = (z >= 20) & (z < 30) & (np.abs(y - 30) < 3 + (z - 20)) & (x >= 7) & (x < 7 + 2 * (z - 19))
    ivc = (z >= 10) & (np.hypot(y - 30, x - 45) <= 3.0)  # 18 mm across, 60 mm below the liver, then through it
    portal = (z >= 10) & (z < 30) & (np.hypot(y - 42, x - 30) <= 2.0)  # 12 mm across
    knob = (z >= 24) & (z < 30) & (np.hypot(y - 18, x - 38) <= 2.0)  # 18 mm long
    organ |= body | lobe | ivc | portal | knob
    kept = _without_hanging_veins(organ, spacing)
    assert (kept == (organ & ~ivc & ~(portal & (z < 30)))).all()
    assert (_without_hanging_veins(body | lobe, spacing) == (body | lobe)).all()


@pytest.mark.slow
def test_segment_on_a_dask_process_cluster_writes_the_local_store(pipeline, tmp_path):
    """--scheduler: the same scans segmented by a two-process Dask cluster give the store a local run writes."""
    from distributed import LocalCluster

    cohort = pd.read_csv(pipeline.cohort / "cohort.csv", dtype=str).head(4)
    for column in ("ct", "label"):
        cohort[column] = [str(pipeline.cohort / path) for path in cohort[column]]
    cohort.to_csv(tmp_path / "cohort.csv", index=False)
    run_segment(tmp_path / "cohort.csv", tmp_path / "local.h5")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        run_segment(tmp_path / "cohort.csv", tmp_path / "dask.h5", SegmentOptions(scheduler=cluster.scheduler_address))
    with h5py.File(tmp_path / "local.h5") as local, h5py.File(tmp_path / "dask.h5") as dask:
        for key in ("segment/volumes", "features/biomarkers/values", "segment/crops/liver", "qc/status"):
            np.testing.assert_array_equal(local[key][()], dask[key][()])
        for patient in local["segment/masks"]:
            np.testing.assert_array_equal(local[f"segment/masks/{patient}"][()], dask[f"segment/masks/{patient}"][()])
