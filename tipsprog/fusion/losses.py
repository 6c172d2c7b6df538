"""Losses over a row mask, so one batched ensemble trains every fold at once (torch.func.vmap-safe).

Every loss takes the whole cohort and a boolean `rows` mask of the patients a member may learn from; rows outside
it never reach the value or the gradient (torch.where, not multiplication, so a non-finite value there cannot leak).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SurvivalIndex:
    """Tie structure of a cohort's follow-up times, computed once and shared by every ensemble member."""

    order: torch.Tensor  # rows sorted by ascending time (rows with unknown time last)
    risk_set_start: torch.Tensor  # per distinct event time: first position in `order` still at risk
    event_group: torch.Tensor  # per row: its event time's index, or len(event_times) if not an event
    known_event: torch.Tensor  # per row: event observed (time known)
    known: torch.Tensor  # per row: time and event both known (only these rows enter the partial likelihood)
    max_ties: int

    @classmethod
    def build(cls, time: np.ndarray, event: np.ndarray, device: torch.device | str = "cpu") -> SurvivalIndex:
        """Index a cohort's times and events (NaN time or event: the row never counts)."""
        known = np.isfinite(time) & np.isfinite(event)
        sort_time = np.where(known, time, np.inf)
        order = np.argsort(sort_time, kind="stable")
        is_event = known & (np.nan_to_num(event) == 1)
        event_times = np.unique(time[is_event])
        start = np.searchsorted(sort_time[order], event_times, side="left")
        group = np.full(len(time), len(event_times))
        group[is_event] = np.searchsorted(event_times, time[is_event])
        ties = np.bincount(group[is_event], minlength=len(event_times)) if len(event_times) else np.zeros(0, int)
        as_tensor = partial(torch.as_tensor, device=device)
        return cls(
            as_tensor(order),
            as_tensor(start),
            as_tensor(group),
            as_tensor(is_event),
            as_tensor(known),
            int(ties.max()) if len(ties) else 0,
        )


def cox_efron_nll(risk: torch.Tensor, index: SurvivalIndex, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Negative Cox log partial likelihood with Efron's tie correction, summed over the events in `rows`.

    Equals lifelines' CoxPHFitter log-likelihood (tested on rossi). Returns 0 when `rows` hold no event. Rows whose
    time or event is unknown leave the likelihood entirely (they are in no risk set).
    """
    rows = index.known if rows is None else rows & index.known
    member_event = rows & index.known_event
    shift = torch.where(rows, risk, torch.full_like(risk, -torch.inf)).max().detach()
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    hazard = torch.where(rows, torch.exp(torch.where(rows, risk, torch.zeros_like(risk)) - shift), torch.zeros_like(risk))
    slots = len(index.risk_set_start) + 1
    suffix = torch.flip(torch.cumsum(torch.flip(hazard[index.order], [0]), 0), [0])
    risk_set = torch.cat([suffix, suffix.new_zeros(1)])[index.risk_set_start]
    event_hazard = torch.where(member_event, hazard, torch.zeros_like(hazard))
    tied_sum = hazard.new_zeros(slots).index_add(0, index.event_group, event_hazard)[:-1]
    tie_count = hazard.new_zeros(slots).index_add(0, index.event_group, member_event.to(hazard.dtype))[:-1]
    step = torch.arange(max(index.max_ties, 1), device=risk.device, dtype=hazard.dtype)
    used = step[None, :] < tie_count[:, None]
    fraction = step[None, :] / tie_count.clamp_min(1.0)[:, None]
    denominator = risk_set[:, None] - fraction * tied_sum[:, None]
    log_terms = torch.where(
        used, torch.log(torch.where(used, denominator, torch.ones_like(denominator))) + shift, torch.zeros_like(denominator)
    )
    return log_terms.sum() - torch.where(member_event, risk, torch.zeros_like(risk)).sum()


def masked_bce(logit: torch.Tensor, target: torch.Tensor, rows: torch.Tensor, pos_weight: torch.Tensor) -> torch.Tensor:
    """Mean class-weighted BCE over the patients in `rows` whose label is known (0 if none)."""
    known = rows & ~torch.isnan(target)
    per_row = F.binary_cross_entropy_with_logits(logit, torch.nan_to_num(target), pos_weight=pos_weight, reduction="none")
    return torch.where(known, per_row, torch.zeros_like(per_row)).sum() / known.sum().clamp_min(1)


def masked_huber(prediction: torch.Tensor, target: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Mean Huber loss over the patients in `rows` whose target is known (0 if none)."""
    known = rows & ~torch.isnan(target)
    per_row = F.huber_loss(prediction, torch.nan_to_num(target), reduction="none")
    return torch.where(known, per_row, torch.zeros_like(per_row)).sum() / known.sum().clamp_min(1)


def masked_mean(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Mean of a per-patient quantity over `rows`."""
    return torch.where(rows, values, torch.zeros_like(values)).sum() / rows.sum().clamp_min(1)


def sdm_loss(
    first: torch.Tensor, second: torch.Tensor, rows: torch.Tensor, logit_scale: float, epsilon: float = 1e-8
) -> torch.Tensor:
    """Bidirectional similarity distribution matching (IRRA's SDM, as TMI-CLNet uses it) among the patients in `rows`.

    p_ij = softmax_j(scale · cos(first_i, second_j)) over patients j in `rows`; q_ij = 1 when i and j are the same
    patient; loss = KL(p_i ‖ q_i) averaged over i, plus the same from `second` to `first`.
    """
    similarity = logit_scale * F.normalize(first, dim=-1) @ F.normalize(second, dim=-1).T
    pair = rows[:, None] & rows[None, :]
    log_target = torch.log(torch.eye(len(rows), dtype=first.dtype, device=first.device) + epsilon)

    def one_way(scores: torch.Tensor) -> torch.Tensor:
        log_p = torch.log_softmax(torch.where(pair, scores, torch.full_like(scores, -1e4)), dim=1)
        kl = torch.where(pair, log_p.exp() * (log_p - log_target), torch.zeros_like(scores)).sum(dim=1)
        return masked_mean(kl, rows)

    return one_way(similarity) + one_way(similarity.T)
