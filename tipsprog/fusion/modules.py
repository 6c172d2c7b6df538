"""Building blocks of the fusion models: token embeddings, attention, the papers' interaction modules.

Inputs are token sequences, one token per feature group ([patients, tokens, width]). Everything here works
row by row (no batch statistics, so a patient outside a member's training rows cannot change its training) and
under torch.func.vmap, which trains all cross-validation members as one batched ensemble. Attention is written
with einsum because torch's fused attention kernels have no vmap batching rule and would run member by member.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn


class TokenEmbedding(nn.Module):
    """One linear map per token from its group's components to `hidden`, plus a learned token identity, LayerNorm."""

    def __init__(self, tokens: int, width: int, hidden: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(tokens, width, hidden) / math.sqrt(width))
        self.identity = nn.Parameter(0.02 * torch.randn(tokens, hidden))
        self.norm = nn.LayerNorm(hidden)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """[patients, tokens, width] → [patients, tokens, hidden]."""
        return self.norm(torch.einsum("ntk,tkh->nth", values, self.weight) + self.identity)


class Attention(nn.Module):
    """Multi-head attention of query tokens over context tokens (scaled dot product)."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden {hidden} is not divisible by {heads} heads")
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key_value = nn.Linear(hidden, 2 * hidden)
        self.out = nn.Linear(hidden, hidden)

    def _split_heads(self, tokens: torch.Tensor) -> torch.Tensor:
        """[n, t, h] → [n, heads, t, h / heads]."""
        n, length, hidden = tokens.shape
        return tokens.reshape(n, length, self.heads, hidden // self.heads).transpose(1, 2)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """[n, q, h] attending over [n, c, h] → [n, q, h]."""
        n, q_len, hidden = query.shape
        q = self._split_heads(self.query(query))
        k, v = (self._split_heads(t) for t in self.key_value(context).chunk(2, dim=-1))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hidden // self.heads), dim=-1)
        return self.out((weights @ v).transpose(1, 2).reshape(n, q_len, hidden))


class AttentionBlock(nn.Module):
    """Pre-norm transformer block: attention (self when no context is given) then a feed-forward layer.

    No dropout inside: per-token dropout masks cost more than the attention itself on a CPU; the models drop out
    on their pooled representations instead.
    """

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.norm_query = nn.LayerNorm(hidden)
        self.norm_context = nn.LayerNorm(hidden)
        self.attention = Attention(hidden, heads)
        self.norm_ff = nn.LayerNorm(hidden)
        self.feed_forward = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden))

    def forward(self, tokens: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens updated by attending over `context` (or themselves)."""
        query = self.norm_query(tokens)
        tokens = tokens + self.attention(query, query if context is None else self.norm_context(context))
        return tokens + self.feed_forward(self.norm_ff(tokens))


