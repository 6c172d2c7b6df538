"""DICOM folders: a series is never chosen silently, and a missing or duplicated slice file is an error."""

from __future__ import annotations

import locale
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from conftest import REAL_CT, UID_ROOT, Pipeline, invoke, rewrite_dicom_slice, shared_data, write_dicom_series
from tipsprog import store
from tipsprog.errors import InputError
from tipsprog.images import read_ct, read_mask
from tipsprog.radiomics.extract import extract_from_file
from tipsprog.radiomics.params import PRESETS
from tipsprog.segment.masks import TOTALSEGMENTATOR_IDS, map_labels

SCAN_UID, OTHER_UID = f"{UID_ROOT}.2", f"{UID_ROOT}.10"  # GDCM lists .10 first: the series read silently before


@pytest.fixture(scope="module")
def raw() -> sitk.Image:
    """The real 30-slice CT (3 mm) as stored."""
    shared_data(REAL_CT)
    return sitk.ReadImage(str(REAL_CT / "example_ct_sm.nii.gz"))


def _other_scan(raw: sitk.Image) -> sitk.Image:
    """Another patient's scan: a cropped copy of the real CT shifted 40 mm up."""
    other = raw[10:110, 5:95, 4:20]
    other.SetOrigin([o + shift for o, shift in zip(other.GetOrigin(), (0.0, 0.0, 40.0))])
    return other


@pytest.fixture(scope="module")
def two_series(raw: sitk.Image, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the real scan ('ABD PV 3.0') and another scan ('OTHER')."""
    folder = tmp_path_factory.mktemp("dicom") / "two"
    write_dicom_series(raw, folder, 2, "ABD PV 3.0")
    return write_dicom_series(_other_scan(raw), folder, 10, "OTHER")


def _same_image(read: sitk.Image, expected: sitk.Image) -> None:
    """Voxels, spacing and origin of a read CT equal those of the canonical expected image."""
    expected = sitk.DICOMOrient(sitk.Cast(expected, sitk.sitkFloat32), "LPS")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(expected))
    np.testing.assert_allclose(read.GetSpacing(), expected.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(read.GetOrigin(), expected.GetOrigin(), atol=1e-3)


def _single(raw: sitk.Image, folder: Path) -> Path:
    """The real scan alone as a DICOM series in `folder`."""
    return write_dicom_series(raw, folder, 2, "ABD PV 3.0")


def test_two_series_without_a_choice_is_an_error_listing_both(two_series):
    with pytest.raises(InputError) as caught:
        read_ct(two_series)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{two_series}: folder holds 2 DICOM series")
    assert "'series_uid'" in message and "--series" in message
    assert f"{SCAN_UID} (30 slices, 'ABD PV 3.0')" in message and f"{OTHER_UID} (16 slices, 'OTHER')" in message


def test_the_chosen_series_is_read(two_series, raw):
    _same_image(read_ct(two_series, SCAN_UID), raw)
    _same_image(read_ct(two_series, OTHER_UID), _other_scan(raw))


def test_a_chosen_series_not_in_the_folder_is_an_error_listing_those_found(two_series, raw, tmp_path):
    with pytest.raises(InputError, match=f"series {UID_ROOT}.7 is not in the folder, which holds") as caught:
        read_ct(two_series, f"{UID_ROOT}.7")
    assert f"{SCAN_UID} (30 slices, 'ABD PV 3.0')" in str(caught.value) and OTHER_UID in str(caught.value)
    single = _single(raw, tmp_path / "one")
    _same_image(read_ct(single), raw)
    _same_image(read_ct(single, SCAN_UID), raw)
    with pytest.raises(InputError, match=f"{single}: DICOM series {OTHER_UID} is not in the folder"):
        read_ct(single, OTHER_UID)


def test_intact_series_reads_with_its_spacing(raw, tmp_path):
    image = read_ct(_single(raw, tmp_path / "one"))
    assert image.GetSize() == (122, 101, 30)
    np.testing.assert_allclose(image.GetSpacing(), (3.0, 3.0, 3.0), atol=1e-4)
    _same_image(image, raw)


def test_reading_a_series_keeps_the_process_locale(raw, tmp_path):
    """GDCM leaves the C library's locale at 'C'; after that Python read every text file as ASCII (a report with an
    en dash failed to load). Reading a series must leave the locale as it found it."""
    folder = _single(raw, tmp_path / "one")
    before = locale.setlocale(locale.LC_ALL)
    read_ct(folder)
    assert locale.setlocale(locale.LC_ALL) == before
    (tmp_path / "dash.txt").write_bytes("0.6–0.8".encode())
    assert open(tmp_path / "dash.txt").read() == "0.6–0.8"  # the locale's encoding, as the tests and users read files


def _slice_z(raw: sitk.Image, index: int) -> float:
    """Position of a slice along the scan's normal (z here)."""
    return raw.TransformIndexToPhysicalPoint((0, 0, index))[2]


