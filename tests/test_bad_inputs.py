"""Every bad input exits 2 with one line naming the file and row or field, and writes nothing."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from conftest import REAL_CT, Pipeline, invoke, shared_data, start_tipsprog, wait_until_paused
from tipsprog import outputs
from tipsprog.fusion.bundle import BUNDLE_FORMAT
from tipsprog.images import read_ct


def _one_row(pipeline: Pipeline, folder: Path) -> Path:
    row = folder / "row.csv"
    pd.read_csv(pipeline.clinical).iloc[[0]].to_csv(row, index=False)
    return row


def _predict(pipeline: Pipeline, folder: Path, ct: Path) -> list:
    return ["predict", "--ct", ct, "--clinical", _one_row(pipeline, folder), "--model", pipeline.bundle]


def missing_ct(p, d):
    return _predict(p, d, d / "nope.nii.gz"), "nope.nii.gz: CT file not found"


def unreadable_ct(p, d):
    (d / "junk.nii.gz").write_bytes(b"not an image at all")
    return _predict(p, d, d / "junk.nii.gz"), "junk.nii.gz: cannot read CT"


def ct_not_3d(p, d):
    sitk.WriteImage(sitk.Image(32, 32, sitk.sitkInt16), str(d / "flat.nii.gz"))
    return _predict(p, d, d / "flat.nii.gz"), "flat.nii.gz: CT must be a 3-D scalar image"


def truncated_gzip_ct(p, d):
    whole = (p.cohort / "images" / "P0000.nii.gz").read_bytes()
    (d / "cut.nii.gz").write_bytes(whole[: len(whole) // 2])
    return _predict(p, d, d / "cut.nii.gz"), "cut.nii.gz: cannot read CT (compressed file is truncated or corrupt"


def nan_voxels_in_nifti(p, d):
    """ITK's NIfTI reader turns stored NaNs into zeros; tipsprog must not."""
    image = sitk.ReadImage(str(p.cohort / "images" / "P0000.nii.gz"), sitk.sitkFloat32)
    values = sitk.GetArrayFromImage(image)
    values[5, :4, :4] = np.nan
    broken = sitk.GetImageFromArray(values)
    broken.CopyInformation(image)
    sitk.WriteImage(broken, str(d / "holes.nii.gz"))
    return _predict(p, d, d / "holes.nii.gz"), "holes.nii.gz: CT has 16 non-finite (NaN or infinite) voxels"


def four_d_ct(p, d):
    image = sitk.ReadImage(str(p.cohort / "images" / "P0000.nii.gz"))
    sitk.WriteImage(sitk.JoinSeries([image, image]), str(d / "series.nii.gz"))
    return _predict(p, d, d / "series.nii.gz"), "series.nii.gz: CT must be a 3-D scalar image, got 4-D"


def zero_sized_axis(p, d):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 10, 10), np.int16)), str(d / "whole.nii"))
    header = bytearray((d / "whole.nii").read_bytes()[:352])
    struct.pack_into("<h", header, 46, 0)  # NIfTI dim[3] = 0 slices
    (d / "empty.nii").write_bytes(bytes(header))
    (d / "whole.nii").unlink()
    return _predict(p, d, d / "empty.nii"), "empty.nii: CT must have at least 2 voxels along every axis"


def pelvis_only_ct(p, d):
    """The real CT's bottom 40 slices: hip bones, bladder and bowel, no liver. QC fails the scan, so no prediction."""
    sitk.WriteImage(read_ct(shared_data(REAL_CT) / "example_ct.nii.gz")[:, :, :40], str(d / "pelvis.nii.gz"))
    return _predict(p, d, d / "pelvis.nii.gz"), "pelvis.nii.gz: segmentation (classic) failed quality control: scan:pelvis_only"


def mask_outside_the_ct(p, d):
    image = sitk.ReadImage(str(p.cohort / "labels" / "P0000.nii.gz"))
    image.SetOrigin([v + 5000.0 for v in image.GetOrigin()])
    sitk.WriteImage(image, str(d / "elsewhere.nii.gz"))
    pd.DataFrame(
        {"patient_id": ["P0000"], "ct": [str(p.cohort / "images" / "P0000.nii.gz")], "label": [str(d / "elsewhere.nii.gz")]}
    ).to_csv(d / "cohort.csv", index=False)
    return (
        ["segment", d / "cohort.csv", "--out", d / "seg.h5", "--backend", "masks", "--strict"],
        "elsewhere.nii.gz: mask lies outside the CT",
    )


def missing_ct_strict_segment(p, d):
    cohort = pd.read_csv(p.cohort / "cohort.csv").head(2).drop(columns="label")
    cohort["ct"] = [str(d / "gone.nii.gz"), str(p.cohort / "images" / "P0001.nii.gz")]
    cohort.to_csv(d / "cohort.csv", index=False)
    return ["segment", d / "cohort.csv", "--out", d / "out.h5", "--strict", "--workers", 1], "patient P0000: "


