"""radiomics: cropped extraction equals pyradiomics on the whole image; presets, tags, resume and Dask."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml

from conftest import interrupt_after, invoke
from tipsprog import store
from tipsprog.errors import InputError
from tipsprog.images import read_ct, read_mask
from tipsprog.journal import partial_path
from tipsprog.radiomics import RadiomicsOptions, run_radiomics
from tipsprog.radiomics.extract import extract_from_file, feature_group
from tipsprog.radiomics.params import PRESETS, crop_plan, load_params, make_extractor
from tipsprog.segment.masks import TOTALSEGMENTATOR_IDS, map_labels


def _uncropped(ct_path, label_path, params: dict) -> dict[str, float]:
    """What pyradiomics' own extractor gives on the image and label files, ROI by ROI."""
    extractor, values = make_extractor(params), {}
    present = np.unique(sitk.GetArrayViewFromImage(sitk.ReadImage(str(label_path))))
    for roi, label in store.ROI_LABELS.items():
        if label in present:
            for key, value in extractor.execute(str(ct_path), str(label_path), label=label).items():
                if not key.startswith("diagnostics_"):
                    values[f"{roi}/{key}"] = float(value)
    return values


def _assert_parity(ct_path, label_path, params: dict) -> None:
    labels = read_mask(label_path, read_ct(ct_path))  # on the canonical grid, as a segment store holds them
    ours, failures = extract_from_file(str(ct_path), labels, params)
    reference = _uncropped(ct_path, label_path, params)
    assert not failures and set(ours) == set(reference)
    names = sorted(reference)
    relative = np.abs(np.array([ours[n] for n in names]) - [reference[n] for n in names])
    relative /= np.maximum(np.abs([reference[n] for n in names]), 1e-12)
    assert relative.max() <= 1e-6, names[int(np.argmax(relative))]


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["fast", "standard"])
def test_cropped_features_equal_pyradiomics_on_the_real_ct(real_ct, preset, tmp_path):
    label_path = tmp_path / "labels.nii.gz"  # stored RAS-flipped like the CT: the canonical masks must map back
    sitk.WriteImage(map_labels(sitk.ReadImage(str(real_ct / "example_seg.nii.gz")), TOTALSEGMENTATOR_IDS), str(label_path))
    _assert_parity(real_ct / "example_ct_sm.nii.gz", label_path, PRESETS[preset])


def test_cropped_features_equal_pyradiomics_on_a_synthetic_scan(pipeline):
    _assert_parity(pipeline.cohort / "images" / "P0004.nii.gz", pipeline.cohort / "labels" / "P0004.nii.gz", PRESETS["standard"])


def test_crop_plan_follows_the_filters():
    standard = crop_plan(PRESETS["standard"], (2.0, 2.0, 4.0))
    assert standard.circular and list(standard.margin) == [25, 25, 13]  # 16 σ of LoG 3 mm, +1
    assert list(crop_plan(PRESETS["fast"], (1.0, 1.0, 1.0)).margin) == [1, 1, 1]
    assert crop_plan(PRESETS["ibsi"], (1.0, 1.0, 1.0)) is None  # pyradiomics crops itself when it resamples
    assert crop_plan({"imageType": {"Square": {}}}, (1.0, 1.0, 1.0)) is None  # scaled by the whole image's max


def test_group_tags_name_roi_image_type_and_class():
    assert feature_group("liver", "wavelet-LLH_glcm_Contrast") == "liver/wavelet-LLH/glcm"
    assert feature_group("spleen", "log-sigma-2-0-mm-3D_firstorder_Mean") == "spleen/log-sigma-2-0-mm-3D/firstorder"


