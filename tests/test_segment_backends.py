"""The semi-supervised and TotalSegmentator backends: training, reuse, bundling, offline requirements."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import invoke
from tipsprog.io import read_ct
from tipsprog.segment import foundation
from tipsprog.segment.crops import roi_volumes


@pytest.fixture(scope="module")
def semi_run(pipeline, tmp_path_factory):
    """Train `semi` for a few iterations on 4 labeled scans plus the rest of the tiny cohort."""
    root = tmp_path_factory.mktemp("semi")
    cohort = pd.read_csv(pipeline.cohort / "cohort.csv")
    cohort["ct"] = [str(pipeline.cohort / p) for p in cohort["ct"]]
    cohort["label"] = [str(pipeline.cohort / p) for p in cohort["label"]]
    cohort.head(4).to_csv(root / "labeled.csv", index=False)
    cohort.drop(columns="label").to_csv(root / "cohort.csv", index=False)
    result = invoke("segment", root / "cohort.csv", "--out", root / "seg.h5", "--backend", "semi", "--fit",
                    root / "labeled.csv", "--iterations", 4, "--workers", 1, "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    return root


@pytest.mark.slow
def test_semi_fit_saves_a_reusable_model(semi_run):
    model = semi_run / "seg.semi.pt"
    assert model.is_file()
    again = invoke("segment", semi_run / "cohort.csv", "--out", semi_run / "again.h5", "--backend", "semi",
                   "--model", model, "--workers", 2, "--device", "cpu", "--quiet")
    assert again.exit_code == 0, again.output
    with h5py.File(semi_run / "seg.h5") as first, h5py.File(semi_run / "again.h5") as second:
        assert first["segment"].attrs["backend"] == "semi"
        assert first["segment"].attrs["model_sha256"] == second["segment"].attrs["model_sha256"]
        settings = yaml.safe_load(first["segment"].attrs["settings"])
        assert settings["iterations"] == 4 and settings["confidence"] == 0.9
        for pid in ("P0000", "P0010"):
            np.testing.assert_array_equal(first[f"segment/masks/{pid}"][()], second[f"segment/masks/{pid}"][()])
        assert "qc/flags" in first and first["qc/backend"][0] == b"semi"


@pytest.mark.slow
def test_semi_bundle_carries_the_segmentation_model(semi_run, pipeline):
    embedded = invoke("embed", semi_run / "seg.h5", "--out", semi_run / "emb.h5", "--fit", "--epochs", 1, "--device", "cpu", "--quiet")
    assert embedded.exit_code == 0, embedded.output
    trained = invoke("fuse-train", semi_run / "emb.h5", "--clinical", pipeline.clinical, "--outcomes", pipeline.outcomes,
                     "--out", semi_run / "model", "--folds", 2, "--quiet")
    assert trained.exit_code == 0, trained.output
    manifest = yaml.safe_load((semi_run / "model" / "bundle.yaml").read_text())
    assert manifest["pipeline"]["segment"] == {"backend": "semi", "model": "segment-model.pt"}
    assert "segment-model.pt" in manifest["files"]
    pd.read_csv(pipeline.clinical).iloc[[2]].to_csv(semi_run / "row.csv", index=False)
    predicted = invoke("predict", "--ct", pipeline.cohort / "images" / "P0002.nii.gz", "--clinical", semi_run / "row.csv",
                       "--model", semi_run / "model", "--json", "--device", "cpu")
    assert predicted.exit_code == 0, predicted.output
    assert json.loads(predicted.stdout)["segmentation"]["backend"] == "semi"


def test_semi_needs_fit_or_model(pipeline, tmp_path):
    result = invoke("segment", pipeline.cohort / "cohort.csv", "--out", tmp_path / "seg.h5", "--backend", "semi")
    assert result.exit_code == 2 and "needs --fit LABELED.csv" in result.output
    assert not (tmp_path / "seg.h5").exists()


def test_totalseg_says_what_is_missing_and_how_to_get_it(monkeypatch, tmp_path, pipeline):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    missing = foundation.missing_requirements(fast=True)
    assert any("pip install 'tipsprog[totalseg]'" in m for m in missing)
    assert any("tasks 297, 298" in m and "totalseg_download_weights -t total_fast" in m for m in missing)
    for task in (297, 298):
        (tmp_path / "home" / "nnunet" / "results" / f"Dataset{task}_TotalSegmentator_total").mkdir(parents=True)
    assert not any("weights" in m for m in foundation.missing_requirements(fast=True))
    result = invoke("segment", pipeline.cohort / "cohort.csv", "--out", tmp_path / "seg.h5", "--backend", "totalseg")
    assert result.exit_code == 2 and "backend 'totalseg'" in result.output
    assert not (tmp_path / "seg.h5").exists()


def test_totalsegmentator_output_maps_to_tipsprog_labels(real_ct):
    ct = read_ct(real_ct / "example_ct_sm.nii.gz")
    labels = foundation.labels_from_totalsegmentator(real_ct / "example_seg.nii.gz", ct)
    volumes = roi_volumes(labels)
    np.testing.assert_allclose(volumes, [1043.118, 255.204, 24.327], rtol=1e-4)