def cohort_without_patient_id(p, d):
    pd.read_csv(p.cohort / "cohort.csv").drop(columns="patient_id").to_csv(d / "cohort.csv", index=False)
    return ["segment", d / "cohort.csv", "--out", d / "out.h5"], "cohort.csv: missing required column 'patient_id'"


def duplicate_ids(p, d):
    cohort = pd.read_csv(p.cohort / "cohort.csv").head(3)
    cohort.loc[2, "patient_id"] = "P0000"
    cohort.to_csv(d / "cohort.csv", index=False)
    return ["segment", d / "cohort.csv", "--out", d / "out.h5"], "cohort.csv: duplicate patient_id 'P0000'"


def _train(p, d, clinical=None, outcomes=None, stores=None):
    return [
        "fuse-train",
        *(stores or [p.radiomics]),
        "--clinical",
        clinical or p.clinical,
        "--outcomes",
        outcomes or p.outcomes,
        "--out",
        d / "out",
        "--folds",
        3,
    ]


def clinical_out_of_range(p, d):
    table = pd.read_csv(p.clinical)
    table.loc[3, "albumin"] = 900
    table.to_csv(d / "clinical.csv", index=False)
    return _train(p, d, clinical=d / "clinical.csv"), "clinical.csv: patient P0003: albumin=900"


def clinical_unknown_unit(p, d):
    table = pd.read_csv(p.clinical).rename(columns={"creatinine": "creatinine[stones]"})
    table.to_csv(d / "clinical.csv", index=False)
    return _train(p, d, clinical=d / "clinical.csv"), "clinical.csv: column 'creatinine[stones]': unknown unit 'stones'"


def _edited_outcomes(p, d, row: int, column: str, value: float) -> list:
    table = pd.read_csv(p.outcomes)
    table.loc[row, column] = value
    table.to_csv(d / "outcomes.csv", index=False)
    return _train(p, d, outcomes=d / "outcomes.csv")


def negative_time(p, d):
    return _edited_outcomes(p, d, 2, "time", -5), "outcomes.csv: patient P0002: time=-5: negative survival time"


def event_not_binary(p, d):
    return _edited_outcomes(p, d, 4, "event", 2), "outcomes.csv: patient P0004: event=2: event must be 0 or 1"


def store_of_other_schema(p, d):
    old = d / "old.h5"
    old.write_bytes(p.radiomics.read_bytes())
    with h5py.File(old, "a") as h5:
        h5.attrs["schema_version"] = 99
    return _train(p, d, stores=[old]), "old.h5: store schema_version 99"


def no_patient_in_common(p, d):
    table = pd.read_csv(p.outcomes)
    table["patient_id"] = "X" + table["patient_id"]
    table.to_csv(d / "outcomes.csv", index=False)
    return _train(p, d, outcomes=d / "outcomes.csv"), "outcomes.csv: no patient in common with"


def predict_clinical_out_of_range(p, d):
    row = pd.read_csv(p.clinical).iloc[[0]].assign(sodium=400)
    row.to_csv(d / "row.csv", index=False)
    return ["predict", "--ct", p.cohort / "images" / "P0000.nii.gz", "--clinical", d / "row.csv", "--model", p.bundle], "sodium"


def batch_patient_without_clinical_row(p, d):
    pd.read_csv(p.cohort / "cohort.csv").iloc[:2].assign(ct=lambda t: [str(p.cohort / c) for c in t["ct"]]).to_csv(
        d / "cohort.csv", index=False
    )
    pd.read_csv(p.clinical).iloc[[0]].to_csv(d / "clinical.csv", index=False)
    return (
        ["predict", "--cohort", d / "cohort.csv", "--clinical", d / "clinical.csv", "--model", p.bundle, "--out", d / "preds"],
        "clinical.csv: patient P0001 of the cohort has no clinical row",
    )


def bundle_of_an_older_format(p, d):
    shutil.copytree(p.bundle, d / "old")
    manifest = (d / "old" / "bundle.yaml").read_text().replace(f"bundle_format: {BUNDLE_FORMAT}", "bundle_format: 1")
    (d / "old" / "bundle.yaml").write_text(manifest)
    return [
        "predict",
        "--ct",
        p.cohort / "images" / "P0000.nii.gz",
        "--clinical",
        _one_row(p, d),
        "--model",
        d / "old",
    ], "bundle format 1"


def patient_id_escaping_the_folder(p, d):
    pd.DataFrame({"patient_id": ["../escape"], "ct": [str(p.cohort / "images" / "P0000.nii.gz")]}).to_csv(
        d / "cohort.csv", index=False
    )
    return ["segment", d / "cohort.csv", "--out", d / "seg.h5"], "row 2: patient_id '../escape' may not contain '/'"


