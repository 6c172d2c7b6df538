"""Main portal vein diameter and volume: tube phantoms of known radius, any orientation, what must not be measured,
the segment store and predict's record, and IRCAD's manual masks of a real portal-venous CT."""

import math

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from conftest import REAL_CT, shared_data
from tipsprog.images import read_ct, read_mask
from tipsprog.predict import portal_vein_line, portal_vein_record
from tipsprog.segment import SegmentOptions, run_segment
from tipsprog.segment.crops import roi_volumes
from tipsprog.segment.portal import PORTAL_VEIN_FIELDS, PortalVein, portal_vein_measurements
from tipsprog.store import PORTAL_VEIN, open_store, patient_mask, read_named_table
from tipsprog.synth import CohortSpec, make_cohort

IRCADB = REAL_CT.parent / "ircadb-1.1"  # CC BY-NC-ND: read in place from ../shared, never copied

# Phantom in LPS mm (x to the patient's left, y posterior, z head): splenic and superior mesenteric veins join at the
# confluence (origin); the trunk (radius 6 mm) runs up and to the right to the hilum at the liver's edge, where it
# splits into a right and a left branch inside the liver.
SPACING = (0.8, 0.7, 2.0)
LOWER, UPPER = np.array([-95.0, -30.0, -70.0]), np.array([100.0, 30.0, 80.0])
CONFLUENCE, HILUM = (0.0, 0.0, 0.0), (-35.0, 5.0, 35.0)
TRUNK_RADIUS = 6.0
TRUNK = (CONFLUENCE, HILUM, TRUNK_RADIUS)
SPLENIC = ((90.0, 20.0, 10.0), CONFLUENCE, 4.5)
MESENTERIC = ((0.0, -5.0, -60.0), CONFLUENCE, 5.0)
BRANCHES = [(HILUM, (-85.0, 10.0, 30.0), 4.5), (HILUM, (-40.0, -20.0, 70.0), 4.0)]
Y_TUBES = [TRUNK, SPLENIC, MESENTERIC, *BRANCHES]
LIVER = ((-80.0, 0.0, 60.0), (55.0, 70.0, 50.0))  # centre and radii of an ellipsoid


def _capsule_distance(points: list[np.ndarray], start: tuple, end: tuple) -> np.ndarray:
    """Distance of points (x, y, z arrays) from the segment start–end."""
    axis = np.subtract(end, start)
    relative = [p - s for p, s in zip(points, start)]
    t = np.clip(sum(r * a for r, a in zip(relative, axis)) / float(axis @ axis), 0.0, 1.0)
    return np.sqrt(sum((r - t * a) ** 2 for r, a in zip(relative, axis)))


def _inside(points: list[np.ndarray], tubes: list[tuple]) -> np.ndarray:
    """Whether points lie in any of the tubes (capsules: start, end, radius)."""
    return np.any([_capsule_distance(points, start, end) < radius for start, end, radius in tubes], axis=0)


def phantom(tubes: list[tuple], liver: bool = True, spacing: tuple = SPACING) -> sitk.Image:
    """Labels (1 liver, 3 portal vein) of tubes and an ellipsoidal liver on an anisotropic LPS grid."""
    size = np.round((UPPER - LOWER) / spacing).astype(int) + 1
    x, y, z = (np.float32(LOWER[i] + spacing[i] * np.arange(size[i])) for i in range(3))
    points = [x[None, None, :], y[None, :, None], z[:, None, None]]
    labels = np.zeros(size[::-1], np.uint8)
    centre, radii = LIVER
    if liver:
        labels[sum(((p - c) / r) ** 2 for p, c, r in zip(points, centre, radii)) < 1.0] = 1
    labels[_inside(points, tubes)] = 3
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing(spacing)
    image.SetOrigin(tuple(LOWER))
    return image


def true_volume_ml(tubes: list[tuple], count: int = 1_000_000) -> float:
    """Volume of the union of the tubes (Monte Carlo, about 1 % standard error)."""
    low = np.min([np.minimum(s, e) - r for s, e, r in tubes], axis=0)
    high = np.max([np.maximum(s, e) + r for s, e, r in tubes], axis=0)
    points = low + (high - low) * np.random.default_rng(0).random((count, 3))
    return float(_inside(list(points.T), tubes).mean() * np.prod(high - low) / 1000.0)


@pytest.fixture(scope="module")
def y_phantom() -> sitk.Image:
    return phantom(Y_TUBES)


@pytest.fixture(scope="module")
def y_measured(y_phantom) -> PortalVein:
    return portal_vein_measurements(y_phantom)


