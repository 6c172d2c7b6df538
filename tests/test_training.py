"""The training core is honest by construction and every model of the zoo trains: splits, inner validation,
no test-fold leakage, batched ensemble equal to one-at-a-time training, staged schedules, config validation."""

import dataclasses

import numpy as np
import pytest
import torch

from tipsprog.errors import InputError
from tipsprog.fusion.config import load_config
from tipsprog.fusion.crossval import cross_validate
from tipsprog.fusion.data import ModalityPreprocessor, TrainingData
from tipsprog.fusion.ensemble import member_network, mixed_precision, predict_members
from tipsprog.fusion.guide import RESIDUAL_WEIGHTS, residual_weight
from tipsprog.fusion.losses import SurvivalIndex
from tipsprog.fusion.models import Layout, build_model
from tipsprog.fusion.modules import OrganSimilarityFusion, pod_penalty
from tipsprog.fusion.splits import cv_splits, inner_split, plan_members, repeated_splits
from tipsprog.fusion.training import member_task_loss, train_ensemble
from tipsprog.journal import TrainingJournal
from tipsprog.registry import FUSION_MODELS
from tipsprog.survival import harrell_c

RADIOMICS_GROUPS = [
    f"{roi}/{image}/{kind}"
    for roi in ("liver", "spleen")
    for image in ("original", "log-sigma-2")
    for kind in ("firstorder", "glcm")
    for _ in range(3)
]
EMBED_GROUPS = [f"{roi}/embed-ssl/{pool}" for roi in ("liver", "spleen") for pool in ("mean", "max") for _ in range(4)]