def tampered_bundle(p, d):
    shutil.copytree(p.bundle, d / "model")
    with open(d / "model" / "model_card.md", "a", encoding="utf-8") as card:
        card.write("edited\n")
    return (
        ["predict", "--ct", p.cohort / "images" / "P0000.nii.gz", "--clinical", _one_row(p, d), "--model", d / "model"],
        "model_card.md does not match its recorded sha256",
    )


def output_being_written_by_another_command(p, d):
    (d / ".seg.h5.lock").write_text(f"{socket.gethostname()} {os.getpid()}")
    return [
        "segment",
        p.cohort / "cohort.csv",
        "--out",
        d / "seg.h5",
    ], f"another tipsprog command (pid {os.getpid()}) is writing it"


def clinical_column_like_a_schema_variable(p, d):
    pd.read_csv(p.clinical).rename(columns={"bilirubin": "bilirubn"}).to_csv(d / "clinical.csv", index=False)
    return _train(p, d, clinical=d / "clinical.csv"), "column 'bilirubn' looks like the schema variable 'bilirubin'"


def _slab(p, d, slices: int) -> Path:
    """The first synthetic scan cut to a few slices (a scan that cannot hold a whole liver)."""
    image = sitk.ReadImage(str(p.cohort / "images" / "P0000.nii.gz"))
    middle = image.GetSize()[2] // 2
    sitk.WriteImage(image[:, :, middle : middle + slices], str(d / "slab.nii.gz"))
    return d / "slab.nii.gz"


def three_slice_ct(p, d):
    return _predict(p, d, _slab(p, d, 3)), "failed quality control: liver:partial_view"


def masks_and_overlay_of_a_refused_scan(p, d):
    """No empty --save-masks or --overlay folder is left behind when the scan is refused."""
    args = _predict(p, d, _slab(p, d, 3))
    return [*args, "--save-masks", d / "masks", "--overlay", d / "overlays"], "liver:partial_view"


def radiomics_out_is_its_input(p, d):
    shutil.copyfile(p.seg, d / "seg.h5")
    return ["radiomics", d / "seg.h5", "--out", d / "seg.h5"], "seg.h5: is also an input of this command"


def evaluate_out_is_the_bundle(p, d):
    shutil.copytree(p.bundle, d / "model")
    return ["evaluate", d / "model", "--out", d / "model"], "model: is also an input of this command"


def out_holds_an_input(p, d):
    shutil.copytree(p.bundle, d / "model")
    return ["evaluate", d / "model", "--out", d], "holds an input of this command"


def out_under_a_file(p, d):
    (d / "afile").write_text("keep me")
    return ["evaluate", p.bundle, "--out", d / "afile" / "report"], "afile is a file"


def report_over_a_folder_of_other_files(p, d):
    (d / "photos").mkdir()
    (d / "photos" / "holiday.jpg").write_bytes(b"keep me")
    return ["evaluate", p.bundle, "--out", d / "photos"], "photos: exists and is not a previous evaluate report"


def store_over_a_csv(p, d):
    (d / "notes.csv").write_text("keep,me\n")
    return ["radiomics", p.seg, "--out", d / "notes.csv"], "notes.csv: exists and is not a previous HDF5 store"


def every_scan_failed(p, d):
    pd.DataFrame({"patient_id": ["A", "B"], "ct": [str(d / "gone.nii.gz"), str(d / "lost.nii.gz")]}).to_csv(
        d / "cohort.csv", index=False
    )
    return ["segment", d / "cohort.csv", "--out", d / "seg.h5"], "cohort.csv: no scan could be segmented (patient A: "


CASES = [
    missing_ct,
    unreadable_ct,
    ct_not_3d,
    truncated_gzip_ct,
    nan_voxels_in_nifti,
    four_d_ct,
    zero_sized_axis,
    pelvis_only_ct,
    mask_outside_the_ct,
    missing_ct_strict_segment,
    cohort_without_patient_id,
    duplicate_ids,
    clinical_out_of_range,
    clinical_unknown_unit,
    negative_time,
    event_not_binary,
    store_of_other_schema,
    no_patient_in_common,
    predict_clinical_out_of_range,
    batch_patient_without_clinical_row,
    bundle_of_an_older_format,
    patient_id_escaping_the_folder,
    tampered_bundle,
    output_being_written_by_another_command,
    clinical_column_like_a_schema_variable,
    three_slice_ct,
    masks_and_overlay_of_a_refused_scan,
    radiomics_out_is_its_input,
    evaluate_out_is_the_bundle,
    out_holds_an_input,
    out_under_a_file,
    report_over_a_folder_of_other_files,
    store_over_a_csv,
    every_scan_failed,
]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input(case, pipeline, tmp_path):
    args, fragment = case(pipeline, tmp_path)
    before = _tree(tmp_path)
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert fragment in errors[0]
    assert _tree(tmp_path) == before, "a file was changed, or output or temporary files were left behind"