def test_y_phantom_diameter_length_and_volume(y_phantom, y_measured):
    measured = y_measured
    truth = true_volume_ml(Y_TUBES)
    print(
        f"Y phantom: diameter {measured.main_diameter_mm:.2f} mm (true {2 * TRUNK_RADIUS:.0f}), trunk "
        f"{measured.main_length_mm:.1f} mm, volume {measured.volume_ml:.2f} mL (true {truth:.2f}), extrahepatic "
        f"{measured.extrahepatic_volume_ml:.2f} mL"
    )
    assert measured.main_diameter_mm == pytest.approx(2 * TRUNK_RADIUS, abs=1.0)
    straight = math.dist(CONFLUENCE, HILUM)
    assert straight - 5.0 <= measured.main_length_mm <= straight + 10.0  # centreline steps and junction offsets
    assert measured.volume_ml == pytest.approx(truth, rel=0.03)
    assert measured.volume_ml == pytest.approx(float(roi_volumes(y_phantom)[2]))
    assert 0.5 * measured.volume_ml < measured.extrahepatic_volume_ml < 0.9 * measured.volume_ml


@pytest.mark.parametrize("orientation", ["RAS", "ASL", "IRP"])
def test_measurements_do_not_depend_on_the_scan_orientation(y_phantom, y_measured, orientation):
    """The same phantom with its axes flipped and permuted, and that image re-oriented to LPS again (as read_ct
    does): the diameter changes by at most 0.5 mm."""
    reference = y_measured
    turned = sitk.DICOMOrient(y_phantom, orientation)
    assert turned.GetDirection() != y_phantom.GetDirection()
    for image in (turned, sitk.DICOMOrient(turned, "LPS")):
        measured = portal_vein_measurements(image)
        assert abs(measured.main_diameter_mm - reference.main_diameter_mm) <= 0.5
        assert measured.volume_ml == pytest.approx(reference.volume_ml)


def test_l_phantom_without_mesenteric_vein_or_bifurcation():
    """Splenic vein and a trunk that runs on into the liver unbranched (no confluence or bifurcation to find): the
    diameter is measured 10–30 mm upstream of where the trunk enters the liver; no length."""
    tubes = [TRUNK, SPLENIC, (HILUM, (-80.0, 10.0, 40.0), TRUNK_RADIUS)]
    measured = portal_vein_measurements(phantom(tubes))
    print(f"L phantom: diameter {measured.main_diameter_mm:.2f} mm, volume {measured.volume_ml:.2f} mL")
    assert measured.main_diameter_mm == pytest.approx(2 * TRUNK_RADIUS, abs=1.0)
    assert np.isnan(measured.main_length_mm)
    assert measured.volume_ml == pytest.approx(true_volume_ml(tubes), rel=0.03)


def _pieces(start: tuple, end: tuple, radius: float, count: int) -> list[tuple]:
    """A tube cut into `count` separate pieces."""
    a, b = np.array(start), np.array(end)
    cuts = np.linspace(0.0, 1.0, 2 * count)
    return [(tuple(a + (b - a) * cuts[i]), tuple(a + (b - a) * cuts[i + 1]), radius) for i in range(0, 2 * count, 2)]


