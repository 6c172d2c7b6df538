"""Cox partial likelihood and Breslow baseline against lifelines on real data (rossi)."""

import numpy as np
import pytest
import torch
from lifelines import CoxPHFitter
from lifelines.datasets import load_rossi

from tipsprog.fusion.losses import cox_efron_nll, masked_bce, masked_huber
from tipsprog.fusion.training import breslow


@pytest.fixture(scope="module")
def rossi_fit():
    data = load_rossi()
    fitter = CoxPHFitter().fit(data, "week", "arrest")
    covariates = data.drop(columns=["week", "arrest"]).to_numpy(float)
    risk = (covariates - covariates.mean(axis=0)) @ fitter.params_.to_numpy()
    return data, fitter, risk


def test_efron_loss_equals_lifelines_log_likelihood(rossi_fit):
    data, fitter, risk = rossi_fit
    assert data["week"].duplicated().any()  # rossi has tied event times: Efron matters
    nll = cox_efron_nll(torch.tensor(risk), torch.tensor(data["week"].to_numpy(float)), torch.tensor(data["arrest"].to_numpy(float)))
    assert -nll.item() == pytest.approx(fitter.log_likelihood_, rel=1e-9)
    assert fitter.log_likelihood_ == pytest.approx(-658.748, abs=1e-3)


def test_efron_loss_ignores_missing_times_and_gradients_flow(rossi_fit):
    data, _, risk = rossi_fit
    time = torch.tensor(np.append(data["week"].to_numpy(float), np.nan))
    event = torch.tensor(np.append(data["arrest"].to_numpy(float), np.nan))
    values = torch.tensor(np.append(risk, 5.0), requires_grad=True)
    loss = cox_efron_nll(values, time, event)
    loss.backward()
    assert values.grad[-1] == 0 and torch.isfinite(values.grad).all()


def test_breslow_matches_lifelines_baseline(rossi_fit):
    data, fitter, risk = rossi_fit
    times, cumhaz = breslow(risk, data["week"].to_numpy(float), data["arrest"].to_numpy(float))
    reference = fitter.baseline_cumulative_hazard_.iloc[:, 0]
    np.testing.assert_allclose(cumhaz, reference.loc[times].to_numpy(), rtol=1e-6)


def test_masked_losses_skip_missing_labels():
    logit = torch.tensor([0.0, 2.0, -1.0])
    target = torch.tensor([1.0, float("nan"), 0.0])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logit[[0, 2]], target[[0, 2]])
    assert masked_bce(logit, target, 1.0).item() == pytest.approx(expected.item())
    assert masked_huber(torch.tensor([1.0, 5.0]), torch.tensor([float("nan"), 5.0])).item() == 0.0
    assert masked_bce(logit, torch.full((3,), float("nan")), 1.0).item() == 0.0
