"""End to end through the CLI on a tiny cohort: stores, bundle, report, prediction."""

import html
import json
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
import yaml

from conftest import invoke
from tipsprog import store
from tipsprog.fusion.assembly import assemble_for_bundle
from tipsprog.fusion.attribution import integrated_gradients
from tipsprog.fusion.bundle import load_bundle
from tipsprog.fusion.ensemble import predict_members
from tipsprog.manifest import SegmentEntry
from tipsprog.predict import percentile_rank
from tipsprog.segment.biomarkers import NAMES as BIOMARKER_NAMES
from tipsprog.segment.portal import PORTAL_VEIN_FIELDS


def test_stores_follow_the_schema(pipeline):
    with h5py.File(pipeline.seg) as seg:
        assert seg.attrs["schema_version"] == 1
        assert seg["segment/crops/liver"].shape[0] == 30
        assert set(seg["segment/masks"]) == {f"P{i:04d}" for i in range(30)}
        assert seg["segment/portal_vein"].shape == (30, len(PORTAL_VEIN_FIELDS))
        assert seg["features/biomarkers/values"].shape == (30, len(BIOMARKER_NAMES))
    with h5py.File(pipeline.radiomics) as rad:
        groups = [g.decode() for g in rad["features/radiomics/groups"][()]]
        assert "liver/original/glcm" in groups and "spleen/original/shape" in groups
        assert rad["features/radiomics/values"].shape == (30, len(groups))
    with h5py.File(pipeline.embed) as emb:
        values = emb["features/embed-ssl/values"][()]
        assert values.shape == (30, 128) and np.isfinite(values).all() and values.std(axis=0).max() > 0


def test_bundle_contents(pipeline):
    manifest = yaml.safe_load((pipeline.bundle / "bundle.yaml").read_text())
    assert set(manifest["files"]) >= {
        "weights.pt",
        "preprocess.json",
        "oof.h5",
        "metrics.json",
        "model_card.md",
        "embed-ssl.pt",
        "ood.json",
    }
    assert manifest["pipeline"]["segment"] == {"backend": "classic"}
    assert set(manifest["modalities"]) == {"clinical", "radiomics", "embed", "biomarkers"}
    percentiles = manifest["pipeline"]["blocks"]["biomarkers"]["training_percentiles"]
    spleen = np.array(percentiles["spleen/volume[mL]"], dtype=float)
    assert len(spleen) == 101 and np.all(np.diff(spleen) >= 0)
    with h5py.File(pipeline.bundle / "oof.h5") as oof:
        risk = oof["oof/risk"][()]
        folds = oof["outcomes/fold"][()]
        assert np.isfinite(risk).all() and set(folds) == {0, 1, 2}
        np.testing.assert_array_equal(oof["repeats/fold"][()][:, 0], folds)
        assert set(oof["scores"]) >= {"FIPS", "MELD", "MELD-Na", "Child-Pugh", "ALBI"}
    typed = load_bundle(pipeline.bundle).manifest  # what every reader sees: the same values, typed
    assert typed.raw == manifest and typed.segment == SegmentEntry("classic") and typed.training.patients == 30
    assert typed.blocks["radiomics"].params == manifest["pipeline"]["blocks"]["radiomics"]["params"]
    assert typed.blocks["embed-ssl"].weights == "embed-ssl.pt" and typed.risk_cut == manifest["risk_groups"]["cut"]


