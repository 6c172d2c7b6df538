"""The semi-supervised and TotalSegmentator backends: training, reuse, bundling, offline requirements."""

from __future__ import annotations

import importlib.util
import json

import h5py
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
import yaml
from monai import transforms
from monai.losses import DiceCELoss

from conftest import invoke
from tipsprog.images import read_ct
from tipsprog.segment import Backend, _fitted_attrs, fit_semi, foundation, semi
from tipsprog.segment.crops import roi_volumes
from tipsprog.store import segment_provenance


@pytest.fixture(scope="module")
def semi_run(pipeline, tmp_path_factory):
    """Train `semi` for a few iterations on 4 labeled scans plus 8 more of the tiny cohort."""
    root = tmp_path_factory.mktemp("semi")
    cohort = pd.read_csv(pipeline.cohort / "cohort.csv").head(12)
    cohort["ct"] = [str(pipeline.cohort / p) for p in cohort["ct"]]
    cohort["label"] = [str(pipeline.cohort / p) for p in cohort["label"]]
    cohort.head(4).to_csv(root / "labeled.csv", index=False)
    cohort.drop(columns="label").to_csv(root / "cohort.csv", index=False)
    result = invoke(
        "segment",
        root / "cohort.csv",
        "--out",
        root / "seg.h5",
        "--backend",
        "semi",
        "--fit",
        root / "labeled.csv",
        "--iterations",
        4,
        "--workers",
        1,
        "--device",
        "cpu",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    return root


@pytest.mark.slow
def test_semi_fit_saves_a_reusable_model(semi_run):
    model = semi_run / "seg.semi.pt"
    assert model.is_file()
    pd.read_csv(semi_run / "cohort.csv").head(3).to_csv(semi_run / "three.csv", index=False)
    again = invoke(
        "segment",
        semi_run / "three.csv",
        "--out",
        semi_run / "again.h5",
        "--backend",
        "semi",
        "--model",
        model,
        "--workers",
        2,
        "--device",
        "cpu",
        "--quiet",
    )
    assert again.exit_code == 0, again.output
    with h5py.File(semi_run / "seg.h5") as first, h5py.File(semi_run / "again.h5") as second:
        assert first["segment"].attrs["backend"] == "semi"
        assert first["segment"].attrs["model_sha256"] == second["segment"].attrs["model_sha256"]
        settings = yaml.safe_load(first["segment"].attrs["settings"])
        assert settings["iterations"] == 4 and settings["confidence"] == 0.9
        for pid in ("P0000", "P0002"):
            np.testing.assert_array_equal(first[f"segment/masks/{pid}"][()], second[f"segment/masks/{pid}"][()])
        assert "qc/flags" in first and first["qc/backend"][0] == b"semi"


@pytest.mark.slow
def test_semi_bundle_carries_the_segmentation_model(semi_run, pipeline):
    embedded = invoke(
        "embed", semi_run / "seg.h5", "--out", semi_run / "emb.h5", "--fit", "--epochs", 1, "--device", "cpu", "--quiet"
    )
    assert embedded.exit_code == 0, embedded.output
    trained = invoke(
        "fuse-train",
        semi_run / "emb.h5",
        "--clinical",
        pipeline.clinical,
        "--outcomes",
        pipeline.outcomes,
        "--out",
        semi_run / "model",
        "--folds",
        2,
        "--quiet",
    )
    assert trained.exit_code == 0, trained.output
    manifest = yaml.safe_load((semi_run / "model" / "bundle.yaml").read_text())
    assert manifest["pipeline"]["segment"] == {"backend": "semi", "model": "segment-model.pt"}
    assert "segment-model.pt" in manifest["files"]
    everyone = pd.read_csv(semi_run / "cohort.csv")["patient_id"].tolist()
    assert manifest["transductive"]["segment"] == {"blocks": ["embed-ssl"], "fitted_on": everyone, "labeled": everyone[:4]}
    assert manifest["transductive"]["encoder"]["fitted_on"] == everyone
    pd.read_csv(pipeline.clinical).iloc[[2]].to_csv(semi_run / "row.csv", index=False)
    predicted = invoke(
        "predict",
        "--ct",
        pipeline.cohort / "images" / "P0002.nii.gz",
        "--clinical",
        semi_run / "row.csv",
        "--model",
        semi_run / "model",
        "--json",
        "--device",
        "cpu",
    )
    assert predicted.exit_code == 0, predicted.output
    assert json.loads(predicted.stdout)["segmentation"]["backend"] == "semi"


def test_semi_needs_fit_or_model(pipeline, tmp_path):
    result = invoke("segment", pipeline.cohort / "cohort.csv", "--out", tmp_path / "seg.h5", "--backend", "semi")
    assert result.exit_code == 2 and "needs --fit LABELED.csv" in result.output
    assert not (tmp_path / "seg.h5").exists()


def _ellipsoid(
    shape: tuple[int, ...], spacing: tuple[float, ...], centre_mm: tuple[float, ...], radii_mm: tuple[float, ...]
) -> np.ndarray:
    """Boolean ellipsoid on a (z, y, x) grid, centre and radii in mm."""
    axes = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((a * s - c) / r) ** 2 for a, s, c, r in zip(axes, spacing, centre_mm, radii_mm)) < 1.0


