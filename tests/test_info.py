"""`tipsprog info`: what a store, a --resume journal or a bundle holds, as text and JSON; anything else is refused."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import invoke
from tipsprog import store
from tipsprog.journal import TrainingJournal, append, partial_path, patient_journal
from tipsprog.segment.biomarkers import NAMES as BIOMARKER_NAMES


def _info(*args) -> dict:
    result = invoke("info", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_info_on_each_store_says_its_patients_qc_and_blocks(pipeline):
    seg = _info(pipeline.seg)
    with store.open_store(pipeline.seg) as h5:
        status, _ = store.read_qc(h5)
    assert seg["kind"] == "store" and seg["patients"] == 30 and sum(seg["centers"].values()) == 30
    assert seg["qc"]["status"] == {state: status.count(state) for state in set(status)}
    assert seg["segment"]["backend"] == "classic" and seg["segment"]["masks"] == 30
    assert seg["blocks"]["biomarkers"]["features"] == len(BIOMARKER_NAMES)
    radiomics = _info(pipeline.radiomics)
    assert radiomics["blocks"]["radiomics"]["extractor"] == "pyradiomics"
    assert len(radiomics["blocks"]["radiomics"]["settings_sha256"]) == 64
    text = invoke("info", pipeline.embed)
    assert text.exit_code == 0 and yaml.safe_load(text.stdout) == _info(pipeline.embed)


def test_info_on_a_bundle_says_its_model_cohort_and_c(pipeline):
    bundle = _info(pipeline.bundle)
    manifest = yaml.safe_load((pipeline.bundle / "bundle.yaml").read_text())
    assert bundle["kind"] == "bundle" and bundle["model"] == manifest["config"]["model"]
    assert bundle["modalities"] == {name: len(names) for name, names in manifest["modalities"].items()}
    assert bundle["training"]["patients"] == manifest["training"]["patients"]
    assert set(bundle["harrell_c"]) >= {"model", "clinical-cox"} and "encoder" in bundle["transductive"]
    assert bundle["files"] == manifest["files"]


def test_info_on_resume_journals(tmp_path):
    out = tmp_path / "seg.h5"
    with pytest.raises(RuntimeError), patient_journal(out, "a" * 64, resume=False) as journal:
        for patient in ("P1", "P2"):
            append(journal, patient, "digest", lambda group: group.create_dataset("x", data=[1.0]))
        raise RuntimeError("killed")  # the journal of an interrupted run stays
    described = _info(partial_path(out))
    assert described == {
        "kind": "journal",
        "path": str(partial_path(out)),
        "settings_sha256": "a" * 64,
        "finished_patients": 2,
        "records": 2,
        "output": str(out),
    }
    model = tmp_path / "model"
    TrainingJournal(model, "b" * 64, resume=False).save(lambda: {"epoch": 3}, "stage 1, epoch 3", force=True)
    described = _info(partial_path(model))
    assert described["kind"] == "training journal" and described["position"] == "stage 1, epoch 3"
    assert described["settings_sha256"] == "b" * 64


@pytest.mark.parametrize("name", ["notes.txt", "folder", "missing.h5"])
def test_info_refuses_what_tipsprog_did_not_write_in_one_line(tmp_path, name):
    path = tmp_path / name
    if name == "notes.txt":
        path.write_text("hello")
    elif name == "folder":
        path.mkdir()
    result = invoke("info", path)
    assert result.exit_code == 2 and str(path) in result.output and len(result.output.strip().splitlines()) == 1
