"""Acquisition checks (segment/acquisition.py): each descriptor read from the scan, each check's margin, the
store's table and the bundle's ranges."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from tipsprog.fusion.ood import OodReference, fit_ood
from tipsprog.images import read_ct
from tipsprog.segment import acquisition
from tipsprog.store import ACQUISITION, open_store, read_named_table
from tipsprog.tables import read_cohort


def _scan(offset_hu: float, clip_hu: float = -3000.0, cushion: bool = False) -> tuple[sitk.Image, sitk.Image]:
    """A 0.8 × 0.8 × 2.5 mm scan: noisy air (−1000 + offset, clipped at clip_hu) around a water body holding a
    liver (100 HU + offset) with a portal vein (180 HU + offset), padding (−3024) in two corners, a foam cushion
    (−950 HU) under the body if asked; and its labels."""
    rng = np.random.default_rng(0)
    hu = (-1000.0 + 10.0 * rng.standard_normal((20, 120, 120))).astype(np.float32)
    hu[:, 30:90, 30:90] = 0.0
    if cushion:
        hu[:, 90:120, :] = -950.0 + 10.0 * rng.standard_normal((20, 30, 120))
    labels = np.zeros(hu.shape, np.uint8)
    labels[5:15, 40:70, 40:70] = 1
    labels[8:12, 50:54, 50:54] = 3
    hu[labels == 1], hu[labels == 3] = 100.0, 180.0
    hu = np.maximum(hu + offset_hu, clip_hu)
    hu[:, :12, :12] = hu[:, -12:, -12:] = -3024.0
    ct, roi = sitk.GetImageFromArray(hu), sitk.GetImageFromArray(labels)
    for image in (ct, roi):
        image.SetSpacing((0.8, 0.8, 2.5))
    return ct, roi


def test_each_descriptor_is_read_from_the_scan():
    ct, labels = _scan(offset_hu=12.0)
    described = dict(zip(acquisition.FIELDS, acquisition.describe(ct, labels)))
    assert described == {
        "in_plane_spacing": np.float32(0.8),
        "slice_spacing": 2.5,
        "air_offset": pytest.approx(12.0, abs=1.5),
        "liver_attenuation": 112.0,
        "portal_vein_over_liver": 80.0,
    }
    no_vein = sitk.BinaryThreshold(labels, 1, 1, 1, 0)  # no portal vein found: its contrast is not readable
    assert np.isnan(acquisition.describe(ct, sitk.Cast(no_vein, sitk.sitkUInt8))[-1])


def test_the_air_level_is_its_peak_and_clipped_air_has_none():
    """A foam cushion covering a third of what lies outside the body does not move the air's level (a median
    would); air mostly clipped by the scanner at −1024 has no readable level; padding never counts."""
    assert acquisition.air_offset_hu(_scan(offset_hu=-8.0, cushion=True)[0]) == pytest.approx(-8.0, abs=1.5)
    assert acquisition.air_offset_hu(_scan(offset_hu=-8.0, clip_hu=-1024.0)[0]) == pytest.approx(-8.0, abs=1.5)
    assert np.isnan(acquisition.air_offset_hu(_scan(offset_hu=-25.0, clip_hu=-1024.0)[0]))


def test_a_scan_beyond_the_training_range_and_its_margin_fails_that_check_only():
    ranges = {
        "in_plane_spacing": [0.7, 0.8],
        "slice_spacing": [1.0, 2.0],
        "air_offset": [-5.0, 5.0],
        "liver_attenuation": [90.0, 130.0],
    }
    inside = {"in_plane_spacing": 0.95, "slice_spacing": 2.4, "air_offset": 14.0, "liver_attenuation": 75.0}
    assert acquisition.failed_checks(inside, ranges) == []  # within the margins: 25%, 10 HU, 20 HU
    unlike = {**inside, "slice_spacing": 5.0, "air_offset": 40.0, "portal_vein_over_liver": 500.0}  # no training range
    failed = acquisition.failed_checks(unlike, ranges)
    assert [(check.field, value) for check, value in failed] == [("slice_spacing", 5.0), ("air_offset", 40.0)]
    lines = acquisition.acquisition_warnings(unlike, ranges)
    assert [line.split(":")[0] for line in lines] == ["spacing", "HU calibration"]
    assert "slice spacing 5 mm lies outside the training scans' 1–2 mm (margin 25%)" in lines[0]
    assert acquisition.failed_checks({**unlike, "slice_spacing": None, "air_offset": float("nan")}, ranges) == []


def test_the_bundle_keeps_the_training_ranges_and_an_older_bundle_has_none():
    rng = np.random.default_rng(0)
    matrices = {"clinical": rng.standard_normal((40, 3))}
    spacing = np.linspace(0.6, 0.9, 40)
    reference = fit_ood(matrices, np.arange(40) % 4, {"in_plane_spacing": spacing, "air_offset": np.full(40, np.nan)})
    assert reference.acquisition == {"in_plane_spacing": [0.6, 0.9]}  # a descriptor never read has no range
    again = OodReference.from_dict(reference.to_dict())
    assert again.acquisition == reference.acquisition
    assert again.acquisition_flagged({"in_plane_spacing": np.array([0.7, 2.0, np.nan])}) == [[], ["spacing"], []]
    older = reference.to_dict()
    del older["acquisition"]
    assert OodReference.from_dict(older).acquisition_warnings({"in_plane_spacing": 5.0}) == []


def test_segment_stores_each_scans_acquisition(few):
    with open_store(few.seg) as h5:
        table = read_named_table(h5, ACQUISITION)
    assert list(table) == list(acquisition.FIELDS)
    for row, (_, patient) in enumerate(read_cohort(few.cohort_csv).iterrows()):
        spacing = read_ct(patient["ct"]).GetSpacing()
        assert table["in_plane_spacing"][row] == np.float32((spacing[0] + spacing[1]) / 2)
        assert table["slice_spacing"][row] == np.float32(spacing[2])
    assert np.all(np.abs(table["air_offset"]) < 30) and np.all(table["liver_attenuation"] > 50)
