"""`tipsprog export`: the store's masks as NIfTI on each CT's own grid, equal to the store's voxel for voxel, with the
compartments the biomarkers measured."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from conftest import invoke
from tipsprog import store
from tipsprog.images import canonical
from tipsprog.segment.biomarkers import COMPARTMENT_LABELS
from tipsprog.segment.biomarkers import NAMES as BIOMARKER_NAMES
from tipsprog.store import ROI_LABELS


@pytest.fixture(scope="module")
def reoriented_store(pipeline, tmp_path_factory) -> tuple:
    """Two synthetic patients whose CT files are stored in other orientations (RAS, PIR), segmented."""
    root = tmp_path_factory.mktemp("export")
    cohort = pd.read_csv(pipeline.cohort / "cohort.csv", dtype=str).head(2)
    for row, orientation in zip(cohort.itertuples(), ("RAS", "PIR")):
        path = root / f"{row.patient_id}.nii.gz"
        sitk.WriteImage(sitk.DICOMOrient(sitk.ReadImage(str(pipeline.cohort / row.ct)), orientation), str(path))
        cohort.loc[row.Index, "ct"] = str(path)
    cohort[["patient_id", "ct"]].to_csv(root / "cohort.csv", index=False)
    result = invoke("segment", root / "cohort.csv", "--out", root / "seg.h5", "--workers", 1, "--quiet")
    assert result.exit_code == 0, result.output
    return root, cohort


def test_exported_masks_lie_on_the_ct_grid_and_equal_the_store(reoriented_store):
    root, cohort = reoriented_store
    result = invoke("export", root / "seg.h5", "--out", root / "masks", "--dicom-seg")
    assert result.exit_code == 0 and "DICOM SEG for 0 of 2 patients" in result.output, result.output
    table = pd.read_csv(root / "masks" / "labels.csv")
    assert dict(zip(table["name"], table["label"])) == {**ROI_LABELS, **COMPARTMENT_LABELS}
    assert (root / "masks" / "slicer_labels.ctbl").is_file() and (root / "masks" / "itksnap_labels.txt").is_file()
    with store.open_store(root / "seg.h5") as h5:
        biomarkers = store.read_features(h5)["biomarkers"]
        for index, row in enumerate(cohort.itertuples()):
            ct = sitk.ReadImage(row.ct)
            exported = sitk.ReadImage(str(root / "masks" / f"{row.patient_id}_labels.nii.gz"))
            assert exported.GetSize() == ct.GetSize()
            np.testing.assert_allclose(exported.GetDirection(), ct.GetDirection(), atol=1e-6)
            np.testing.assert_allclose(exported.GetOrigin(), ct.GetOrigin(), atol=1e-4)
            stored = sitk.GetArrayFromImage(store.patient_mask(h5, row.patient_id))
            back = sitk.GetArrayFromImage(canonical(exported))
            for label in ROI_LABELS.values():
                both = ((back == label) & (stored == label)).sum()
                total = (back == label).sum() + (stored == label).sum()
                assert total == 0 or 2 * both / total == 1.0
            measured = dict(zip(BIOMARKER_NAMES, biomarkers.values[index]))  # the muscle exported is what was measured
            slab = np.flatnonzero((back == COMPARTMENT_LABELS["subcutaneous_fat"]).any(axis=(1, 2)))
            pixel_cm2 = np.prod(canonical(exported).GetSpacing()[:2]) / 100.0
            muscle_cm2 = (back[slab] == COMPARTMENT_LABELS["skeletal_muscle"]).sum() * pixel_cm2 / len(slab)
            assert len(slab) >= 1 and muscle_cm2 == pytest.approx(measured["muscle/l3_area[cm2]"], rel=1e-5)
            assert (root / "masks" / f"{row.patient_id}_qc.png").stat().st_size > 0


def test_export_without_its_ct_writes_nothing(reoriented_store, tmp_path):
    root, _ = reoriented_store
    moved, missing = tmp_path / "seg.h5", tmp_path / "gone.nii.gz"
    moved.write_bytes((root / "seg.h5").read_bytes())
    with h5py.File(moved, "r+") as h5:
        h5["segment/ct_paths"][1] = str(missing)  # the second patient's CT was moved away
    result = invoke("export", moved, "--out", tmp_path / "masks")
    assert result.exit_code == 2 and str(missing) in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "masks").exists()


@pytest.fixture(scope="module")
def dicom_store(pipeline, tmp_path_factory) -> tuple:
    """A synthetic patient's CT written as a DICOM series (stored RAS), segmented from the series."""
    from conftest import write_dicom_series

    root = tmp_path_factory.mktemp("dicom-export")
    ct = sitk.ReadImage(str(pipeline.cohort / "images" / "P0000.nii.gz"))
    folder = write_dicom_series(sitk.DICOMOrient(ct, "RAS"), root / "series")
    pd.DataFrame({"patient_id": ["P0000"], "ct": [str(folder)]}).to_csv(root / "cohort.csv", index=False)
    assert invoke("segment", root / "cohort.csv", "--out", root / "seg.h5", "--quiet").exit_code == 0
    return root, folder


