"""Transductive feature steps: the bundle's record of them and what evaluate says per setting."""

from __future__ import annotations

import json

import numpy as np

from tipsprog.store import FeatureBlock
from tipsprog.transductive import exposure_report, fitted_steps


def _block(**attrs: str) -> FeatureBlock:
    return FeatureBlock(np.zeros((2, 1), np.float32), ["f"], ["g"], attrs)


def test_bundle_records_each_fitted_step_with_its_patients():
    blocks = {
        "biomarkers": _block(
            segment_backend="semi", segment_fitted_on=json.dumps(["A", "B", "C"]), segment_fitted_labeled=json.dumps(["A"])
        ),
        "embed-ssl": _block(segment_backend="semi", encoder="ssl", encoder_fitted_on="unknown"),
        "radiomics": _block(segment_backend="classic"),
    }
    assert fitted_steps(blocks) == {
        "segment": {"blocks": ["biomarkers", "embed-ssl"], "fitted_on": ["A", "B", "C"], "labeled": ["A"]},
        "encoder": {"blocks": ["embed-ssl"], "fitted_on": "unknown"},
    }
    assert fitted_steps({"radiomics": _block(segment_backend="classic"), "embed-ctfm": _block(encoder="ctfm")}) == {}


def test_report_counts_the_patients_each_fitted_step_saw_per_setting():
    recorded = {
        "encoder": {"blocks": ["embed-ssl"], "fitted_on": ["A", "B", "C"]},
        "segment": {"blocks": ["biomarkers"], "fitted_on": ["A", "B", "X"], "labeled": ["A"]},
    }
    settings = {
        "out-of-fold": (["A", "B", "C"], ["c1", "c1", "c2"]),
        "held-out": (["X"], ["c1"]),
        "external": (["E1", "E2"], ["e1", "e2"]),
    }
    document, notes = exposure_report("kfold", recorded, settings)
    assert notes == [
        "out-of-fold: the ssl encoder was pre-trained on the scans of 3 of these 3 patients (unlabeled), test folds included",
        "out-of-fold: the semi segmentation model was trained on the scans of 2 of these 3 patients (1 with reference "
        "labels, 1 unlabeled), test folds included",
        "held-out: 0 of 1 patients' scans were seen by the ssl encoder",
        "held-out: the semi segmentation model was trained on the scans of 1 of these 1 patients (unlabeled)",
        "external: 0 of 2 patients' scans were seen by the ssl encoder",
        "external: 0 of 2 patients' scans were seen by the semi segmentation model",
    ]
    assert document["out-of-fold"]["steps"]["segment"] == {
        "blocks": ["biomarkers"],
        "seen": 2,
        "centers_seen": 1,
        "seen_labeled": 1,
    }
    assert document["external"] == {
        "patients": 2,
        "recorded": True,
        "steps": {
            "encoder": {"blocks": ["embed-ssl"], "seen": 0, "centers_seen": 0},
            "segment": {"blocks": ["biomarkers"], "seen": 0, "centers_seen": 0, "seen_labeled": 0},
        },
    }


def test_report_says_leave_one_center_out_unknown_and_nothing_fitted():
    oof = {"out-of-fold": (["A", "B", "C"], ["c1", "c2", "c3"])}
    recorded = {"encoder": {"blocks": ["embed-ssl"], "fitted_on": ["A", "B"]}}
    assert exposure_report("center", recorded, oof)[1] == [
        "leave-one-center-out: the ssl encoder was pre-trained on the scans of 2 of these 3 patients (unlabeled), the "
        "left-out centers included (2 of 3 centers)"
    ]
    recorded["encoder"]["fitted_on"] = "unknown"
    document, notes = exposure_report("center", recorded, oof)
    assert notes == [
        "leave-one-center-out: unknown whether the ssl encoder saw these 3 patients' scans (its file does "
        "not record the patients it was fitted on)"
    ]
    assert document["out-of-fold"]["steps"]["encoder"]["seen"] is None
    assert exposure_report("kfold", None, oof)[1] == [
        "out-of-fold: unknown whether a fitted feature step saw these 3 patients' scans (the bundle predates that record)"
    ]
    assert exposure_report("kfold", {}, oof)[1] == [
        "out-of-fold: no feature step was fitted on scans; none of these 3 patients' scans was seen before evaluation"
    ]