def _cohort(n: int = 90, seed: int = 0) -> TrainingData:
    """Three modalities with a known linear risk, two centers, some labels missing."""
    rng = np.random.default_rng(seed)
    clinical = rng.standard_normal((n, 4))
    radiomics = rng.standard_normal((n, len(RADIOMICS_GROUPS)))
    embed = rng.standard_normal((n, len(EMBED_GROUPS)))
    risk = clinical[:, 0] + radiomics[:, :3].sum(axis=1) * 0.5 + 0.5 * embed[:, 0]
    time = rng.exponential(500 * np.exp(-risk))
    event = (time < 700).astype(float)
    time = np.minimum(time, 700)
    ohe = (rng.random(n) < 1 / (1 + np.exp(-risk))).astype(float)
    ohe[:5] = np.nan
    ppg = 8 + risk + rng.standard_normal(n)
    names = {
        "clinical": [f"c{i}" for i in range(4)],
        "radiomics": [f"r{i}" for i in range(radiomics.shape[1])],
        "embed": [f"e{i}" for i in range(embed.shape[1])],
    }
    return TrainingData(
        [f"P{i}" for i in range(n)],
        np.array(["A", "B"] * (n // 2)),
        {"clinical": clinical, "radiomics": radiomics, "embed": embed},
        names,
        {"clinical": names["clinical"], "radiomics": RADIOMICS_GROUPS, "embed": EMBED_GROUPS},
        time,
        event,
        ohe,
        ppg,
    )


def _config(model: str = "concat", epochs: int = 60, patience: int = 20, **changes):
    config = load_config(model=model)
    stages = [{**stage, "max_epochs": epochs, "patience": patience} for stage in config.stages]
    return dataclasses.replace(config, **{"folds": 3, "seeds": 1, "imaging_width": 2, "stages": stages, **changes})


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


def _poisoned(data: TrainingData, rows: np.ndarray, times: bool) -> TrainingData:
    """Test-fold features, OHE and ppg_post replaced by absurd values (and follow-up times when asked)."""
    poisoned = dataclasses.replace(
        data,
        matrices={m: v.copy() for m, v in data.matrices.items()},
        time=data.time.copy(),
        ppg_post=data.ppg_post.copy(),
        ohe=data.ohe.copy(),
    )
    for values in poisoned.matrices.values():
        values[rows] = 1e6
    poisoned.ppg_post[rows], poisoned.ohe[rows] = 59.0, 1.0 - np.nan_to_num(data.ohe[rows])
    if times:
        poisoned.time[rows] = 1.0  # events kept: they define the strata
    return poisoned


@pytest.mark.parametrize("times", [False, True])
def test_test_fold_cannot_influence_its_fold_model(times):
    """Nothing of fold 0's test patients reaches fold 0's members: preprocessing, early stopping or weights.

    Poisoned follow-up times reorder the risk-set cumulative sum, so weights then agree to float rounding only.
    """
    data = _cohort()
    config = _config("tmiclnet", epochs=30, patience=10)
    first = cross_validate(data, config, "kfold", torch.device("cpu"))
    test_rows = np.flatnonzero(first.folds[:, 0] == 0)
    second = cross_validate(_poisoned(data, test_rows, times), config, "kfold", torch.device("cpu"))
    before, after = first.members[0], second.members[0]
    assert before.fold == 0 and before.best_epochs == after.best_epochs
    for modality, fitted in before.preprocessors.items():
        assert fitted.median == after.preprocessors[modality].median
        assert fitted.token_components == after.preprocessors[modality].token_components
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if times else {"rtol": 0, "atol": 0}
    np.testing.assert_allclose(before.validation_loss, after.validation_loss, **tolerance)
    for key, tensor in before.state_dict.items():
        torch.testing.assert_close(tensor, after.state_dict[key], **tolerance)
    assert np.isfinite(first.oof["risk"]).all()


def test_validation_rows_lie_inside_the_training_fold():
    data = _cohort()
    splits = cv_splits(data.event, data.centers, 3, "kfold", 0)
    for plan in plan_members(data, splits, dataclasses.replace(_config(), seeds=2), seed=0):
        test_rows = splits[plan.fold][1]
        assert set(plan.val_rows) <= set(plan.train_rows) and not set(plan.val_rows) & set(test_rows)
        assert not set(plan.fit_rows) & set(plan.val_rows)


@pytest.mark.slow
def test_batched_ensemble_equals_training_members_one_after_another():
    """Weights agree to float rounding (Adam amplifies it on parameters with no true gradient, such as attention key
    biases), and so do the predictions; the vmapped prediction of all members equals each plain model's forward."""
    data = _cohort()
    config = _config("multitips", epochs=15, patience=5, dropout=0.0)
    plans = plan_members(data, cv_splits(data.event, data.centers, 3, "kfold", 0), config, seed=0)
    together = train_ensemble(data, plans, config, torch.device("cpu"))
    rows = np.arange(len(data.patient_ids))
    for plan, batched in zip(plans, together):
        alone = train_ensemble(data, [plan], config, torch.device("cpu"))[0]
        assert alone.best_epochs == batched.best_epochs
        for key, tensor in alone.state_dict.items():
            torch.testing.assert_close(tensor, batched.state_dict[key], rtol=0, atol=1e-4)
        risks = [predict_members([m], data.matrices, rows, config, torch.device("cpu"))["risk"][0] for m in (alone, batched)]
        np.testing.assert_allclose(risks[0], risks[1], atol=1e-5)
    together_risk = predict_members(together, data.matrices, rows, config, torch.device("cpu"))["risk"]
    for member, risk in zip(together, together_risk):
        network = member_network(member, config).eval()
        with torch.no_grad():
            plain = network({m: torch.from_numpy(p.transform(data.matrices[m])) for m, p in member.preprocessors.items()})
        np.testing.assert_allclose(risk, plain["risk"].double().numpy() - member.risk_center, atol=1e-5)


def test_repeated_cv_reshuffles_folds_and_averages_out_of_fold_predictions():
    data = _cohort()
    config = _config(epochs=10, patience=10, repeats=2)
    result = cross_validate(data, config, "kfold", torch.device("cpu"))
    assert len(result.members) == 2 * 3 and {m.repeat for m in result.members} == {0, 1}
    assert result.folds.shape == (len(data.patient_ids), 2) and (result.folds[:, 0] != result.folds[:, 1] - 3).any()
    assert set(result.folds[:, 1]) == {3, 4, 5} and len(result.baselines["model"]) == 6
    np.testing.assert_allclose(result.oof["risk"], result.per_repeat["risk"].mean(axis=1))
    assert (result.folds >= 0).all() and np.isfinite(result.per_repeat["risk"]).all()
    with pytest.raises(InputError, match="repeats must be 1"):
        repeated_splits(data.event, data.centers, config, "center", 0)


@pytest.mark.parametrize("model", list(FUSION_MODELS))
def test_every_model_trains_with_finite_decreasing_loss(model):
    data = _cohort()
    config = _config(model, epochs=25, patience=25)
    if model == "multitips":  # the POD weight at full strength from the start: a ramping term may raise the loss
        config = dataclasses.replace(config, multitips={**config.multitips, "ramp_epochs": 1})
    plans = plan_members(data, cv_splits(data.event, data.centers, 3, "kfold", 0), config, seed=0)[:1]
    member = train_ensemble(data, plans, config, torch.device("cpu"))[0]
    losses = np.array(member.train_loss)
    assert np.isfinite(losses).all() and len(losses) == 25 * len(config.stages)
    by_stage = losses.reshape(len(config.stages), 25)  # a later stage may add loss terms: compare within stages
    assert (by_stage[:, -5:].mean(axis=1) <= by_stage[:, :5].mean(axis=1)).all()
    assert (by_stage[:, :5].mean(axis=1) - by_stage[:, -5:].mean(axis=1)).max() > 0.01


@pytest.mark.parametrize("model", ["tmiclnet", "multitips", "graph", "late"])
@pytest.mark.parametrize("modalities", [("clinical",), ("radiomics",), ("embed", "radiomics"), ("clinical", "embed")])
def test_models_accept_any_subset_of_modalities(model, modalities):
    layout = {
        "clinical": Layout(["age", "sex"], 2),
        "radiomics": Layout(sorted(set(RADIOMICS_GROUPS)), 2),
        "embed": Layout(sorted(set(EMBED_GROUPS)), 2),
    }
    chosen = {m: layout[m] for m in modalities}
    network = build_model(model, chosen, 16, 0.1, load_config(model=model).model_options())
    outputs = network({m: torch.randn(5, len(spec.tokens), spec.width) for m, spec in chosen.items()})
    assert all(outputs[key].shape == (5,) and torch.isfinite(outputs[key]).all() for key in ("risk", "ohe", "ppg"))


def test_multitips_pod_penalty_is_on_the_gated_vectors_the_heads_use():
    """CGPE's FiLM gate adds a clinical shift to the shared and specific parts; the POD penalty must see the parts
    after it (a shift common to both makes them parallel: cosine² near 1), not the parts before it."""
    layout = {"clinical": Layout(["age", "sex"], 2), "radiomics": Layout(sorted(set(RADIOMICS_GROUPS)), 2)}
    torch.manual_seed(0)
    network = build_model("multitips", layout, 16, 0.0, load_config(model="multitips").model_options()).eval()
    with torch.no_grad():
        network.film["radiomics"].film.bias[32:] = 50.0  # the same large shift on both halves of [shared, specific]
        outputs = network({m: torch.randn(6, len(spec.tokens), spec.width) for m, spec in layout.items()})
    shared, specific = outputs["shared"]["radiomics"], outputs["specific"]["radiomics"]
    assert (torch.nn.functional.cosine_similarity(shared, specific, dim=-1) > 0.99).all()
    torch.testing.assert_close(outputs["penalty"], pod_penalty(outputs["shared"], outputs["specific"]))


def test_multitips_cgpe_gates_are_guided_by_the_clinical_cox():
    """CGPE uses clinical knowledge: under the linear guide, the guide's linear predictor conditions the FiLM gates,
    so the network's own (residual) risk depends on it."""
    layout = {"clinical": Layout(["age", "sex"], 2), "radiomics": Layout(sorted(set(RADIOMICS_GROUPS)), 2)}
    torch.manual_seed(0)
    network = build_model("multitips", layout, 16, 0.0, load_config(model="multitips").model_options(), guided=True).eval()
    for gate in network.fusion.film.values():
        torch.nn.init.normal_(gate.film.weight)
    for head in network.fusion.modules():
        if isinstance(head, torch.nn.Linear) and head.out_features == 1:
            torch.nn.init.normal_(head.weight)
    inputs = {m: torch.randn(6, len(spec.tokens), spec.width) for m, spec in layout.items()}
    residuals = []
    with torch.no_grad():
        for scale in (0.0, 1.0):
            network.clinical_coefficients.fill_(scale)
            residuals.append(network(inputs)["residual_risk"])
    assert not torch.allclose(residuals[0], residuals[1])


def test_multitips_orthogonality_weight_ramps_over_the_epochs_run():
    layout = {"clinical": Layout(["age", "sex"], 2)}
    network = build_model("multitips", layout, 16, 0.0, {"heads": 2, "orthogonality_weight": 0.4, "ramp_epochs": 10})
    outputs = {"risk": torch.zeros(4), "penalty": torch.ones(4)}
    rows = torch.ones(4, dtype=torch.bool)
    weights = [float(network.auxiliary_loss(outputs, rows, torch.tensor(float(epoch)))) for epoch in (0, 5, 10, 500)]
    assert weights == pytest.approx([0.0, 0.2, 0.4, 0.4])


def test_graph_selects_nodes_by_a_learned_score_that_gets_gradients():
    """DMMGNet's top-k by summed LayerNorm-ed activation ranks float noise at initialisation; the learned score
    spreads the tokens from the start and learns from the loss."""
    layout = {"radiomics": Layout(sorted(set(RADIOMICS_GROUPS)), 2), "embed": Layout(sorted(set(EMBED_GROUPS)), 2)}
    torch.manual_seed(0)
    network = build_model("graph", layout, 16, 0.0, load_config(model="graph").model_options())
    inputs = {m: torch.randn(8, len(spec.tokens), spec.width) for m, spec in layout.items()}
    tokens = torch.cat([network.embed[m](inputs[m]) for m in network.imaging], dim=1)
    assert network.graph.node_scores(tokens).std(dim=1).min() > 0.05
    network(inputs)["risk"].sum().backward()
    assert network.graph.score.weight.grad.abs().sum() > 0


def test_mmdfm_links_the_liver_tokens_most_similar_to_another_organ_and_starts_as_the_identity():
    """DMMGNet's MMDFM (Eqs. 6-8): α = (1, 0, 1, 0) leaves the tokens as they are; a liver token equal to a spleen
    token (similarity 1) is among the selected ones and, once α2 > 0, takes the spleen side's message."""
    torch.manual_seed(0)
    rois = ["liver"] * 6 + ["spleen"] * 6
    fusion = OrganSimilarityFusion(rois, 8, top_k=2)
    tokens = torch.randn(3, 12, 8)
    tokens[:, 4] = tokens[:, 9]  # liver token 4 equals spleen token 9
    torch.testing.assert_close(fusion(tokens), tokens)
    with torch.no_grad():
        fusion.alpha[1] = 1.0
    changed = (fusion(tokens) != tokens).any(dim=-1)
    assert changed[:, 4].all() and changed[:, :6].sum(dim=1).eq(2).all() and not changed[:, 6:].any()
    layout = {"radiomics": Layout(sorted(set(RADIOMICS_GROUPS)), 2)}
    options = {**load_config(model="graph").model_options(), "mmdfm": False}
    assert build_model("graph", layout, 16, 0.0, options).organs is None
    assert build_model("graph", layout, 16, 0.0, load_config(model="graph").model_options()).organs is not None


def test_tmiclnet_aligns_with_the_papers_weight():
    """TMI-CLNet's total loss is task + α·TMFF with α = 1 (Eq. 6) and λ = 0.6 (Eq. 5) by default."""
    options = load_config(model="tmiclnet").model_options()
    network = build_model("tmiclnet", {"clinical": Layout(["age", "sex"], 2)}, 16, 0.0, options)
    assert (network.alignment_weight, network.balance) == (1.0, 0.6)


def test_late_fusion_with_one_modality_equals_that_modality_model():
    layout = {"radiomics": Layout(sorted(set(RADIOMICS_GROUPS)), 2)}
    torch.manual_seed(3)
    late = build_model("late", layout, 16, 0.0)
    torch.manual_seed(3)
    single = build_model("concat", layout, 16, 0.0)
    inputs = {"radiomics": torch.randn(7, len(layout["radiomics"].tokens), 2)}
    for key, value in single(inputs).items():
        torch.testing.assert_close(late(inputs)[key], value)


@pytest.mark.parametrize("guided", [False, True])
def test_late_fusion_trains_each_modality_model_on_its_own_loss(guided):
    """True late fusion: a branch's gradient is that of its own task loss (as if trained alone), not of the
    averaged output's loss."""
    data = _cohort(40)
    layout = {"clinical": Layout(["age", "sex"], 2), "radiomics": Layout(sorted(set(RADIOMICS_GROUPS)), 2)}
    inputs = {m: torch.randn(40, len(spec.tokens), spec.width) for m, spec in layout.items()}
    network = build_model("late", layout, 16, 0.0, guided=guided)
    if guided:
        network.clinical_coefficients.normal_()
    index, rows = SurvivalIndex.build(data.time, data.event), torch.ones(40, dtype=torch.bool)
    labels = {"ohe": torch.zeros(40), "ppg": torch.zeros(40), "pos_weight": torch.tensor(1.0)}
    weights = {"survival": 1.0, "ohe": 0.5, "ppg": 0.5}
    outputs = network(inputs)
    total = sum(member_task_loss(part, rows, labels, weights, index) for part in network.loss_outputs(outputs))
    branch = (network.fusion if guided else network).branches["radiomics"]
    alone = branch({"radiomics": inputs["radiomics"]})
    if guided:
        alone["risk"] = outputs["clinical_risk"] + alone["risk"]
    parameters = list(branch.parameters())
    expected = torch.autograd.grad(member_task_loss(alone, rows, labels, weights, index), parameters, allow_unused=True)
    for got, want in zip(torch.autograd.grad(total, parameters, allow_unused=True), expected):
        if want is not None:
            torch.testing.assert_close(got, want)


def test_staged_schedule_runs_every_stage_and_freezes_nothing_it_should_train():
    data = _cohort()
    config = _config("multitips", epochs=10, patience=10)
    assert [stage["name"] for stage in config.stages] == ["survival", "add-ohe-ppg", "joint"]
    assert config.stages[0]["loss_weights"]["ohe"] == 0 and config.stages[1]["shared_lr_scale"] < 1
    plans = plan_members(data, cv_splits(data.event, data.centers, 3, "kfold", 0), config, seed=0)[:1]
    member = train_ensemble(data, plans, config, torch.device("cpu"))[0]
    assert len(member.best_epochs) == 3 and len(member.train_loss) == 30


def test_risk_is_learned_and_unbounded():
    data = _cohort(n=150, seed=1)
    result = cross_validate(data, _config(epochs=150, patience=40, imaging_width=4), "kfold", torch.device("cpu"))
    assert harrell_c(data.time, data.event, result.oof["risk"]) > 0.6
    assert result.oof["risk"].max() > 1 or result.oof["risk"].min() < 0


def test_preprocessor_keeps_token_layout_and_reduces_wide_groups():
    rng = np.random.default_rng(2)
    train = rng.standard_normal((40, 12))
    train[3, 5] = np.nan
    train[:, 11] = 1.0
    groups = ["a"] * 6 + ["b"] * 2 + ["c"] * 4
    reduced = ModalityPreprocessor.fit(train, groups, max_width=3)
    out = reduced.transform(train)
    assert out.shape == (40, 3, 3) and reduced.token_names == ["a", "b", "c"]
    np.testing.assert_allclose(out[:, 0].std(axis=0), 1.0, atol=0.05)
    assert (out[:, 1, 2] == 0).all() and 11 not in reduced.token_columns[2]
    plain = ModalityPreprocessor.fit(train, groups)
    assert plain.width == 6 and np.isfinite(plain.transform(train)).all()


def test_every_fold_gets_the_same_layout_when_a_level_is_absent_from_one():
    """A one-hot level no training patient of a fold has (a rare etiology in a 10-patient fold) is unusable there;
    the layout must not shrink with it, or the fold's members cannot be stacked with the others' (it did: 'stack
    expects each tensor to be equal size' at 20 patients, 2 folds)."""
    rng = np.random.default_rng(3)
    train = rng.standard_normal((10, 5))
    groups = ["age", "etiology", "etiology", "etiology", "etiology"]
    train[:, 1:] = np.eye(4)[rng.choice([0, 1, 2], size=10)]  # the fourth level never occurs in this fold
    assert ModalityPreprocessor.fit(train, groups).width == 4


def test_a_task_left_out_of_a_stage_has_weight_zero(tmp_path):
    """loss_weights: {survival: 1.0} trains survival alone in that stage (it stopped training with KeyError: 'ohe')."""
    path = tmp_path / "train.yaml"
    path.write_text("stages: [{name: a, max_epochs: 10, patience: 5, shared_lr_scale: 1.0, loss_weights: {survival: 1.0}}]\n")
    assert load_config(path).stages[0]["loss_weights"] == {"survival": 1.0, "ohe": 0.0, "ppg": 0.0}
    assert load_config().stages == load_config(model="concat").stages  # packaged configs name every task: unchanged


def test_config_rejects_unknown_keys_and_bad_types(tmp_path):
    path = tmp_path / "train.yaml"
    cases = {
        "folds: 3\nlearnig_rate: 0.01\n": "train.yaml: unknown config key 'learnig_rate'",
        "folds: three\n": "'folds' must be int",
        "model: transformer\n": "train.yaml: model transformer: unknown fusion model; choose one of clinical-cox, concat",
        "tmiclnet: {balanse: 0.5}\n": "unknown key 'tmiclnet.balanse'",
        "stages: [{name: a, max_epochs: 10, patience: 5, loss_weights: {survival: 1.0}}]\n": r"stages\[1\] needs exactly the keys",
        "stages: [{name: a, max_epochs: 10, patience: 5, shared_lr_scale: 1.0, loss_weights: {death: 1.0}}]\n": r"unknown key 'stages\[1\].loss_weights.death'",
        "hidden: 31\n": "divisible by the attention heads",
    }
    for text, message in cases.items():
        path.write_text(text)
        with pytest.raises(InputError, match=message):
            load_config(path)


def test_model_preset_applies_before_the_user_file(tmp_path):
    assert len(load_config(model="multitips").stages) == 3 and len(load_config(model="concat").stages) == 1
    path = tmp_path / "train.yaml"
    path.write_text(
        "model: multitips\nstages: [{name: one, max_epochs: 5, patience: 2, shared_lr_scale: 1.0, "
        "loss_weights: {survival: 1.0, ohe: 0.0, ppg: 0.0}}]\nmultitips: {orthogonality_weight: 0.5}\n"
    )
    config = load_config(path)
    assert [s["name"] for s in config.stages] == ["one"]
    assert config.model_options() == {"heads": 2, "orthogonality_weight": 0.5, "ramp_epochs": 60, "mgra": True, "cgpe": True}


class _CountingJournal(TrainingJournal):
    """A journal that counts its saves and, given `kill_after`, interrupts the run (KeyboardInterrupt) after that many."""

    def __init__(self, out, resume: bool, kill_after: int = 0):
        super().__init__(out, "same settings", resume)
        self.saves, self.kill_after = 0, kill_after

    def save(self, state, position: str, force: bool = False) -> None:
        super().save(state, position, force)
        self.saves += 1
        if self.saves == self.kill_after:
            raise KeyboardInterrupt


@pytest.mark.parametrize("saves", [4, 11, 15], ids=["mid-first-stage", "stage-boundary", "mid-second-stage"])
def test_training_killed_and_resumed_equals_an_uninterrupted_run(tmp_path, monkeypatch, saves):
    """Weights, best epochs and loss histories are bit-identical: optimiser, early-stopping and dropout state resume."""
    monkeypatch.setenv("TIPSPROG_CHECKPOINT_SECONDS", "0")
    data = _cohort(60)
    config = _config("multitips", epochs=10, patience=10)
    plans = plan_members(data, cv_splits(data.event, data.centers, 3, "kfold", 0), config, seed=0)
    whole = _CountingJournal(tmp_path / "whole", resume=False)
    uninterrupted = train_ensemble(data, plans, config, torch.device("cpu"), journal=whole)
    with pytest.raises(KeyboardInterrupt):
        train_ensemble(data, plans, config, torch.device("cpu"), journal=_CountingJournal(tmp_path / "model", False, saves))
    torch.manual_seed(12345)
    rest = _CountingJournal(tmp_path / "model", resume=True)
    resumed = train_ensemble(data, plans, config, torch.device("cpu"), journal=rest)
    assert rest.saves == whole.saves - saves  # it went on from the saved epoch rather than starting again
    for before, after in zip(uninterrupted, resumed):
        assert before.best_epochs == after.best_epochs and before.train_loss == after.train_loss
        for key, tensor in before.state_dict.items():
            torch.testing.assert_close(after.state_dict[key], tensor, rtol=0, atol=0)
    assert TrainingJournal(tmp_path / "model", "same settings", True).load()["stage"] == len(config.stages)
    assert TrainingJournal(tmp_path / "model", "other settings", True).load() is None
    assert TrainingJournal(tmp_path / "model", "same settings", False).load() is None


def test_a_patient_with_unknown_time_trains_and_leaves_the_survival_loss():
    data = _cohort()
    data.time[4], data.event[4] = np.nan, np.nan
    result = cross_validate(data, _config(epochs=5, patience=5), "kfold", torch.device("cpu"))
    assert np.isfinite(result.oof["risk"]).all()


def _clinical_only_cohort(n: int, seed: int) -> TrainingData:
    """Outcome driven by the clinical table alone; the imaging modalities are noise."""
    data = _cohort(n, seed)
    rng = np.random.default_rng(seed + 100)
    risk = data.matrices["clinical"][:, 0] - 0.7 * data.matrices["clinical"][:, 1]
    time = rng.exponential(500 * np.exp(-risk))
    return dataclasses.replace(data, time=np.minimum(time, 700), event=(time < 700).astype(float))


def test_guided_model_starts_from_the_clinical_cox_and_centres_each_member():
    data = _cohort()
    config = _config(epochs=3, patience=3)
    plans = plan_members(data, cv_splits(data.event, data.centers, 3, "kfold", 0), config, seed=0)[:1]
    member = train_ensemble(data, plans, config, torch.device("cpu"))[0]
    network = build_model(config.model, member.layout, config.hidden, config.dropout, guided=True)
    network.load_state_dict(member.state_dict)
    assert 0.0 <= float(network.residual_weight) <= 1.0
    fresh = build_model(config.model, member.layout, config.hidden, config.dropout, guided=True).eval()
    inputs = {m: torch.from_numpy(p.transform(data.matrices[m])) for m, p in member.preprocessors.items()}
    with torch.no_grad():
        outputs = fresh(inputs)
    assert torch.equal(outputs["residual_risk"], torch.zeros_like(outputs["residual_risk"]))
    result = cross_validate(data, config, "kfold", torch.device("cpu"))
    for fold, (train_rows, _) in enumerate(cv_splits(data.event, data.centers, 3, "kfold", 0)):
        members = [m for m in result.members if m.fold == fold]
        risk = predict_members(members, data.matrices, train_rows, config, torch.device("cpu"))["risk"]
        np.testing.assert_allclose(risk.mean(axis=1), 0.0, atol=1e-9)


@pytest.mark.slow
def test_default_fusion_does_not_lose_to_the_clinical_cox_when_images_are_noise():
    """With the clinical Cox as offset the imaging residual is weighted down (or off) in each fold, so the fused
    model stays at the clinical Cox's C; without the offset the same network loses to it."""
    data = _clinical_only_cohort(150, 1)
    delta = {}
    for guided in (True, False):
        config = _config(epochs=120, patience=30, imaging_width=4, folds=5, seeds=2, clinical_offset=guided)
        result = cross_validate(data, config, "kfold", torch.device("cpu"), seed=1)
        delta[guided] = harrell_c(data.time, data.event, result.oof["risk"]) - harrell_c(
            data.time, data.event, result.oof["clinical_cox_risk"]
        )
    assert delta[True] >= -0.01 and delta[False] < delta[True] - 0.02


def test_residual_weight_needs_the_margin_per_member_not_summed_over_members():
    """Five members each gaining 1 nat at w = 0.5 on their own validation rows are each short of the 1.92-nat
    likelihood-ratio margin: their sum (5 nats) must not pass it for them; a mean gain of 3 nats does pass."""
    gain = np.abs(RESIDUAL_WEIGHTS - 0.5) - 0.5  # 0 at w = 0, its minimum (−0.5) at w = 0.5
    assert residual_weight(np.tile(100.0 + 2.0 * gain, (5, 1))) == 0.0
    assert residual_weight(np.tile(100.0 + 6.0 * gain, (5, 1))) == 0.5
    assert residual_weight(np.tile(100.0 - 6.0 * gain, (5, 1))) == 0.0  # the residual only hurts


def test_predictions_are_never_made_in_bf16():
    assert mixed_precision(torch.device("cuda"), train=True)
    assert not mixed_precision(torch.device("cuda"), train=False)
    assert not mixed_precision(torch.device("cpu"), train=True)


@pytest.mark.parametrize(
    ("model", "switch", "module"),
    [("multitips", "mgra", "granular"), ("multitips", "cgpe", "prior"), ("graph", "sgcm", "graph"), ("graph", "mmdfm", "organs")],
)
def test_each_paper_module_can_be_switched_off_for_its_ablation(model, switch, module):
    """The ablation benchmark switches one paper module off at a time: the model is built without it and still runs."""
    layout = {"clinical": Layout(["age", "sex"], 2), "radiomics": Layout(sorted(set(RADIOMICS_GROUPS)), 2)}
    options = load_config(model=model).model_options()
    assert getattr(build_model(model, layout, 16, 0.0, options), module) is not None
    network = build_model(model, layout, 16, 0.0, {**options, switch: False})
    assert getattr(network, module) is None
    if switch == "cgpe":
        assert not network.film
    outputs = network({m: torch.randn(5, len(spec.tokens), spec.width) for m, spec in layout.items()})
    assert outputs["risk"].shape == (5,) and torch.isfinite(outputs["risk"]).all()