def test_a_dicom_input_gets_a_dicom_seg_equal_to_its_nifti_export(dicom_store, tmp_path):
    """--dicom-seg: a CT read from a DICOM series gets <patient>_seg.dcm, a binary segment per ROI referencing each
    source slice, equal voxel for voxel to the labels exported as NIfTI (read back with highdicom)."""
    import highdicom as hd
    import pydicom

    root, folder = dicom_store
    result = invoke("export", root / "seg.h5", "--out", tmp_path / "masks", "--dicom-seg", "--no-montage")
    assert result.exit_code == 0 and "DICOM SEG for 1 of 1 patients" in result.output, result.output
    seg = hd.seg.segread(tmp_path / "masks" / "P0000_seg.dcm")
    nifti = sitk.ReadImage(str(tmp_path / "masks" / "P0000_labels.nii.gz"))
    found = {roi: label for roi, label in ROI_LABELS.items() if (sitk.GetArrayViewFromImage(nifti) == label).any()}
    assert [s.SegmentLabel for s in seg.SegmentSequence] == list(found) and {"liver", "spleen"} <= set(found)
    sources = sorted(folder.glob("*.dcm"))
    uids = [pydicom.dcmread(path).SOPInstanceUID for path in sources]
    frames = seg.get_pixels_by_source_instance(uids, segment_numbers=list(range(1, len(found) + 1)))
    for frame, path in zip(frames, sources):  # [rows, columns, segments] of each source slice
        position = [float(v) for v in pydicom.dcmread(path).ImagePositionPatient]
        plane = sitk.GetArrayViewFromImage(nifti)[round(nifti.TransformPhysicalPointToContinuousIndex(position)[2])]
        for segment, label in enumerate(found.values()):
            np.testing.assert_array_equal(frame[..., segment] > 0, plane == label)


def test_a_dicom_seg_of_a_series_without_a_frame_of_reference_is_one_line(dicom_store, tmp_path):
    """A series whose slices lack the Frame of Reference UID (the SEG IOD needs it to reference them): exit 2 with
    one line naming the folder, nothing written."""
    import pydicom

    root, folder = dicom_store
    copy = tmp_path / "series"
    copy.mkdir()
    for path in folder.glob("*.dcm"):
        dataset = pydicom.dcmread(path)
        del dataset.FrameOfReferenceUID
        dataset.save_as(copy / path.name)
    moved = tmp_path / "seg.h5"
    moved.write_bytes((root / "seg.h5").read_bytes())
    with h5py.File(moved, "r+") as h5:
        h5["segment/ct_paths"][0] = str(copy)
    result = invoke("export", moved, "--out", tmp_path / "masks", "--dicom-seg", "--no-montage")
    assert result.exit_code == 2 and str(copy) in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "masks").exists()


def test_a_dicom_input_whose_masks_hold_no_roi_gets_no_dicom_seg(dicom_store, tmp_path):
    """A SEG needs at least one segment: masks with no ROI write none, and the count says so."""
    root, _ = dicom_store
    empty = tmp_path / "seg.h5"
    empty.write_bytes((root / "seg.h5").read_bytes())
    with h5py.File(empty, "r+") as h5:
        h5["segment/masks/P0000"][...] = 0
    result = invoke("export", empty, "--out", tmp_path / "masks", "--dicom-seg", "--no-montage", "--no-compartments")
    assert result.exit_code == 0 and "DICOM SEG for 0 of 1 patients" in result.output, result.output
    assert not (tmp_path / "masks" / "P0000_seg.dcm").exists() and (tmp_path / "masks" / "P0000_labels.nii.gz").is_file()