def _tree(folder: Path) -> dict[str, str]:
    """Every file and folder under `folder` with the sha256 of each file's bytes."""
    return {str(p.relative_to(folder)): outputs.file_sha256(p) if p.is_file() else "folder" for p in folder.rglob("*")}


def test_good_inputs_of_the_same_shape_pass(pipeline, tmp_path):
    """The fixtures above differ from valid inputs only in the broken field."""
    table = pd.read_csv(pipeline.clinical).rename(columns={"bilirubin": "bilirubin[umol/L]"})
    table["bilirubin[umol/L]"] = table["bilirubin[umol/L]"] * 17.1
    table.to_csv(tmp_path / "clinical.csv", index=False)
    result = invoke(
        "fuse-train",
        pipeline.radiomics,
        "--clinical",
        tmp_path / "clinical.csv",
        "--outcomes",
        pipeline.outcomes,
        "--out",
        tmp_path / "model",
        "--folds",
        3,
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    assert np.isfinite(h5py.File(tmp_path / "model" / "oof.h5")["oof/risk"][()]).all()


def test_trust_uses_a_changed_bundle(pipeline, tmp_path):
    args, _ = tampered_bundle(pipeline, tmp_path)
    result = invoke(*args, "--trust", "--json")
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_two_commands_writing_one_output_one_wins_cleanly(few, tmp_path):
    """The second command stops at once with a clear line; the first writes a complete store; a lock left by a
    killed command is taken over; commands writing different outputs in one folder run side by side."""
    first = start_tipsprog("radiomics", few.seg, "--out", tmp_path / "rad.h5", "--workers", 1, "--quiet", pause_after=1)
    wait_until_paused(first)
    lock = tmp_path / ".rad.h5.lock"
    assert lock.exists()
    second = start_tipsprog("radiomics", few.seg, "--out", tmp_path / "rad.h5", "--quiet")
    assert second.wait() == 2 and "is writing it" in second.communicate()[0]
    first.send_signal(signal.SIGUSR1)
    assert first.wait() == 0, first.communicate()[0]
    with h5py.File(tmp_path / "rad.h5") as rad:
        assert rad["features/radiomics/values"].shape[0] == 6
    assert not lock.exists()

    lock = tmp_path / ".seg.h5.lock"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    lock.write_text(f"{socket.gethostname()} {dead}")
    others = [
        start_tipsprog("radiomics", few.seg, "--out", tmp_path / name, "--workers", 1, "--quiet") for name in ("a.h5", "b.h5")
    ]
    retaken = invoke("segment", few.cohort_csv, "--out", tmp_path / "seg.h5", "--quiet")
    assert retaken.exit_code == 0, retaken.output
    assert [p.wait() for p in others] == [0, 0]
    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "b.h5") as b:
        np.testing.assert_array_equal(a["features/radiomics/values"][()], b["features/radiomics/values"][()])
    assert not list(tmp_path.glob(".*.lock")) and not list(tmp_path.glob(".*.tmp"))


def test_strict_stop_keeps_finished_scans_for_resume(pipeline, tmp_path):
    """--strict stops at the first bad scan; the scans finished before it are kept, and once the row is fixed
    --resume segments only what is left."""
    cohort = pd.read_csv(pipeline.cohort / "cohort.csv").head(3).drop(columns="label")
    cohort["ct"] = [str(pipeline.cohort / c) for c in cohort["ct"]]
    good = cohort["ct"][1]
    cohort.loc[1, "ct"] = str(tmp_path / "gone.nii.gz")
    cohort.to_csv(tmp_path / "cohort.csv", index=False)
    stopped = invoke("segment", tmp_path / "cohort.csv", "--out", tmp_path / "seg.h5", "--strict", "--workers", 1)
    assert stopped.exit_code == 2 and "patient P0001: " in stopped.output
    assert "(1 finished scans kept for --resume)" in " ".join(stopped.output.split())
    assert not (tmp_path / "seg.h5").exists() and (tmp_path / "seg.h5.partial").exists()
    cohort.loc[1, "ct"] = good
    cohort.to_csv(tmp_path / "cohort.csv", index=False)
    resumed = invoke("segment", tmp_path / "cohort.csv", "--out", tmp_path / "seg.h5", "--strict", "--resume", "--quiet")
    assert resumed.exit_code == 0, resumed.output
    with h5py.File(tmp_path / "seg.h5") as seg, h5py.File(pipeline.seg) as whole:
        np.testing.assert_array_equal(seg["segment/volumes"][()], whole["segment/volumes"][:3])
    assert not (tmp_path / "seg.h5.partial").exists()
