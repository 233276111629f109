"""The alternatives to NT-Xent that SimCLR compares (Chen et al. 2020, Table 2 and Table 4): NT-Logistic and the
margin triplet loss, each on the in-batch similarities of l2-normalized views, every other embedding a negative, or
(`mining=semi_hard`, Table 4's "sh") only the semi-hard ones."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cl_runner.errors import ConfigError
from cl_runner.losses.base import Loss, contrastive_figures
from cl_runner.losses.triplet_mining import check_mining


def in_batch_similarities(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For two views z [2, N, dim]: the cosine similarities of the 2N embeddings, each anchor's positive's
    similarity [2N, 1] (its other view) and the boolean [2N, 2N] mask of its 2N - 2 negatives."""
    tuples = z.shape[1]
    flat = F.normalize(torch.cat([z[0], z[1]]), dim=1)
    similarity = flat @ flat.T
    index = torch.arange(2 * tuples, device=z.device)
    partner = (index + tuples) % (2 * tuples)
    negatives = torch.ones_like(similarity, dtype=torch.bool)
    negatives[index, index] = False
    negatives[index, partner] = False
    return similarity, similarity[index, partner].unsqueeze(1), negatives


def figures_of(similarity: torch.Tensor, negatives: torch.Tensor, temperature: float | None) -> dict:
    """contrastive_figures over each anchor's candidates, its other view and its negatives (the entropy at
    `temperature`; None: a loss without one has no entropy)."""
    other = ~torch.eye(len(similarity), dtype=torch.bool, device=similarity.device)
    logits = similarity.detach().masked_fill(~other, float("-inf")) / (temperature or 1.0)
    return contrastive_figures(logits, other & ~negatives, entropy=temperature is not None)


MINING = ("none", "semi_hard")


@torch.no_grad()
def semi_hard(similarity: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
              margin: float = 2.0) -> torch.Tensor:
    """The semi-hard negatives of each anchor (Schroff et al. 2015, FaceNet, eq. 4, which SimCLR's appendix B.5
    follows), in similarities: farther from the anchor than its positive, u . v- < u . v+, but within the margin,
    u . v- > u . v+ - margin (2, the default: any cosine). A selection, not a weight: no gradient through it."""
    return negatives & (similarity < positive) & (similarity > positive - margin)


def mean_over_negatives(per_pair: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """The mean over each anchor's negatives of `per_pair` [2N, 2N] (0 for an anchor that mining left none), then
    over the anchors."""
    return (per_pair.masked_fill(~negatives, 0.0).sum(dim=1) / negatives.sum(dim=1).clamp_min(1)).mean()


class NTLogisticLoss(Loss):
    """NT-Logistic (SimCLR, Table 2): -log sigmoid(u . v+ / T) - log sigmoid(-u . v- / T) on l2-normalized u, v,
    for each of the 2N anchors u with its other view v+ and its 2N - 2 in-batch negatives v- (`mining=semi_hard`:
    its semi-hard ones); the positive term and the mean of the negatives' terms weigh equally, averaged over the
    anchors."""

    pairings = ("multiview",)
    two_views = True
    in_batch = True

    def __init__(self, temperature: float = 0.5, mining: str = "none"):
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"loss.temperature must be > 0, got {temperature}")
        check_mining(mining, MINING)
        self.temperature, self.mining = temperature, mining

    def forward(self, z: torch.Tensor, target: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        similarity, positive, negatives = in_batch_similarities(z)
        self.figures = figures_of(similarity, negatives, self.temperature)
        if self.mining == "semi_hard":
            negatives = semi_hard(similarity, positive, negatives)
        positive_term = -F.logsigmoid(positive / self.temperature).mean()
        return positive_term + mean_over_negatives(-F.logsigmoid(-similarity / self.temperature), negatives)


class InBatchMarginLoss(Loss):
    """The margin triplet loss in SimCLR's form (Table 2): max(u . v- - u . v+ + margin, 0) on l2-normalized u, v,
    for each of the 2N anchors u with its other view v+ and each of its 2N - 2 in-batch negatives v-
    (`mining=semi_hard`: its semi-hard ones, those within the margin but farther than v+), averaged over the
    negatives and the anchors."""

    pairings = ("multiview",)
    two_views = True
    in_batch = True

    def __init__(self, margin: float = 0.5, mining: str = "none"):
        super().__init__()
        if not 0 < margin <= 2:
            raise ConfigError(f"loss.margin must lie in (0, 2] (cosine similarities differ by 2 at most), got "
                              f"{margin}")
        check_mining(mining, MINING)
        self.margin, self.mining = margin, mining

    def forward(self, z: torch.Tensor, target: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        similarity, positive, negatives = in_batch_similarities(z)
        self.figures = figures_of(similarity, negatives, None)
        if self.mining == "semi_hard":
            negatives = semi_hard(similarity, positive, negatives, self.margin)
        return mean_over_negatives(F.relu(similarity - positive + self.margin), negatives)