def test_parameter_files_are_validated(tmp_path):
    good = tmp_path / "params.yaml"
    good.write_text(yaml.safe_dump({"setting": {"binWidth": 10}, "imageType": {"Original": {}}}))
    assert load_params(str(good))["setting"]["binWidth"] == 10
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"setting": {"binWidth": "wide"}}))
    with pytest.raises(InputError, match="bad.yaml: pyradiomics rejects"):
        load_params(str(bad))
    with pytest.raises(InputError, match="not a preset"):
        load_params("no-such-preset")


def _features(path) -> tuple[list[str], np.ndarray]:
    with h5py.File(path) as h5:
        return [n.decode() for n in h5["features/radiomics/names"][()]], h5["features/radiomics/values"][()]


def test_resume_reuses_an_interrupted_run(pipeline, tmp_path):
    out = tmp_path / "radiomics.h5"
    with pytest.raises(KeyboardInterrupt):
        run_radiomics(pipeline.seg, out, progress=interrupt_after(3))
    assert not out.exists()
    with h5py.File(partial_path(out), "a") as journal:
        assert len(journal["records"]) == 3
        journal["records/0/values"][...] = 42.0  # only a reused record can carry this into the store
    run_radiomics(pipeline.seg, out, RadiomicsOptions(resume=True))
    assert not partial_path(out).exists()
    names, values = _features(out)
    reference_names, reference = _features(pipeline.radiomics)
    assert names == reference_names
    assert np.all(values[0][np.isfinite(values[0])] == 42.0)
    np.testing.assert_array_equal(values[1:], reference[1:])


def test_resume_from_a_store_skips_only_matching_settings(pipeline, tmp_path):
    out = tmp_path / "radiomics.h5"
    out.write_bytes(pipeline.radiomics.read_bytes())
    with h5py.File(out, "a") as h5:
        h5["features/radiomics/values"][0] = 7.0
    run_radiomics(pipeline.seg, out, RadiomicsOptions(resume=True))
    assert np.all(_features(out)[1][0] == 7.0)  # same settings and inputs: taken from the store
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({**PRESETS["fast"], "setting": {**PRESETS["fast"]["setting"], "binWidth": 20}}))
    run_radiomics(pipeline.seg, out, RadiomicsOptions(str(params), resume=True))
    assert not np.any(_features(out)[1][0] == 7.0)  # other settings: recomputed


def test_the_bundle_entry_replays_the_stored_features(pipeline):
    """What fuse-train records of the block (radiomics.manifest_entry) extracts, from a scan and its mask, the features
    the stage stored for that patient."""
    from tipsprog.manifest import BlockEntry
    from tipsprog.radiomics import manifest_entry, replay

    with store.open_store(pipeline.radiomics) as h5:
        block = store.read_features(h5)["radiomics"]
    with store.open_store(pipeline.seg) as seg:
        ct_path, mask = store.read_ct_paths(seg)[4], store.patient_mask(seg, "P0004")
    entry = BlockEntry("pyradiomics", block.names, **manifest_entry(block))
    np.testing.assert_allclose(replay(entry, ct_path, mask, None), block.values[4], rtol=1e-6, equal_nan=True)


def test_resume_recomputes_a_ct_changed_in_place(few, tmp_path):
    """--resume compares the CT's bytes, not its path: a scan rewritten under the same name is extracted again."""
    seg, ct = tmp_path / "seg.h5", tmp_path / "P0000.nii.gz"
    seg.write_bytes(few.seg.read_bytes())
    with h5py.File(seg, "r+") as h5:
        ct.write_bytes(Path(h5["segment/ct_paths"][0].decode()).read_bytes())
        h5["segment/ct_paths"][0] = str(ct)
    out = tmp_path / "radiomics.h5"
    run_radiomics(seg, out)
    with h5py.File(out, "a") as h5:
        h5["features/radiomics/values"][:2] = 7.0
    sitk.WriteImage(sitk.ReadImage(str(ct)) + 50, str(ct))  # the same file name, other voxels
    run_radiomics(seg, out, RadiomicsOptions(resume=True))
    values = _features(out)[1]
    assert not np.any(values[0] == 7.0) and np.all(values[1] == 7.0)