@pytest.mark.parametrize(
    "case",
    [
        "empty",
        "no liver",
        "fragments",
        "intrahepatic only",
        "thin trunk",
        "coarse grid",
        "mirrored head to feet",
        "mirrored left to right",
    ],
)
def test_no_diameter_where_no_trunk_can_be_identified(y_phantom, case):
    """NaN, never a number from something that is not the trunk (a mirrored phantom: a trunk that does not run up
    and to the patient's right into the liver is not one)."""
    if case.startswith("mirrored"):  # the same grid, the anatomy mirrored in it
        array = sitk.GetArrayFromImage(y_phantom)
        labels = sitk.GetImageFromArray(array[::-1] if case.endswith("feet") else array[:, :, ::-1])
        labels.CopyInformation(y_phantom)
    elif case == "empty":
        labels = phantom([], liver=True)
    elif case == "no liver":
        labels = phantom(Y_TUBES, liver=False)
    elif case == "fragments":  # the trunk and splenic vein in short separate pieces, the branches missing
        labels = phantom(_pieces(CONFLUENCE, HILUM, TRUNK_RADIUS, 4) + _pieces(*SPLENIC, 5))
    elif case == "intrahepatic only":
        labels = phantom(BRANCHES)
    elif case == "thin trunk":  # a thick vessel in the liver fed by a thin one: the thin one is no trunk
        labels = phantom([(CONFLUENCE, HILUM, 3.0), (HILUM, (-80.0, 10.0, 40.0), 7.0), SPLENIC])
    else:
        grid = sitk.Image([int(n) for n in np.ceil((UPPER - LOWER) / (1.0, 1.0, 6.0)) + 1], sitk.sitkUInt8)
        grid.SetSpacing((1.0, 1.0, 6.0))
        grid.SetOrigin(tuple(LOWER))
        labels = sitk.Resample(y_phantom, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    measured = portal_vein_measurements(labels)
    assert np.isnan(measured.main_diameter_mm) and np.isnan(measured.main_length_mm)
    assert np.isnan(measured.volume_ml) == (case == "empty")
    if case != "empty":
        assert measured.volume_ml == pytest.approx(float(roi_volumes(labels)[2]))


def test_predict_record_and_line():
    record = portal_vein_record(PortalVein(12.345, np.nan, 40.0, 30.0))
    assert record == {"main_diameter_mm": 12.3, "main_length_mm": None, "volume_ml": 40.0, "extrahepatic_volume_ml": 30.0}
    assert portal_vein_line(record) == "main portal vein diameter 12.3 mm, volume 40.0 mL"
    assert portal_vein_line(portal_vein_record(PortalVein())) == "main portal vein diameter not measured, volume not measured"


def test_segment_store_keeps_the_measurements_per_patient(tmp_path, y_phantom):
    """A synthetic patient and the Y phantom (labels given, 'masks' backend): /segment/portal_vein holds one named
    column per measurement, one row per patient, as measured on each label image."""
    make_cohort(tmp_path / "c", CohortSpec(n=1, centers=1, seed=5))
    ct = sitk.Image(y_phantom.GetSize(), sitk.sitkInt16)
    ct.CopyInformation(y_phantom)
    sitk.WriteImage(ct, str(tmp_path / "c" / "phantom_ct.nii.gz"))
    sitk.WriteImage(y_phantom, str(tmp_path / "c" / "phantom_labels.nii.gz"))
    cohort = pd.read_csv(tmp_path / "c" / "cohort.csv")
    cohort.loc[1] = ["Y", "phantom_ct.nii.gz", "C1", "phantom_labels.nii.gz"]
    cohort.to_csv(tmp_path / "c" / "cohort.csv", index=False)
    results = run_segment(tmp_path / "c" / "cohort.csv", tmp_path / "seg.h5", SegmentOptions("masks"))
    with open_store(tmp_path / "seg.h5") as h5:
        stored = read_named_table(h5, PORTAL_VEIN)
        expected = [portal_vein_measurements(patient_mask(h5, pid)) for pid in ("P0000", "Y")]
    assert list(stored) == list(PORTAL_VEIN_FIELDS) and all(len(column) == 2 for column in stored.values())
    for row in range(2):
        np.testing.assert_allclose([stored[name][row] for name in PORTAL_VEIN_FIELDS], expected[row].as_array(), rtol=1e-5)
        np.testing.assert_allclose(results[row].portal_vein.as_array(), expected[row].as_array())
    assert np.isfinite(stored["volume_ml"]).all()
    assert stored["main_diameter_mm"][1] == pytest.approx(2 * TRUNK_RADIUS, abs=1.0)


@pytest.mark.slow
def test_ircad_manual_masks_give_an_anatomical_trunk():
    """IRCAD's manual liver and portal-vein masks (the whole portal venous system, 0.57 × 0.57 × 1.6 mm): the trunk
    from the confluence to the hilar bifurcation. Measured 16.5 mm (the trunk's cross-section is oval, about
    20 × 14 mm; its maximal inscribed diameter is about 12.7 mm), 62 mm long, 53.8 mL."""
    folder = shared_data(IRCADB)
    ct = read_ct(folder / "ct.nii.gz")
    array = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8)
    for name, label in (("liver", 1), ("spleen", 2), ("portalvein", 3)):
        array[sitk.GetArrayFromImage(read_mask(folder / f"{name}.nii.gz", ct)) > 0] = label
    labels = sitk.GetImageFromArray(array)
    labels.CopyInformation(ct)
    measured = portal_vein_measurements(labels)
    print(
        f"IRCAD 1.1: main portal vein diameter {measured.main_diameter_mm:.2f} mm, trunk {measured.main_length_mm:.1f} mm, "
        f"volume {measured.volume_ml:.2f} mL ({measured.extrahepatic_volume_ml:.2f} mL extrahepatic)"
    )
    assert 10.0 <= measured.main_diameter_mm <= 20.0
    assert 40.0 <= measured.main_length_mm <= 90.0
    assert measured.volume_ml == pytest.approx(float(roi_volumes(labels)[2]))
    assert 0.3 * measured.volume_ml < measured.extrahepatic_volume_ml < measured.volume_ml