@pytest.mark.slow
def test_held_out_patients_never_train_and_are_predicted_once(pipeline, tmp_path):
    """--test removes its patients before cross-validation; the whole ensemble predicts them into held_out.h5."""
    held = [f"P{i:04d}" for i in range(0, 30, 3)]
    pd.DataFrame({"patient_id": held}).to_csv(tmp_path / "test.csv", index=False)
    (tmp_path / "quick.yaml").write_text(
        "seeds: 1\nstages: [{name: joint, max_epochs: 20, patience: 5, shared_lr_scale: 1.0, "
        "loss_weights: {survival: 1.0, ohe: 0.5, ppg: 0.5}}]\n"
    )
    result = invoke(
        "fuse-train",
        pipeline.seg,
        pipeline.radiomics,
        "--clinical",
        pipeline.clinical,
        "--outcomes",
        pipeline.outcomes,
        "--out",
        tmp_path / "model",
        "--folds",
        2,
        "--repeats",
        2,
        "--config",
        tmp_path / "quick.yaml",
        "--test",
        tmp_path / "test.csv",
        "--device",
        "cpu",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    with store.open_store(pipeline.seg) as h5:  # predict ranks patients against the training patients only
        block, patients = store.read_features(h5)["biomarkers"], store.read_patients(h5)
    volume = block.values[[pid not in held for pid in patients], block.names.index("spleen/volume[mL]")]
    percentiles = yaml.safe_load((tmp_path / "model" / "bundle.yaml").read_text())["pipeline"]["blocks"]["biomarkers"]
    np.testing.assert_allclose(
        percentiles["training_percentiles"]["spleen/volume[mL]"],
        np.percentile(volume[np.isfinite(volume)], np.arange(101)).round(4),
    )
    with h5py.File(tmp_path / "model" / "oof.h5") as oof, h5py.File(tmp_path / "model" / "held_out.h5") as test:
        trained = [p.decode() for p in oof["patients"][()]]
        assert not set(trained) & set(held) and len(trained) == 20
        assert [p.decode() for p in test["patients"][()]] == held
        assert np.isfinite(test["predictions/risk"][()]).all() and np.isfinite(test["predictions/clinical_cox_risk"][()]).all()
        survival = np.stack([test[f"predictions/survival_{d}d"][()] for d in (182, 365, 730)], axis=1)
        assert ((survival > 0) & (survival <= 1)).all() and (np.diff(survival, axis=1) <= 0).all()
        assert oof["repeats/fold"].shape == (20, 2) and set(oof["repeats/fold"][()][:, 1]) == {2, 3}
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert metrics["held_out"]["patients"] == 10 and len(metrics["harrell_c_by_repeat"]) == 2
    result = invoke("evaluate", tmp_path / "model", "--out", tmp_path / "report", "--bootstrap", 10, "--workers", 1, "--quiet")
    assert result.exit_code == 0, result.output
    settings = json.loads((tmp_path / "report" / "metrics.json").read_text())["settings"]
    assert settings["held-out"]["patients"] == 10 and settings["out-of-fold"]["patients"] == 20
    assert {"model", "clinical-cox", "FIPS"} <= set(settings["held-out"]["survival"])
    assert (tmp_path / "report" / "held-out_km.png").is_file()
    assert (
        "held-out: no feature step was fitted on scans; none of these 10 patients' scans was seen before evaluation"
        in (tmp_path / "report" / "report.md").read_text()
    )


@pytest.mark.slow
def test_evaluate_writes_report_with_cis_and_baselines(pipeline, tmp_path):
    result = invoke(
        "evaluate",
        pipeline.bundle,
        "--out",
        tmp_path / "report",
        "--truth",
        pipeline.cohort / "truth.csv",
        "--bootstrap",
        20,
        "--workers",
        1,
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["schema"] == "tipsprog-metrics-2" and metrics["bundle"]["model"] == "concat"
    setting = metrics["settings"]["out-of-fold"]
    rows = setting["survival"]
    assert {"model", "clinical-cox", "FIPS", "MELD", "oracle"} <= set(rows)
    for row in rows.values():
        c = row["harrell_c"]
        assert 0 <= c["low"] <= c["estimate"] <= c["high"] <= 1
        assert 0 <= row["brier_182d"]["estimate"] < 0.5 and 0 <= row["calibration"]["d_calibration"]["p_value"] <= 1
    assert rows["oracle"]["harrell_c"]["estimate"] > 0.6
    deciles = rows["model"]["calibration"]["182d"]["deciles"]
    assert sum(d["patients"] for d in deciles) == 30 and all(0 <= d["predicted"] <= 1 for d in deciles)
    assert set(setting["model_minus"]["FIPS"]) == {"harrell_c", "uno_c", "integrated_brier"}
    assert {"auc", "f1", "sensitivity", "specificity", "brier"} <= set(setting["ohe"]["model"])
    assert {"mae_mmhg", "rmse_mmhg", "r2", "pearson_r"} <= set(setting["ppg_post"]["model"])
    assert setting["decision_curve_ohe"]["net_benefit"]["treat none"][0] == 0.0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| FIPS |" in report and "| oracle |" in report
    seen = "out-of-fold: the ssl encoder was pre-trained on the scans of 30 of these 30 patients (unlabeled), test folds included"
    assert (
        f"- {seen}" in report
        and seen in metrics["notes"]
        and metrics["transductive"]["out-of-fold"]["steps"]["encoder"]["seen"] == 30
    )
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 8 and "src='http" not in page and "<td>oracle</td>" in page
    for plot in ("km", "forest", "td_roc", "calibration", "ohe_roc", "ohe_calibration", "decision_curve", "ppg"):
        assert (tmp_path / "report" / f"{plot}.png").read_bytes()[:4] == b"\x89PNG"


def test_predict_single_patient_json(pipeline, tmp_path):
    clinical = pd.read_csv(pipeline.clinical)
    clinical.iloc[[0]].to_csv(tmp_path / "row.csv", index=False)
    result = invoke(
        "predict",
        "--ct",
        pipeline.cohort / "images" / "P0000.nii.gz",
        "--clinical",
        tmp_path / "row.csv",
        "--model",
        pipeline.bundle,
        "--json",
    )
    assert result.exit_code == 0, result.output
    prediction = json.loads(result.stdout)
    assert prediction["patient_id"] == "P0000"
    assert 0 <= prediction["risk_percentile"] <= 100 and prediction["risk_group"] in ("low", "high")
    survival = [prediction["survival"][k]["estimate"] for k in ("182d", "365d", "730d")]
    assert all(0 < s <= 1 for s in survival) and survival == sorted(survival, reverse=True)
    assert 0 < prediction["ohe_probability"]["estimate"] < 1
    assert 0 < prediction["ppg_post_mmhg"]["estimate"] < 60
    assert {"FIPS", "MELD"} <= set(prediction["clinical_scores"])
    assert prediction["segmentation"]["status"] == "ok"
    assert 600 < prediction["segmentation"]["volumes_ml"]["liver"] < 4000
    assert list(prediction["segmentation"]["portal_vein"]) == list(PORTAL_VEIN_FIELDS)
    spleen = prediction["biomarkers"]["spleen/volume[mL]"]  # P0000 is a training patient: its own value is ranked
    with h5py.File(pipeline.seg) as seg:
        stored = seg["features/biomarkers/values"][0, list(BIOMARKER_NAMES).index("spleen/volume[mL]")]
    assert list(prediction["biomarkers"]) == list(BIOMARKER_NAMES) and spleen["value"] == pytest.approx(stored, abs=0.01)
    assert 0 <= spleen["percentile"] <= 100
    assert prediction["warnings"] == []  # a training patient lies within the training cohort
    printed = invoke(
        "predict",
        "--ct",
        pipeline.cohort / "images" / "P0000.nii.gz",
        "--clinical",
        tmp_path / "row.csv",
        "--model",
        pipeline.bundle,
    )
    assert printed.exit_code == 0 and "main portal vein diameter " in printed.output, printed.output
    assert "spleen/volume[mL]: " in printed.output and "of the training cohort)" in printed.output
    curve = prediction["survival_curve"]
    assert curve["days"][0] == 30 and np.all(np.diff(curve["survival"]) <= 0) and 0 < curve["survival"][-1] <= 1
    attribution = prediction["attribution"]
    assert len(attribution["top"]) == 8 and {t["modality"] for t in attribution["top"]} <= {
        "clinical",
        "radiomics",
        "embed",
        "biomarkers",
    }
    assert sum(attribution["by_modality"].values()) == pytest.approx(attribution["risk_minus_baseline"], abs=2e-3)


def test_attributions_add_up_to_the_risk_and_match_the_ensemble(pipeline):
    """Integrated gradients are complete: per patient they sum to risk minus the baseline patient's risk."""
    bundle = load_bundle(pipeline.bundle)
    assembled = assemble_for_bundle(
        bundle.manifest, [pipeline.seg, pipeline.radiomics, pipeline.embed], pipeline.clinical, pipeline.outcomes
    )
    matrices = {m: v[:4] for m, v in assembled.data.matrices.items()}
    attribution = integrated_gradients(bundle.members, matrices, bundle.config, torch.device("cpu"))
    np.testing.assert_allclose(attribution.values.sum(axis=1), attribution.risk - attribution.baseline_risk, atol=2e-3)
    ensemble = predict_members(bundle.members, matrices, np.arange(4), bundle.config, torch.device("cpu"))["risk"].mean(axis=0)
    np.testing.assert_allclose(attribution.risk, ensemble, atol=1e-5)
    assert np.abs(attribution.values).max() > 1e-3


@pytest.mark.slow
def test_batch_and_single_predictions_agree_exactly(pipeline, tmp_path):
    """A batch equals single predictions and the same batch run on a Dask cluster; a scan that cannot be used gets
    its error row and the rest are predicted (--strict stops instead)."""
    cohort = pd.read_csv(pipeline.cohort / "cohort.csv").iloc[[2, 5, 9, 7]]
    (tmp_path / "junk.nii.gz").write_bytes(b"not a scan")
    ct_paths = [str(pipeline.cohort / c) for c in cohort["ct"]]
    ct_paths[2] = str(tmp_path / "junk.nii.gz")
    cohort.assign(ct=ct_paths).to_csv(tmp_path / "cohort.csv", index=False)
    result = invoke(
        "predict",
        "--cohort",
        tmp_path / "cohort.csv",
        "--clinical",
        pipeline.clinical,
        "--model",
        pipeline.bundle,
        "--out",
        tmp_path / "batch",
        "--overlay",
        tmp_path / "overlays",
        "--save-masks",
        tmp_path / "masks",
        "--workers",
        2,
    )
    assert result.exit_code == 0, result.output
    assert "predicted 3 patients, 1 failed" in result.output and "P0009: " in result.output
    batch = [json.loads(line) for line in (tmp_path / "batch" / "predictions.jsonl").read_text().splitlines()]
    table = pd.read_csv(tmp_path / "batch" / "predictions.csv")
    assert [r["patient_id"] for r in batch] == ["P0002", "P0005", "P0009", "P0007"] == table["patient_id"].tolist()
    assert "junk.nii.gz: cannot read CT" in batch[2]["error"] and set(batch[2]) == {"schema", "patient_id", "error"}
    assert table["risk_score"].isna().tolist() == [False, False, True, False]
    assert table["acquisition_slice_spacing"].tolist()[:2] == [
        r["segmentation"]["acquisition"]["slice_spacing"] for r in batch[:2]
    ]
    assert np.allclose(
        table["risk_score"].dropna(), [r["risk_score"]["estimate"] for r in batch if "error" not in r], rtol=0, atol=1e-12
    )
    pd.read_csv(pipeline.clinical).iloc[[5]].to_csv(tmp_path / "row.csv", index=False)
    single = invoke(
        "predict",
        "--ct",
        pipeline.cohort / "images" / "P0005.nii.gz",
        "--clinical",
        tmp_path / "row.csv",
        "--model",
        pipeline.bundle,
        "--json",
        "--overlay",
        tmp_path / "P0005.png",
    )
    assert json.loads(single.stdout) == batch[1]
    assert (tmp_path / "P0005.png").read_bytes()[:4] == b"\x89PNG" == (tmp_path / "overlays" / "P0007.png").read_bytes()[:4]
    masks = sitk.ReadImage(str(tmp_path / "masks" / "P0002_labels.nii.gz"))
    assert set(np.unique(sitk.GetArrayFromImage(masks))) <= {0, 1, 2, 3}
    strict = invoke(
        "predict",
        "--cohort",
        tmp_path / "cohort.csv",
        "--clinical",
        pipeline.clinical,
        "--model",
        pipeline.bundle,
        "--out",
        tmp_path / "strict",
        "--strict",
        "--workers",
        1,
    )
    assert strict.exit_code == 2 and "junk.nii.gz: cannot read CT" in strict.output and not (tmp_path / "strict").exists()
    from distributed import LocalCluster  # --scheduler: the scans on a two-process Dask cluster, the same records

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        options = ("--model", pipeline.bundle, "--out", tmp_path / "dask", "--scheduler", cluster.scheduler_address)
        on_cluster = invoke("predict", "--cohort", tmp_path / "cohort.csv", "--clinical", pipeline.clinical, *options)
    assert on_cluster.exit_code == 0, on_cluster.output
    assert [json.loads(line) for line in (tmp_path / "dask" / "predictions.jsonl").read_text().splitlines()] == batch


def test_predict_on_the_real_ct(pipeline, real_ct, tmp_path):
    """The real abdominal CT with a made-up clinical row: finite outputs and a liver and spleen the size of the
    reference segmentation's (the scan covers only part of the liver)."""
    row = pd.read_csv(pipeline.clinical).iloc[[0]].assign(patient_id="real", age=61, bilirubin=2.1, albumin=31, inr=1.4)
    row.to_csv(tmp_path / "row.csv", index=False)
    result = invoke(
        "predict",
        "--ct",
        real_ct / "example_ct_sm.nii.gz",
        "--clinical",
        tmp_path / "row.csv",
        "--model",
        pipeline.bundle,
        "--json",
    )
    assert result.exit_code == 0, result.output
    prediction = json.loads(result.stdout)
    values = [
        prediction["risk_score"]["estimate"],
        prediction["ohe_probability"]["estimate"],
        prediction["ppg_post_mmhg"]["estimate"],
        *(v["estimate"] for v in prediction["survival"].values()),
    ]
    assert np.isfinite(values).all()
    reference = sitk.ReadImage(str(real_ct / "example_seg.nii.gz"))
    voxel_ml = np.prod(reference.GetSpacing()) / 1000.0
    labels = sitk.GetArrayFromImage(reference)
    for roi, label in (("liver", 5), ("spleen", 1)):
        expected = (labels == label).sum() * voxel_ml
        assert 0.7 * expected < prediction["segmentation"]["volumes_ml"][roi] < 1.3 * expected, (roi, expected)


def test_moved_bundle_predicts_identically(pipeline, tmp_path):
    """A bundle copied elsewhere predicts identically (weights travel with it)."""
    clinical = pd.read_csv(pipeline.clinical)
    clinical.iloc[[1]].to_csv(tmp_path / "row.csv", index=False)
    args = ["--ct", pipeline.cohort / "images" / "P0001.nii.gz", "--clinical", tmp_path / "row.csv", "--json"]
    first = json.loads(invoke("predict", *args, "--model", pipeline.bundle).stdout)
    shutil.copytree(pipeline.bundle, tmp_path / "moved")
    second = json.loads(invoke("predict", *args, "--model", tmp_path / "moved").stdout)
    assert first == second


def test_synth_is_deterministic(tmp_path):
    for name in ("a", "b"):
        assert invoke("synth", "--out", tmp_path / name, "--n", 12, "--seed", 4, "--workers", 1, "--quiet").exit_code == 0
    for table in ("clinical.csv", "outcomes.csv", "truth.csv"):
        assert (tmp_path / "a" / table).read_text() == (tmp_path / "b" / table).read_text()
    assert (tmp_path / "a" / "images" / "P0005.nii.gz").read_bytes() == (tmp_path / "b" / "images" / "P0005.nii.gz").read_bytes()


def test_version_and_help():
    assert invoke("--version").stdout.startswith("tipsprog ")
    listing = invoke("--help").stdout
    for command in ("synth", "segment", "radiomics", "embed", "fuse-train", "evaluate", "predict"):
        assert command in listing


@pytest.mark.slow
def test_external_cohort_is_predicted_with_the_bundles_features(pipeline, tmp_path):
    """evaluate --test: a new synthetic cohort from other centers goes through the same stages and the bundle's
    ensemble; its report setting carries the clinical baselines and, with both truth tables, the oracle."""
    ext = tmp_path / "ext"
    steps = [
        ("synth", "--out", ext / "cohort", "--n", 12, "--seed", 8, "--prefix", "ext-", "--quiet"),
        ("segment", ext / "cohort" / "cohort.csv", "--out", ext / "seg.h5", "--workers", 2, "--quiet"),
        ("radiomics", ext / "seg.h5", "--out", ext / "radiomics.h5", "--workers", 2, "--quiet"),
        (
            "embed",
            ext / "seg.h5",
            "--out",
            ext / "embed.h5",
            "--weights",
            pipeline.embed.with_suffix(".pt"),
            "--device",
            "cpu",
            "--quiet",
        ),
    ]
    for step in steps:
        result = invoke(*step)
        assert result.exit_code == 0, f"{step[0]} failed: {result.output}"
    cohort = ["--clinical", ext / "cohort" / "clinical.csv", "--outcomes", ext / "cohort" / "outcomes.csv"]
    result = invoke(
        "evaluate",
        pipeline.bundle,
        "--out",
        tmp_path / "report",
        "--test",
        ext / "embed.h5",
        "--test",
        ext / "radiomics.h5",
        "--test",
        ext / "seg.h5",
        *cohort,
        "--truth",
        pipeline.cohort / "truth.csv",
        "--truth",
        ext / "cohort" / "truth.csv",
        "--bootstrap",
        10,
        "--workers",
        1,
        "--device",
        "cpu",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    external = metrics["settings"]["external"]
    assert external["patients"] == 12 and metrics["settings"]["out-of-fold"]["patients"] == 30
    assert {"model", "clinical-cox", "FIPS", "oracle"} <= set(external["survival"])
    assert 0 <= external["survival"]["model"]["harrell_c"]["estimate"] <= 1
    assert (tmp_path / "report" / "external_km.png").is_file() and "External cohort" in (
        tmp_path / "report" / "report.md"
    ).read_text()
    unseen = "external: 0 of 12 patients' scans were seen by the ssl encoder"
    assert f"- {unseen}" in (tmp_path / "report" / "report.md").read_text()
    assert html.escape(unseen) in (tmp_path / "report" / "report.html").read_text()
    assert [metrics["transductive"][s]["steps"]["encoder"]["seen"] for s in ("out-of-fold", "external")] == [30, 0]
    assert any(
        note.startswith("external cohort: ") and "of 12 patients lie beyond the training cohort" in note
        for note in metrics["notes"]
    )
    assert any(  # the other centers' scanners: the acquisition checks are reported too
        note.startswith("external cohort: ") and "of 12 scans were acquired unlike the training scans" in note
        for note in metrics["notes"]
    )

    result = invoke(
        "evaluate",
        pipeline.bundle,
        "--out",
        tmp_path / "again",
        "--test",
        ext / "radiomics.h5",
        "--test",
        ext / "seg.h5",
        *cohort,
    )
    assert result.exit_code == 2 and "embed features are needed" in result.output and not (tmp_path / "again").exists()
    result = invoke(
        "evaluate",
        pipeline.bundle,
        "--out",
        tmp_path / "again",
        "--test",
        pipeline.radiomics,
        "--test",
        pipeline.embed,
        "--test",
        pipeline.seg,
        "--clinical",
        pipeline.clinical,
        "--outcomes",
        pipeline.outcomes,
    )
    assert result.exit_code == 2 and "is in the bundle's training cohort" in result.output


def _errors(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("error: ")]


def test_an_outcome_in_the_clinical_table_is_refused_by_every_command(pipeline, tmp_path):
    """time, event, ohe, ppg_post or any column of the outcomes file in clinical.csv would become a feature (an extra
    column): fuse-train, evaluate --test and predict refuse it with exit 2 and write nothing."""
    clinical = pd.read_csv(pipeline.clinical)
    outcomes = pd.read_csv(pipeline.outcomes)
    clinical.merge(outcomes[["patient_id", "ppg_post"]], on="patient_id").to_csv(tmp_path / "leak.csv", index=False)
    result = invoke(
        "fuse-train",
        pipeline.radiomics,
        "--clinical",
        tmp_path / "leak.csv",
        "--outcomes",
        pipeline.outcomes,
        "--out",
        tmp_path / "model",
        "--folds",
        2,
        "--device",
        "cpu",
        "--quiet",
    )
    assert result.exit_code == 2 and not (tmp_path / "model").exists()
    assert _errors(result) == [
        f"error: {tmp_path / 'leak.csv'}: column 'ppg_post' is an outcome, not a clinical variable; "
        f"remove it (outcomes go in {pipeline.outcomes})"
    ]
    outcomes.assign(days_in_icu=3).to_csv(tmp_path / "outcomes.csv", index=False)
    clinical.assign(**{"Days in ICU": 3}).to_csv(tmp_path / "icu.csv", index=False)
    result = invoke(
        "fuse-train",
        pipeline.radiomics,
        "--clinical",
        tmp_path / "icu.csv",
        "--outcomes",
        tmp_path / "outcomes.csv",
        "--out",
        tmp_path / "model",
        "--folds",
        2,
        "--device",
        "cpu",
        "--quiet",
    )
    assert result.exit_code == 2 and not (tmp_path / "model").exists()
    assert "icu.csv: column 'Days in ICU' is also a column of the outcomes file" in _errors(result)[0]
    clinical.merge(outcomes[["patient_id", "time"]], on="patient_id").to_csv(tmp_path / "timed.csv", index=False)
    result = invoke(
        "evaluate",
        pipeline.bundle,
        "--out",
        tmp_path / "report",
        "--test",
        pipeline.seg,
        "--test",
        pipeline.radiomics,
        "--test",
        pipeline.embed,
        "--clinical",
        tmp_path / "timed.csv",
        "--outcomes",
        pipeline.outcomes,
        "--bootstrap",
        10,
        "--device",
        "cpu",
        "--quiet",
    )
    assert result.exit_code == 2 and not (tmp_path / "report").exists()
    assert "timed.csv: column 'time' is an outcome" in _errors(result)[0]
    clinical.iloc[[0]].assign(OHE=0).to_csv(tmp_path / "row.csv", index=False)
    result = invoke(
        "predict",
        "--ct",
        pipeline.cohort / "images" / "P0000.nii.gz",
        "--clinical",
        tmp_path / "row.csv",
        "--model",
        pipeline.bundle,
        "--json",
    )
    assert result.exit_code == 2 and "row.csv: column 'OHE' is an outcome" in _errors(result)[0]


def test_bundle_records_the_provenance_of_its_feature_blocks(pipeline):
    blocks = yaml.safe_load((pipeline.bundle / "bundle.yaml").read_text())["pipeline"]["blocks"]
    with h5py.File(pipeline.radiomics) as rad, h5py.File(pipeline.embed) as emb:
        assert blocks["radiomics"]["provenance"] == {
            "segment_backend": "classic",
            "segment_model_sha256": "",
            "settings_sha256": rad["features/radiomics"].attrs["settings_sha256"],
        }
        assert blocks["embed-ssl"]["provenance"]["weights_sha256"] == emb["features/embed-ssl"].attrs["weights_sha256"]
    assert blocks["biomarkers"]["provenance"] == {"segment_backend": "classic", "segment_model_sha256": ""}
    with h5py.File(pipeline.seg) as seg:
        everyone = [p.decode() for p in seg["patients"][()]]
    transductive = yaml.safe_load((pipeline.bundle / "bundle.yaml").read_text())["transductive"]
    assert transductive == {"encoder": {"blocks": ["embed-ssl"], "fitted_on": everyone}}  # embed --fit saw every scan


@pytest.mark.parametrize(
    "store_name, block, key",
    [
        ("radiomics", "radiomics", "settings_sha256"),
        ("embed", "embed-ssl", "weights_sha256"),
        ("radiomics", "radiomics", "segment_backend"),
        ("seg", "biomarkers", "segment_model_sha256"),
    ],
)
def test_external_stores_must_come_from_the_bundles_feature_pipeline(pipeline, tmp_path, store_name, block, key):
    """evaluate --test compares each store's segment backend and model, radiomics settings and encoder weights with
    what the bundle was trained on; a mismatch is exit 2 naming the store, the attribute and both values."""
    stores = {name: tmp_path / f"{name}.h5" for name in ("seg", "radiomics", "embed")}
    for name, path in stores.items():
        shutil.copyfile(getattr(pipeline, name), path)
    with h5py.File(stores[store_name], "r+") as h5:
        expected = str(h5[f"features/{block}"].attrs[key])
        h5[f"features/{block}"].attrs[key] = "other"
    result = invoke(
        "evaluate",
        pipeline.bundle,
        "--out",
        tmp_path / "report",
        *(a for p in stores.values() for a in ("--test", p)),
        "--clinical",
        pipeline.clinical,
        "--outcomes",
        pipeline.outcomes,
        "--bootstrap",
        10,
        "--device",
        "cpu",
    )
    assert result.exit_code == 2 and not (tmp_path / "report").exists()
    assert _errors(result) == [
        f"error: {stores[store_name]}: feature block '{block}' has {key}='other', the bundle was "
        f"trained on {key}={expected!r}; extract the external cohort's features the same way"
    ]


@pytest.mark.slow
def test_a_clinical_score_without_its_inputs_is_noted_in_the_report(pipeline, tmp_path):
    """Without an albumin column FIPS, Child-Pugh and ALBI cannot be computed: metrics.json, report.md and report.html
    say so for the out-of-fold and the held-out patients instead of leaving them out silently."""
    pd.read_csv(pipeline.clinical).drop(columns="albumin").to_csv(tmp_path / "clinical.csv", index=False)
    pd.DataFrame({"patient_id": [f"P{i:04d}" for i in range(0, 30, 3)]}).to_csv(tmp_path / "test.csv", index=False)
    (tmp_path / "quick.yaml").write_text(
        "seeds: 1\nstages: [{name: joint, max_epochs: 20, patience: 5, shared_lr_scale: 1.0, "
        "loss_weights: {survival: 1.0, ohe: 0.5, ppg: 0.5}}]\n"
    )
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
        2,
        "--config",
        tmp_path / "quick.yaml",
        "--test",
        tmp_path / "test.csv",
        "--modalities",
        "radiomics",
        "--device",
        "cpu",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    external = tmp_path / "ext-radiomics.h5"  # the same scans as new patients: an external cohort without albumin
    shutil.copyfile(pipeline.radiomics, external)
    with h5py.File(external, "r+") as h5:
        renamed = np.array([f"ext-{p.decode()}" for p in h5["patients"][()]], dtype=object)
        del h5["patients"]
        h5.create_dataset("patients", data=renamed, dtype=h5py.string_dtype())
    for table in ("clinical", "outcomes"):
        source = tmp_path / "clinical.csv" if table == "clinical" else pipeline.outcomes
        pd.read_csv(source).assign(patient_id=lambda t: "ext-" + t["patient_id"]).to_csv(
            tmp_path / f"ext-{table}.csv", index=False
        )
    result = invoke(
        "evaluate",
        tmp_path / "model",
        "--out",
        tmp_path / "report",
        "--test",
        external,
        "--clinical",
        tmp_path / "ext-clinical.csv",
        "--outcomes",
        tmp_path / "ext-outcomes.csv",
        "--bootstrap",
        10,
        "--workers",
        1,
        "--device",
        "cpu",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    scores = ("FIPS", "Child-Pugh", "ALBI")
    expected = [f"{score} not shown: clinical.csv lacks albumin" for score in scores]
    assert set(expected) <= set(metrics["notes"])
    assert {f"held-out: {score} not shown: clinical.csv (held-out patients) lacks albumin" for score in scores} <= set(
        metrics["notes"]
    )
    assert {f"external cohort: {score} not shown: {tmp_path / 'ext-clinical.csv'} lacks albumin" for score in scores} <= set(
        metrics["notes"]
    )
    assert all(
        not set(scores) & set(setting["survival"]) and "MELD" in setting["survival"] for setting in metrics["settings"].values()
    )
    assert set(metrics["settings"]) == {"out-of-fold", "held-out", "external"}
    assert f"- {expected[0]}" in (tmp_path / "report" / "report.md").read_text()
    assert f"<li>{expected[0]}</li>" in (tmp_path / "report" / "report.html").read_text()


def test_a_value_tied_with_most_of_the_cohort_ranks_in_the_middle_of_the_tie():
    """0 mL of ascites where 97 of the 101 training percentiles are 0 ranks at 48 (mid-rank), not 96."""
    quantiles = [0.0] * 97 + [50.0, 100.0, 200.0, 400.0]
    assert percentile_rank(0.0, quantiles) == 48.0
    assert percentile_rank(75.0, quantiles) == 97.5
    assert percentile_rank(400.0, quantiles) == 100.0 and percentile_rank(500.0, quantiles) == 100.0
    assert percentile_rank(-1.0, quantiles) == 0.0
    assert percentile_rank(25.0, list(np.linspace(0.0, 100.0, 101))) == 25.0


def test_predict_warns_for_a_patient_unlike_the_training_cohort(pipeline, tmp_path):
    """Clinical values that are possible but far outside the training cohort's: the clinical modality is flagged."""
    clinical = pd.read_csv(pipeline.clinical).iloc[[0]]
    clinical = clinical.assign(bilirubin=45.0, creatinine=12.0, albumin=12.0, inr=8.0, sodium=105.0, platelets=1400.0)
    clinical.to_csv(tmp_path / "row.csv", index=False)
    result = invoke(
        "predict",
        "--ct",
        pipeline.cohort / "images" / "P0000.nii.gz",
        "--clinical",
        tmp_path / "row.csv",
        "--model",
        pipeline.bundle,
        "--json",
    )
    assert result.exit_code == 0, result.output
    warnings = json.loads(result.stdout)["warnings"]
    assert len(warnings) == 1 and warnings[0].startswith("clinical features lie beyond the training cohort")


def test_predict_warns_for_a_scan_acquired_unlike_the_training_scans(pipeline, tmp_path):
    """A training patient's own scan, resampled to half its voxel size and read 35 HU too bright (a scanner out of
    calibration; the padding outside the field of view keeps its value): the spacing and HU calibration checks
    fail, and the JSON lists their values."""
    ct = sitk.ReadImage(str(pipeline.cohort / "images" / "P0000.nii.gz"))
    grid = sitk.Image([2 * n for n in ct.GetSize()], sitk.sitkInt16)
    grid.SetSpacing([s / 2 for s in ct.GetSpacing()])
    grid.SetOrigin(ct.GetOrigin())
    grid.SetDirection(ct.GetDirection())
    finer = sitk.GetArrayFromImage(sitk.Resample(ct, grid, sitk.Transform(), sitk.sitkLinear, -1024))
    brighter = sitk.GetImageFromArray(np.where(finer > -1024, finer + 35, finer).astype(np.int16))
    brighter.CopyInformation(grid)
    sitk.WriteImage(brighter, str(tmp_path / "P0000.nii.gz"))
    pd.read_csv(pipeline.clinical).iloc[[0]].to_csv(tmp_path / "row.csv", index=False)
    result = invoke(
        "predict", "--ct", tmp_path / "P0000.nii.gz", "--clinical", tmp_path / "row.csv", "--model", pipeline.bundle, "--json"
    )
    assert result.exit_code == 0, result.output
    prediction = json.loads(result.stdout)
    checks = {line.split(":")[0] for line in prediction["warnings"] if ":" in line}
    assert {"spacing", "HU calibration"} <= checks
    described = prediction["segmentation"]["acquisition"]
    assert described["in_plane_spacing"] == pytest.approx(ct.GetSpacing()[0] / 2, abs=0.01)
    assert described["air_offset"] == pytest.approx(35, abs=6)  # the resampling blends air into the padding