def test_a_job_pickled_for_dask_does_not_alias_its_label_image():
    """Dask pickles a job at protocol 5 with out-of-band buffers and reads them later, on another thread (or sends
    them later, over TCP); the job may be gone by then, its label image's memory reused by the next patient's mask.
    The pickle must hold the labels as they were, not point into the image: overwriting the voxels after pickling
    (as that reuse does) must not change what is unpickled."""
    import pickle

    from tipsprog.radiomics.extract import PatientJob

    labels = sitk.GetImageFromArray(np.full((3, 4, 5), 1, np.uint8))
    labels.SetSpacing((0.5, 0.7, 2.0))
    job = PatientJob("P0000", "ct.nii.gz", None, labels, PRESETS["fast"], "digest")
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(job, protocol=5, buffer_callback=buffers.append)  # as distributed.protocol.pickle.dumps
    for index in np.ndindex(*labels.GetSize()):
        labels.SetPixel(index, 3)  # in place: the memory now holds another mask
    received = pickle.loads(data, buffers=buffers)
    assert np.all(sitk.GetArrayViewFromImage(received.labels) == 1)
    assert received.labels.GetSpacing() == (0.5, 0.7, 2.0) and received.patient_id == "P0000"


@pytest.mark.slow
def test_dask_cluster_gives_the_same_store(pipeline, tmp_path):
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        result = invoke(
            "radiomics", pipeline.seg, "--out", tmp_path / "dask.h5", "--scheduler", cluster.scheduler_address, "--quiet"
        )
    assert result.exit_code == 0, result.output
    names, values = _features(tmp_path / "dask.h5")
    reference_names, reference = _features(pipeline.radiomics)
    assert names == reference_names
    np.testing.assert_array_equal(values, reference)


@pytest.mark.slow
def test_unreachable_scheduler_is_one_line(pipeline, tmp_path):
    import dask
    import distributed  # noqa: F401  (loads its configuration defaults)

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):  # as DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=1s
        result = invoke("radiomics", pipeline.seg, "--out", tmp_path / "r.h5", "--scheduler", "tcp://127.0.0.1:9")
    assert result.exit_code == 2 and "cannot reach the Dask scheduler" in result.output
    assert not (tmp_path / "r.h5").exists()


def test_a_failed_patient_is_recorded_and_the_batch_goes_on(pipeline, tmp_path):
    rows = pd.read_csv(pipeline.cohort / "cohort.csv").head(3)
    rows["ct"] = [str(pipeline.cohort / path) for path in rows["ct"]]
    rows["label"] = [str(pipeline.cohort / path) for path in rows["label"]]
    labels = sitk.ReadImage(rows.loc[1, "label"])
    array = sitk.GetArrayFromImage(labels)
    spleen = np.argwhere(array == 2)
    array[array == 2] = 0
    array[tuple(spleen[:3].T)] = 2  # three voxels: below pyradiomics' minimum ROI size
    tiny = sitk.GetImageFromArray(array)
    tiny.CopyInformation(labels)
    sitk.WriteImage(tiny, str(tmp_path / "tiny_spleen.nii.gz"))
    rows.loc[1, "label"] = str(tmp_path / "tiny_spleen.nii.gz")
    rows.to_csv(tmp_path / "cohort.csv", index=False)
    assert invoke("segment", tmp_path / "cohort.csv", "--backend", "masks", "--out", tmp_path / "seg.h5", "-q").exit_code == 0
    assert invoke("radiomics", tmp_path / "seg.h5", "--out", tmp_path / "radiomics.h5", "-q").exit_code == 0
    with h5py.File(tmp_path / "radiomics.h5") as h5:
        status = [s.decode() for s in h5["qc/status"][()]]
        reasons = [r.decode() for r in h5["qc/reason"][()]]
    assert status == ["ok", "failed", "ok"]
    assert reasons[1].startswith("spleen:")