@pytest.mark.slow
def test_semi_fit_takes_a_full_size_ct_with_per_roi_masks_and_a_missing_roi(tmp_path, monkeypatch):
    """A 512×512×129 CT (0.57×0.57×1.6 mm) whose body fills part of the view, liver and spleen masks, no portal vein:
    reading the per-ROI masks crashed the process (a NumPy view of a freed image); the vein is left unlabeled."""
    shape, spacing = (129, 512, 512), (1.6, 0.57, 0.57)
    body = _ellipsoid(shape[1:], spacing[1:], (150.0, 140.0), (110.0, 130.0))
    liver = _ellipsoid(shape, spacing, (100.0, 140.0, 100.0), (60.0, 60.0, 50.0))
    spleen = _ellipsoid(shape, spacing, (110.0, 150.0, 220.0), (40.0, 30.0, 25.0))
    hu = np.where(body, 40, -1000).astype(np.int16)[None].repeat(shape[0], axis=0)
    hu[liver], hu[spleen] = 110, 125
    files = {}
    for name, array in (("ct", hu), ("liver_mask", liver.astype(np.uint8)), ("spleen_mask", spleen.astype(np.uint8))):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(spacing[::-1])
        files[name] = tmp_path / f"{name}.nii"
        sitk.WriteImage(image, str(files[name]))
    pd.DataFrame([{"patient_id": "R1", **{k: v.name for k, v in files.items()}}]).to_csv(tmp_path / "labeled.csv", index=False)
    trained = []
    real_fit = semi.fit
    monkeypatch.setattr(semi, "fit", lambda labeled, *args: trained.extend(labeled) or real_fit(labeled, *args))
    cohort = pd.DataFrame({"patient_id": ["R1"], "ct": [str(files["ct"])]})
    fit_semi(cohort, tmp_path / "labeled.csv", tmp_path / "model.pt", torch.device("cpu"), semi.SemiSettings(iterations=2))
    assert (tmp_path / "model.pt").is_file()
    (sample,) = trained
    assert sample["present"].tolist() == [True, True, True, False]
    voxel_ml = semi.SemiSettings().spacing_mm ** 3 / 1000.0
    counts = np.bincount(sample["label"].ravel(), minlength=4)
    np.testing.assert_allclose(
        counts[1:3] * voxel_ml, np.array([liver.sum(), spleen.sum()]) * np.prod(spacing) / 1000.0, rtol=0.05
    )


def test_semi_loss_does_not_teach_background_where_an_unlabeled_roi_may_be():
    """With the portal vein absent from a scan's reference, its background voxels may be vein or background."""
    background, vein = torch.zeros(1, 4, 2, 2, 2), torch.zeros(1, 4, 2, 2, 2)
    background[:, 0], vein[:, 3] = 5.0, 5.0
    target = torch.zeros(1, 1, 2, 2, 2, dtype=torch.long)
    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    absent, present = torch.tensor([[True, True, True, False]]), torch.ones(1, 4, dtype=torch.bool)
    assert loss(semi._marginal(vein, absent), target) == pytest.approx(loss(semi._marginal(background, absent), target))
    assert loss(semi._marginal(vein, present), target) > loss(semi._marginal(background, present), target) + 1.0
    assert semi._marginal(vein, present) is vein


