"""The training core is honest by construction: splits, inner validation, no test-fold leakage."""

import dataclasses

import numpy as np
import pytest
import torch

from tipsprog.errors import InputError
from tipsprog.fusion.config import load_config
from tipsprog.fusion.data import ModalityPreprocessor
from tipsprog.fusion.training import TrainingData, cross_validate, cv_splits, inner_split


def _cohort(n: int = 90, seed: int = 0) -> TrainingData:
    """Feature matrices with a known linear risk, two centers, some labels missing."""
    rng = np.random.default_rng(seed)
    clinical = rng.standard_normal((n, 4))
    radiomics = rng.standard_normal((n, 30))
    risk = clinical[:, 0] + radiomics[:, :3].sum(axis=1) * 0.5
    time = rng.exponential(500 * np.exp(-risk))
    event = (time < 700).astype(float)
    time = np.minimum(time, 700)
    ohe = (rng.random(n) < 1 / (1 + np.exp(-risk))).astype(float)
    ohe[:5] = np.nan
    ppg = 8 + risk + rng.standard_normal(n)
    return TrainingData([f"P{i}" for i in range(n)], np.array(["A", "B"] * (n // 2)),
                        {"clinical": clinical, "radiomics": radiomics},
                        {"clinical": [f"c{i}" for i in range(4)], "radiomics": [f"r{i}" for i in range(30)]},
                        time, event, ohe, ppg)


CONFIG = dataclasses.replace(load_config(), max_epochs=60, patience=20, folds=3, imaging_components=4)


def test_splits_are_patient_level_and_stratified():
    data = _cohort()
    splits = cv_splits(data.event, data.centers, 3, "kfold", 0)
    tests = np.concatenate([test for _, test in splits])
    assert sorted(tests) == list(range(len(data.event)))
    for train, test in splits:
        assert not set(train) & set(test)
        assert abs(data.event[test].mean() - data.event.mean()) < 0.1
        fit, val = inner_split(train, data.event, 0.2, 0)
        assert set(fit) | set(val) == set(train) and not set(fit) & set(val)
    for train, test in cv_splits(data.event, data.centers, 3, "center", 0):
        assert len(set(data.centers[test])) == 1 and set(data.centers[test]).isdisjoint(data.centers[train])


def test_test_fold_cannot_influence_its_fold_model():
    data = _cohort()
    first = cross_validate(data, CONFIG, "kfold", torch.device("cpu"))
    test_rows = np.flatnonzero(first.fold_of == 0)
    poisoned = dataclasses.replace(data, matrices={m: v.copy() for m, v in data.matrices.items()},
                                   time=data.time.copy(), ppg_post=data.ppg_post.copy())
    for values in poisoned.matrices.values():
        values[test_rows] = 1e6
    poisoned.time[test_rows], poisoned.ppg_post[test_rows] = 1.0, 59.0  # events kept: they define the strata
    second = cross_validate(poisoned, CONFIG, "kfold", torch.device("cpu"))
    before, after = first.members[0], second.members[0]
    assert before.best_epoch == after.best_epoch
    assert before.preprocessors["radiomics"].median == after.preprocessors["radiomics"].median
    for key, tensor in before.state_dict.items():
        torch.testing.assert_close(tensor, after.state_dict[key], rtol=0, atol=0)
    assert np.isfinite(first.oof["risk"]).all()


def test_risk_is_learned_and_unbounded():
    data = _cohort(n=150, seed=1)
    result = cross_validate(data, dataclasses.replace(CONFIG, max_epochs=150), "kfold", torch.device("cpu"))
    from tipsprog.evaluate.metrics import harrell_c
    assert harrell_c(data.time, data.event, result.oof["risk"]) > 0.65
    assert result.oof["risk"].max() > 1 or result.oof["risk"].min() < 0


def test_preprocessor_reduces_imaging_and_keeps_clinical():
    rng = np.random.default_rng(2)
    train = rng.standard_normal((40, 12))
    train[3, 5] = np.nan
    reduced = ModalityPreprocessor.fit(train, max_components=4)
    assert reduced.width == 4 and reduced.transform(train).shape == (40, 4)
    np.testing.assert_allclose(reduced.transform(train).std(axis=0), 1.0, atol=0.05)
    plain = ModalityPreprocessor.fit(train)
    assert plain.width == 12 and np.isfinite(plain.transform(train)).all()


def test_config_rejects_unknown_keys_and_bad_types(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("folds: 3\nlearnig_rate: 0.01\n")
    with pytest.raises(InputError, match="train.yaml: unknown config key 'learnig_rate'"):
        load_config(path)
    path.write_text("folds: three\n")
    with pytest.raises(InputError, match="'folds' must be int"):
        load_config(path)
    path.write_text("model: transformer\n")
    with pytest.raises(InputError, match="model 'transformer' unknown"):
        load_config(path)
    assert load_config(path=None, folds=4).folds == 4