class CyclicCrossAttention(nn.Module):
    """TMI-CLNet's TCAF: modality i attends over modality i+1 (cyclically); W_o(attended ⊕ own) per modality."""

    def __init__(self, modalities: list[str], hidden: int, heads: int):
        super().__init__()
        self.modalities = modalities
        self.attend = nn.ModuleDict({m: Attention(hidden, heads) for m in modalities})
        self.norm = nn.ModuleDict({m: nn.LayerNorm(hidden) for m in modalities})
        self.project = nn.ModuleDict({m: nn.Linear(2 * hidden, hidden) for m in modalities})

    def forward(self, tokens: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{modality: [n, t, h]} → {modality: [n, t, h]} with cross-modal context mixed in."""
        fused = {}
        for i, m in enumerate(self.modalities):
            partner = self.modalities[(i + 1) % len(self.modalities)]
            attended = self.attend[m](self.norm[m](tokens[m]), self.norm[partner](tokens[partner]))
            fused[m] = self.project[m](torch.cat([attended, tokens[m]], dim=-1))
        return fused


def granularity_pools(token_names: list[str]) -> list[torch.Tensor]:
    """Averaging matrices [coarse, fine] that pool radiomics tokens 'roi/filter/class' by ROI, by filter and by class."""
    parts = [name.split("/") for name in token_names]
    pools = []
    for level in range(3):
        keys = [p[level] if len(p) > level else p[-1] for p in parts]
        unique = list(dict.fromkeys(keys))
        if len(unique) in (1, len(keys)):
            continue
        member = torch.tensor([[float(k == u) for k in keys] for u in unique])
        pools.append(member / member.sum(dim=1, keepdim=True))
    return pools


class MultiGranularityAttention(nn.Module):
    """MultiTIPS's MGRA: query tokens attend over radiomics tokens at each granularity (feature group, and pooled by
    ROI, filter and feature class); a learned softmax over granularities mixes the contexts."""

    def __init__(self, radiomics_tokens: list[str], hidden: int, heads: int):
        super().__init__()
        pools = granularity_pools(radiomics_tokens)
        self.levels = 1 + len(pools)
        for level, pool in enumerate(pools):
            self.register_buffer(f"pool_{level}", pool)
        self.attend = nn.ModuleList(Attention(hidden, heads) for _ in range(self.levels))
        self.level_logits = nn.Parameter(torch.zeros(self.levels))
        self.norm = nn.LayerNorm(hidden)

    def forward(self, query: torch.Tensor, radiomics: torch.Tensor) -> torch.Tensor:
        """Query tokens enriched by radiomics context at every granularity."""
        contexts = [radiomics] + [
            torch.einsum("cf,nfh->nch", getattr(self, f"pool_{i}"), radiomics) for i in range(self.levels - 1)
        ]
        mix = torch.softmax(self.level_logits, dim=0)
        attended = sum(w * attend(query, c) for w, attend, c in zip(mix, self.attend, contexts))
        return self.norm(query + attended)


def pod_penalty(shared: dict[str, torch.Tensor], specific: dict[str, torch.Tensor]) -> torch.Tensor:
    """MultiTIPS's POD penalty per patient: the squared cosine between each modality's shared and specific parts
    (orthogonality) plus, with two or more modalities, one minus the cosine between shared parts (they must agree
    to be shared)."""
    penalty = cast(torch.Tensor, sum(F.cosine_similarity(shared[m], specific[m], dim=-1) ** 2 for m in shared)) / len(shared)
    names = list(shared)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    if pairs:
        penalty = penalty + sum(1 - F.cosine_similarity(shared[a], shared[b], dim=-1) for a, b in pairs) / len(pairs)
    return penalty


class OrthogonalDecomposition(nn.Module):
    """MultiTIPS's POD: split a modality vector into shared and specific parts (penalised by pod_penalty)."""

    def __init__(self, modalities: list[str], hidden: int):
        super().__init__()
        self.shared = nn.ModuleDict({m: nn.Linear(hidden, hidden) for m in modalities})
        self.specific = nn.ModuleDict({m: nn.Linear(hidden, hidden) for m in modalities})

    def forward(self, vectors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Shared parts and specific parts."""
        return ({m: self.shared[m](v) for m, v in vectors.items()}, {m: self.specific[m](v) for m, v in vectors.items()})


class ClinicalFilm(nn.Module):
    """MultiTIPS's CGPE gate: the clinical vector scales and shifts an imaging representation (FiLM, identity at start)."""

    def __init__(self, hidden: int, gated: int):
        super().__init__()
        self.film = nn.Linear(hidden, 2 * gated)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, clinical: torch.Tensor, imaging: torch.Tensor) -> torch.Tensor:
        """imaging · (1 + tanh(scale(clinical))) + shift(clinical)."""
        scale, shift = self.film(clinical).chunk(2, dim=-1)
        return imaging * (1 + torch.tanh(scale)) + shift