def test_tissue_intensities_are_randomised_per_roi_keeping_labels():
    label = np.zeros((1, 12, 24, 24), np.int64)
    label[0, 2:10, 2:10, 2:10], label[0, 2:10, 14:22, 2:10], label[0, 2:10, 14:22, 14:22] = 1, 2, 3
    image = np.full(label.shape, 0.5, np.float32)
    transform = semi.RandTissueIntensityd(shift_hu=150.0)
    transform.set_random_state(0)
    contrasts = []
    for _ in range(40):
        out = transform({"image": image, "label": label})
        assert out["label"] is label
        inner = np.asarray(out["image"])[0, 4:8]
        outside = inner[:, 11:13, 11:13].mean()
        contrasts.append(
            [inner[:, 4:8, 4:8].mean() - outside, inner[:, 16:20, 4:8].mean() - outside, inner[:, 16:20, 16:20].mean() - outside]
        )
    contrasts = np.array(contrasts)
    assert (contrasts.std(axis=0) > 0.1).all()  # offsets up to ±150 HU = ±0.3 of the window
    assert (np.abs(np.corrcoef(contrasts.T)[np.triu_indices(3, 1)]) < 0.5).all()  # each ROI on its own
    assert np.abs(contrasts[:, 0] - contrasts[:, 1]).mean() > 0.1
    default = semi._augment(["image", "label"], semi.SemiSettings(), labeled=True)
    assert not any(isinstance(t, semi.RandTissueIntensityd) for t in default.transforms)  # off unless asked for


def test_semi_flip_axes_choose_the_mirroring():
    def flipped(settings: semi.SemiSettings) -> list[int]:
        return [
            t.flipper.spatial_axis
            for t in semi._augment(["image", "label"], settings, labeled=True).transforms
            if isinstance(t, transforms.RandFlipd)
        ]

    assert flipped(semi.SemiSettings()) == [2, 1]  # left-right and front-back, as before
    assert flipped(semi.SemiSettings(flip_axes=())) == []


def test_semi_background_patches_are_centred_inside_the_body():
    """On a scan whose body fills a small part of the view, background and unlabeled patches are not wasted on air."""
    image = np.zeros((1, 40, 120, 120), np.float32)
    image[0, :, 50:80, 50:80] = 0.5
    label = np.zeros(image.shape, np.int64)
    label[0, 10:20, 60:70, 60:70] = 1
    settings = semi.SemiSettings(patch=(8, 8, 8), class_ratios=(1.0, 0.0, 0.0, 0.0))
    crop = semi._augment(["image", "label"], settings, True).transforms[0]
    crop.set_random_state(0)
    unlabeled = semi._augment(["image"], settings, labeled=False)
    unlabeled.set_random_state(0)
    for _ in range(20):
        (patch,) = crop({"image": image, "label": label})
        assert np.asarray(patch["image"])[0, 4, 4, 4] > 0
        assert (np.asarray(unlabeled({"image": image})["image"]) > 0).mean() > 0.5


def test_totalseg_says_what_is_missing_and_how_to_get_it(monkeypatch, tmp_path, pipeline):
    find_spec = importlib.util.find_spec  # the test extra installs TotalSegmentator: make it look absent
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "totalsegmentator" else find_spec(name, *a))
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    missing = foundation.missing_requirements(fast=True)
    assert any("pip install 'tipsprog[totalseg]'" in m for m in missing)
    assert any("tasks 297, 298" in m and "totalseg_download_weights -t total_fast" in m for m in missing)
    results = tmp_path / "home" / "nnunet" / "results"
    for task in (297, 298):  # an older release's folder name: TotalSegmentator would download (or delete) it
        (results / f"{foundation.WEIGHT_FOLDERS[task]}_v204").mkdir(parents=True)
    assert any("tasks 297, 298" in m for m in foundation.missing_requirements(fast=True))
    for task in (297, 298):
        (results / foundation.WEIGHT_FOLDERS[task]).mkdir()
    assert not any("weights" in m for m in foundation.missing_requirements(fast=True))
    assert any("tasks 291, 292, 293, 294, 295 " in m and "-t total," in m for m in foundation.missing_requirements(fast=False))
    result = invoke("segment", pipeline.cohort / "cohort.csv", "--out", tmp_path / "seg.h5", "--backend", "totalseg")
    assert result.exit_code == 2 and "backend 'totalseg'" in result.output
    assert not (tmp_path / "seg.h5").exists()


def test_totalsegmentator_output_maps_to_tipsprog_labels(real_ct):
    ct = read_ct(real_ct / "example_ct_sm.nii.gz")
    labels = foundation.labels_from_totalsegmentator(real_ct / "example_seg.nii.gz", ct)
    volumes = roi_volumes(labels)
    np.testing.assert_allclose(volumes, [1043.118, 255.204, 24.327], rtol=1e-4)


