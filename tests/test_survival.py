"""Cox partial likelihood, Breslow baseline and masked losses against lifelines on real data (rossi)."""

import numpy as np
import pytest
import torch
from lifelines import CoxPHFitter
from lifelines.datasets import load_rossi
from torch.func import vmap

from tipsprog.fusion.losses import SurvivalIndex, cox_efron_nll, masked_bce, masked_huber, sdm_loss
from tipsprog.survival import BreslowBaseline


@pytest.fixture(scope="module")
def rossi():
    data = load_rossi()
    covariates = data.drop(columns=["week", "arrest"]).to_numpy(float)
    index = SurvivalIndex.build(data["week"].to_numpy(float), data["arrest"].to_numpy(float))
    return data, covariates, index


def _linear_risk(covariates: np.ndarray, fitter: CoxPHFitter, rows: np.ndarray) -> torch.Tensor:
    return torch.tensor((covariates - covariates[rows].mean(axis=0)) @ fitter.params_.to_numpy())


def test_efron_loss_equals_lifelines_log_likelihood(rossi):
    data, covariates, index = rossi
    assert data["week"].duplicated().any() and index.max_ties > 1  # rossi has tied event times: Efron matters
    fitter = CoxPHFitter().fit(data, "week", "arrest")
    nll = cox_efron_nll(_linear_risk(covariates, fitter, np.arange(len(data))), index)
    assert -nll.item() == pytest.approx(fitter.log_likelihood_, rel=1e-9)
    assert fitter.log_likelihood_ == pytest.approx(-658.748, abs=1e-3)


def test_row_mask_equals_fitting_the_subset_and_batches_over_members(rossi):
    data, covariates, index = rossi
    rows = np.random.default_rng(0).random(len(data)) < 0.6
    fitter = CoxPHFitter().fit(data[rows], "week", "arrest")
    risk = _linear_risk(covariates, fitter, rows)
    masked = cox_efron_nll(risk, index, torch.from_numpy(rows))
    assert -masked.item() == pytest.approx(fitter.log_likelihood_, rel=1e-9)
    members = torch.from_numpy(np.stack([rows, ~rows, np.ones(len(data), bool)]))
    batched = vmap(lambda r: cox_efron_nll(risk, index, r))(members)
    expected = [cox_efron_nll(risk, index, m) for m in members]
    torch.testing.assert_close(batched, torch.stack(expected))


def test_linear_cox_trained_on_the_loss_reproduces_lifelines_coefficients(rossi):
    data, covariates, index = rossi
    fitter = CoxPHFitter().fit(data, "week", "arrest")
    centred = torch.tensor(covariates - covariates.mean(axis=0))
    coefficients = torch.zeros(centred.shape[1], dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [coefficients], max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = cox_efron_nll(centred @ coefficients, index)
        loss.backward()
        return loss

    optimiser.step(closure)
    np.testing.assert_allclose(coefficients.detach().numpy(), fitter.params_.to_numpy(), atol=1e-3)


def test_rows_outside_the_mask_never_reach_value_or_gradient(rossi):
    data, covariates, index = rossi
    rows = torch.ones(len(data), dtype=torch.bool)
    rows[-1] = False
    risk = torch.zeros(len(data), dtype=torch.float64)
    risk[-1] = float("inf")
    risk.requires_grad_(True)
    loss = cox_efron_nll(risk, index, rows)
    loss.backward()
    assert torch.isfinite(loss) and risk.grad[-1] == 0 and torch.isfinite(risk.grad).all()


def test_breslow_matches_lifelines_baseline_and_survival(rossi):
    data, covariates, _ = rossi
    fitter = CoxPHFitter().fit(data, "week", "arrest")
    risk = _linear_risk(covariates, fitter, np.arange(len(data))).numpy()
    baseline = BreslowBaseline.fit(risk, data["week"].to_numpy(float), data["arrest"].to_numpy(float))
    reference = fitter.baseline_cumulative_hazard_.iloc[:, 0]
    np.testing.assert_allclose(baseline.cumhaz, reference.loc[baseline.times].to_numpy(), rtol=1e-6)
    weeks = np.array([1.0, 10.0, 26.0, 52.0])  # event times (lifelines interpolates between them; Breslow is a step)
    expected = fitter.predict_survival_function(data.iloc[:7], times=weeks).to_numpy().T
    np.testing.assert_allclose(baseline.survival(risk[:7], weeks), expected, rtol=1e-6)
    own = data["week"].to_numpy(float)[:7]
    np.testing.assert_allclose(baseline.survival_at_own_time(risk[:7], own), np.diag(baseline.survival(risk[:7], own)))


def test_masked_losses_skip_missing_labels_and_other_rows():
    logit = torch.tensor([0.0, 2.0, -1.0, 9.0])
    target = torch.tensor([1.0, float("nan"), 0.0, 1.0])
    rows = torch.tensor([True, True, True, False])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logit[[0, 2]], target[[0, 2]])
    assert masked_bce(logit, target, rows, torch.tensor(1.0)).item() == pytest.approx(expected.item())
    assert (
        masked_huber(
            torch.tensor([1.0, 5.0, 0.0]), torch.tensor([float("nan"), 5.0, 9.0]), torch.tensor([True, True, False])
        ).item()
        == 0.0
    )
    assert masked_bce(logit, torch.full((4,), float("nan")), rows, torch.tensor(1.0)).item() == 0.0


def test_sdm_is_small_when_modalities_identify_the_same_patient():
    generator = torch.Generator().manual_seed(0)
    first = torch.randn(40, 8, generator=generator)
    rows = torch.ones(40, dtype=torch.bool)
    matched = sdm_loss(first, first + 0.01 * torch.randn(40, 8, generator=generator), rows, logit_scale=50.0)
    shuffled = sdm_loss(first, first[torch.randperm(40, generator=generator)], rows, logit_scale=50.0)
    assert matched < 0.1 < shuffled
    rows[20:] = False
    poisoned = first.clone()
    poisoned[20:] = 1e3
    assert sdm_loss(first, poisoned, rows, 50.0) == pytest.approx(sdm_loss(first[:20], first[:20], rows[:20], 50.0).item())


@pytest.mark.parametrize("unknown", ["time", "event"])
def test_rows_with_unknown_time_or_event_leave_the_partial_likelihood(rossi, unknown):
    """A row whose time or event is unknown must not sit in any risk set: the loss (and its gradient) equals the loss
    with that patient left out of the rows, whatever risk the row is given."""
    data, covariates, _ = rossi
    time, event = data["week"].to_numpy(float), data["arrest"].to_numpy(float)
    (time if unknown == "time" else event)[[3, 10]] = np.nan
    index = SurvivalIndex.build(time, event)
    risk = torch.tensor(covariates @ np.linspace(-0.3, 0.3, covariates.shape[1]), requires_grad=True)
    everyone = cox_efron_nll(risk, index, torch.ones(len(data), dtype=torch.bool))
    dropped = torch.ones(len(data), dtype=torch.bool)
    dropped[[3, 10]] = False
    without = cox_efron_nll(risk, index, dropped)
    torch.testing.assert_close(everyone, without)
    torch.testing.assert_close(torch.autograd.grad(everyone, risk)[0], torch.autograd.grad(without, risk)[0])
    torch.testing.assert_close(cox_efron_nll(risk, index), without)