class CrossOrganGraph(nn.Module):
    """DMMGNet's graph module on tokens: keep the top-k tokens by a learned node score (a projection, as graph
    U-Nets' gPool; DMMGNet's summed activation is ~0 after LayerNorm), link each to its nearest tokens of another ROI
    (dilated k-NN, rebuilt every forward pass), EdgeConv, and write the result back in place as a mix with the input
    whose weight grows with the node's score (so the score learns from the loss)."""

    roi_of_token: torch.Tensor

    def __init__(self, token_rois: list[str], hidden: int, top_k: int, neighbours: int, dilation: int):
        super().__init__()
        rois = list(dict.fromkeys(token_rois))
        self.register_buffer("roi_of_token", torch.tensor([rois.index(r) for r in token_rois]))
        self.top_k = min(top_k, len(token_rois))
        self.neighbours = max(1, min(neighbours, self.top_k - 1))
        self.dilation = max(1, min(dilation, (self.top_k - 1) // self.neighbours))
        self.edge = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.score = nn.Linear(hidden, 1, bias=False)
        self.mix_logit = nn.Parameter(torch.zeros(1))

    def node_scores(self, tokens: torch.Tensor) -> torch.Tensor:
        """[n, t, h] → [n, t]: each token's projection on the learned score direction (unit length)."""
        return self.score(tokens).squeeze(-1) / self.score.weight.norm().clamp_min(1e-12)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """[n, t, h] → [n, t, h] with the selected tokens replaced by their graph update."""
        n, _, hidden = tokens.shape
        scores = self.node_scores(tokens)
        selected = torch.topk(scores, self.top_k, dim=1).indices
        nodes = torch.gather(tokens, 1, selected[..., None].expand(-1, -1, hidden))
        roi = self.roi_of_token[selected]
        distance = torch.cdist(nodes, nodes)
        same_roi = roi[:, :, None] == roi[:, None, :]
        own = torch.eye(self.top_k, dtype=torch.bool, device=tokens.device)
        distance = distance + same_roi * distance.detach().amax() + own * 2 * (distance.detach().amax() + 1)
        nearest = torch.topk(-distance, self.neighbours * self.dilation, dim=-1).indices[..., :: self.dilation]
        neighbour_features = torch.gather(
            nodes[:, None].expand(-1, self.top_k, -1, -1), 2, nearest[..., None].expand(-1, -1, -1, hidden)
        )
        centre = nodes[:, :, None].expand_as(neighbour_features)
        updated = self.edge(torch.cat([centre, neighbour_features - centre], dim=-1)).amax(dim=2)
        mix = torch.sigmoid(self.mix_logit + torch.gather(scores, 1, selected))[..., None]
        return tokens.scatter(1, selected[..., None].expand(-1, -1, hidden), (1 - mix) * nodes + mix * updated)


class OrganSimilarityFusion(nn.Module):
    """DMMGNet's MMDFM on tokens: the cosine-similarity map M between the liver's tokens and the other organs'
    (Eq. 6); on each side the top-k tokens by their best similarity (top-k on each dimension of M); each selected
    token receives a GCN message from the other side's selected tokens, weighted by softmax over M; the adaptive
    coefficients α (Eqs. 7-8) mix own features and message, written back in place. α starts at (1, 0, 1, 0):
    the identity."""

    liver_tokens: torch.Tensor
    other_tokens: torch.Tensor

    def __init__(self, token_rois: list[str], hidden: int, top_k: int):
        super().__init__()
        liver = [i for i, roi in enumerate(token_rois) if roi == "liver"]
        other = [i for i, roi in enumerate(token_rois) if roi != "liver"]
        self.register_buffer("liver_tokens", torch.tensor(liver, dtype=torch.long))
        self.register_buffer("other_tokens", torch.tensor(other, dtype=torch.long))
        self.k_liver, self.k_other = min(top_k, len(liver)), min(top_k, len(other))
        self.message = nn.ModuleDict({"liver": nn.Linear(hidden, hidden), "other": nn.Linear(hidden, hidden)})
        self.alpha = nn.Parameter(torch.tensor([1.0, 0.0, 1.0, 0.0]))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """[n, t, h] → [n, t, h] with the selected liver and other-organ tokens replaced by their fused features."""
        hidden = tokens.shape[-1]
        liver, other = tokens[:, self.liver_tokens], tokens[:, self.other_tokens]
        similarity = F.normalize(liver, dim=-1) @ F.normalize(other, dim=-1).transpose(1, 2)
        pick_liver = torch.topk(similarity.amax(dim=2), self.k_liver, dim=1).indices
        pick_other = torch.topk(similarity.amax(dim=1), self.k_other, dim=1).indices
        nodes_liver = torch.gather(liver, 1, pick_liver[..., None].expand(-1, -1, hidden))
        nodes_other = torch.gather(other, 1, pick_other[..., None].expand(-1, -1, hidden))
        graph = torch.gather(
            torch.gather(similarity, 1, pick_liver[..., None].expand(-1, -1, similarity.shape[2])),
            2,
            pick_other[:, None].expand(-1, self.k_liver, -1),
        )
        to_liver = self.message["liver"](torch.softmax(graph, dim=2) @ nodes_other)
        to_other = self.message["other"](torch.softmax(graph, dim=1).transpose(1, 2) @ nodes_liver)
        a = self.alpha
        fused_liver, fused_other = a[0] * nodes_liver + a[1] * to_liver, a[2] * nodes_other + a[3] * to_other
        positions_liver, positions_other = self.liver_tokens[pick_liver], self.other_tokens[pick_other]
        tokens = tokens.scatter(1, positions_liver[..., None].expand(-1, -1, hidden), fused_liver)
        return tokens.scatter(1, positions_other[..., None].expand(-1, -1, hidden), fused_other)