def _semi_cohort(pipeline, root, labeled: int = 2, count: int = 5) -> tuple:
    """The first `count` patients of the tiny cohort (absolute paths, no labels) and LABELED.csv with the first ones."""
    cohort = pd.read_csv(pipeline.cohort / "cohort.csv").head(count)
    cohort["ct"] = [str(pipeline.cohort / p) for p in cohort["ct"]]
    cohort["label"] = [str(pipeline.cohort / p) for p in cohort["label"]]
    cohort.head(labeled).to_csv(root / "labeled.csv", index=False)
    cohort.drop(columns="label").to_csv(root / "cohort.csv", index=False)
    return root / "cohort.csv", root / "labeled.csv", cohort


def test_semi_fit_ids_restrict_the_unlabeled_scans_and_are_recorded(pipeline, tmp_path, monkeypatch):
    """--fit-ids: only the listed unlabeled scans reach training; the model file, /segment and the provenance every
    feature block derived from the store carries record the patients the model was trained on (the labeled ones apart)."""
    cohort_csv, labeled_csv, cohort = _semi_cohort(pipeline, tmp_path)
    pd.DataFrame({"patient_id": ["P0003", "P0001", "P0000"]}).to_csv(tmp_path / "fit.csv", index=False)
    unlabeled = []
    real_fit = semi.fit
    monkeypatch.setattr(semi, "fit", lambda labeled, pool, *args: unlabeled.extend(pool) or real_fit(labeled, pool, *args))
    result = invoke(
        "segment",
        cohort_csv,
        "--out",
        tmp_path / "seg.h5",
        "--backend",
        "semi",
        "--fit",
        labeled_csv,
        "--fit-ids",
        tmp_path / "fit.csv",
        "--iterations",
        2,
        "--workers",
        1,
        "--device",
        "cpu",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    (sample,) = unlabeled
    expected = semi.prepare(read_ct(cohort["ct"][3]), None, semi.SemiSettings(iterations=2))
    np.testing.assert_array_equal(sample["image"], expected["image"])
    assert semi.model_fitted_on(tmp_path / "seg.semi.pt") == (["P0000", "P0001", "P0003"], ["P0000", "P0001"])
    with h5py.File(tmp_path / "seg.h5") as seg:
        assert json.loads(seg["segment"].attrs["fitted_on"]) == ["P0000", "P0001", "P0003"]
        block = seg["features/biomarkers"].attrs
        assert json.loads(block["segment_fitted_on"]) == ["P0000", "P0001", "P0003"]
        assert json.loads(block["segment_fitted_labeled"]) == ["P0000", "P0001"]
        provenance = segment_provenance(seg)  # what radiomics and embed copy into their blocks
    assert json.loads(provenance["segment_fitted_on"]) == ["P0000", "P0001", "P0003"]


@pytest.mark.parametrize(
    "listed, arguments, message",
    [
        (["P0000", "P0003"], ("--fit", "{labeled}"), "{ids}: patient P0001 of {labeled} is not listed"),
        (["P0000", "P0001", "X9"], ("--fit", "{labeled}"), "{ids}: patient X9 is not in {cohort} or {labeled}"),
        (["P0000"], ("--model", "{model}"), "--fit-ids {ids}: chooses the patients `--backend semi --fit` trains on"),
    ],
)
def test_semi_fit_ids_errors(pipeline, tmp_path, listed, arguments, message):
    cohort_csv, labeled_csv, _ = _semi_cohort(pipeline, tmp_path)
    pd.DataFrame({"patient_id": listed}).to_csv(tmp_path / "ids.csv", index=False)
    names = {"labeled": labeled_csv, "ids": tmp_path / "ids.csv", "cohort": cohort_csv, "model": tmp_path / "m.pt"}
    result = invoke(
        "segment",
        cohort_csv,
        "--out",
        tmp_path / "seg.h5",
        "--backend",
        "semi",
        "--fit-ids",
        tmp_path / "ids.csv",
        *(a.format(**names) for a in arguments),
        "--iterations",
        1,
        "--device",
        "cpu",
    )
    assert result.exit_code == 2 and message.format(**names) in result.output.replace("\n", "")
    assert not (tmp_path / "seg.h5").exists() and not (tmp_path / "seg.semi.pt").exists()


def test_semi_model_without_a_record_reads_unknown(tmp_path):
    settings = semi.SemiSettings(channels=(4, 8))
    semi.save_model(semi.build_network(settings), settings, tmp_path / "old.pt")
    assert semi.model_fitted_on(tmp_path / "old.pt") == (None, None)
    backend = Backend("semi", str(tmp_path / "old.pt"))
    assert _fitted_attrs(backend) == {"segment_fitted_on": "unknown", "segment_fitted_labeled": "unknown"}
