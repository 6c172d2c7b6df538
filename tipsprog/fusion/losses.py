"""Losses: Cox partial likelihood with Efron ties, masked BCE and masked Huber."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cox_efron_nll(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Negative Cox log partial likelihood with Efron's tie correction (sum over events).

    Patients with NaN time are ignored; returns 0 when there is no event.
    """
    known = ~torch.isnan(time)
    risk, time, event = risk[known], time[known], event[known].bool()
    if not bool(event.any()):
        return risk.sum() * 0.0
    shift = risk.detach().max()
    hazard = torch.exp(risk - shift)
    event_times = torch.unique(time[event])
    at_risk = time[None, :] >= event_times[:, None]
    tied = (time[None, :] == event_times[:, None]) & event[None, :]
    risk_set_sum = (at_risk * hazard[None, :]).sum(dim=1)
    tied_sum = (tied * hazard[None, :]).sum(dim=1)
    tie_count = tied.sum(dim=1)
    sorted_times, order = torch.sort(time[event])
    group = torch.bucketize(sorted_times, event_times)
    first_of_group = torch.cumsum(tie_count, dim=0) - tie_count
    rank = torch.arange(len(group), device=group.device) - first_of_group[group]
    fraction = rank.to(hazard.dtype) / tie_count[group].to(hazard.dtype)
    log_denominator = torch.log(risk_set_sum[group] - fraction * tied_sum[group]) + shift
    return (log_denominator - risk[event][order]).sum()


def masked_bce(logit: torch.Tensor, target: torch.Tensor, pos_weight: float) -> torch.Tensor:
    """Mean class-weighted BCE over patients whose label is known (0 if none)."""
    known = ~torch.isnan(target)
    if not bool(known.any()):
        return logit.sum() * 0.0
    weight = torch.tensor(pos_weight, dtype=logit.dtype, device=logit.device)
    return F.binary_cross_entropy_with_logits(logit[known], target[known], pos_weight=weight)


def masked_huber(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean Huber loss over patients whose target is known (0 if none)."""
    known = ~torch.isnan(target)
    if not bool(known.any()):
        return prediction.sum() * 0.0
    return F.huber_loss(prediction[known], target[known])