def test_missing_slice_file_is_an_error_naming_the_gap(raw, tmp_path):
    folder = _single(raw, tmp_path / "gap")
    (folder / "s2_014.dcm").unlink()
    with pytest.raises(InputError) as caught:
        read_ct(folder)
    message = str(caught.value)
    assert "\n" not in message
    assert message == (
        f"{folder}: DICOM series {SCAN_UID} has a gap between slices at {_slice_z(raw, 13):.1f} and "
        f"{_slice_z(raw, 15):.1f} mm (spacing 3 mm elsewhere): a slice file is missing"
    )


def test_duplicated_slice_is_an_error(raw, tmp_path):
    folder = _single(raw, tmp_path / "duplicate")
    rewrite_dicom_slice(folder / "s2_014.dcm", folder / "s2_014_copy.dcm", {"0008|0018": f"{UID_ROOT}.2.14.1"})
    with pytest.raises(InputError, match=f"{SCAN_UID} has two slices at {_slice_z(raw, 14):.1f} mm"):
        read_ct(folder)


def test_slightly_uneven_slices_read_without_itk_warnings(raw, tmp_path, capfd):
    folder = _single(raw, tmp_path / "jitter")
    x, y, z = raw.TransformIndexToPhysicalPoint((0, 0, 14))
    rewrite_dicom_slice(folder / "s2_014.dcm", folder / "s2_014.dcm", {"0020|0032": f"{x}\\{y}\\{z + 0.2}"})
    capfd.readouterr()
    assert read_ct(folder).GetSize() == (122, 101, 30)
    assert capfd.readouterr().err == ""


def test_segment_reads_the_cohort_series_uid(two_series, tmp_path):
    sitk.WriteImage(sitk.ReadImage(str(REAL_CT / "example_ct_sm.nii.gz")), str(tmp_path / "scan.nii.gz"))
    pd.DataFrame(
        {
            "patient_id": ["chosen", "unchosen", "nifti"],
            "ct": [str(two_series), str(two_series), "scan.nii.gz"],
            "series_uid": [SCAN_UID, "", ""],
        }
    ).to_csv(tmp_path / "cohort.csv", index=False)
    result = invoke("segment", tmp_path / "cohort.csv", "--out", tmp_path / "seg.h5", "--workers", 1, "--quiet")
    assert result.exit_code == 0, result.output
    with store.open_store(tmp_path / "seg.h5") as seg:
        _, reasons = store.read_qc(seg)
        assert "folder holds 2 DICOM series" in reasons[1]
        assert "DICOM" not in reasons[0]
        np.testing.assert_array_equal(
            sitk.GetArrayFromImage(store.patient_mask(seg, "chosen")), sitk.GetArrayFromImage(store.patient_mask(seg, "nifti"))
        )


def test_radiomics_reread_the_chosen_series(two_series, tmp_path):
    sitk.WriteImage(
        map_labels(sitk.ReadImage(str(REAL_CT / "example_seg.nii.gz")), TOTALSEGMENTATOR_IDS), str(tmp_path / "labels.nii.gz")
    )
    labels = read_mask(tmp_path / "labels.nii.gz", read_ct(two_series, SCAN_UID))
    from_file = extract_from_file(str(REAL_CT / "example_ct_sm.nii.gz"), labels, PRESETS["fast"])
    assert extract_from_file(str(two_series), labels, PRESETS["fast"], SCAN_UID) == from_file
    with pytest.raises(InputError, match="folder holds 2 DICOM series"):
        extract_from_file(str(two_series), labels, PRESETS["fast"])


def test_predict_series_option(pipeline: Pipeline, two_series, tmp_path):
    row = tmp_path / "row.csv"
    pd.read_csv(pipeline.clinical).iloc[[0]].to_csv(row, index=False)
    args = ["predict", "--ct", two_series, "--clinical", row, "--model", pipeline.bundle, "--json"]
    unchosen = invoke(*args)
    assert unchosen.exit_code == 2 and "folder holds 2 DICOM series" in unchosen.output, unchosen.output
    absent = invoke(*args, "--series", f"{UID_ROOT}.7")
    assert absent.exit_code == 2 and f"series {UID_ROOT}.7 is not in the folder" in absent.output, absent.output
    chosen = invoke(*args, "--series", SCAN_UID)
    assert chosen.exit_code == 0 or "failed quality control" in chosen.output, chosen.output
    assert "DICOM series" not in chosen.output
