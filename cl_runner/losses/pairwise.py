"""Losses on pairs and triplets of embeddings: the study's two and the margin contrastive loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cl_runner.errors import ConfigError
from cl_runner.losses.base import Loss
from cl_runner.losses.triplet_mining import check_mining, mined_triplet_loss


class CosineEmbeddingLoss(Loss):
    """Pairwise cosine loss (torch.nn.CosineEmbeddingLoss): 1 - cos(a, b) for target +1,
    max(0, cos(a, b) - margin) for target -1, averaged over pairs."""

    pairings = ("pair",)

    def __init__(self, margin: float = 0.0):
        super().__init__()
        if not -1.0 <= margin <= 1.0:
            raise ConfigError(f"loss.margin must lie in [-1, 1], got {margin}")
        self.margin = margin

    def forward(self, z: torch.Tensor, target: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        first, second = z  # each: tuples x dim
        return F.cosine_embedding_loss(first, second, target, margin=self.margin)


class TripletMarginLoss(Loss):
    """Triplet margin loss (Schroff et al. 2015; torch.nn.TripletMarginLoss):
    max(0, ||a - p||_p - ||a - n||_p + margin), averaged over triplets; with `mining` (batch_hard, semi_hard) over
    triplets mined in the batch instead (triplet_mining.py), which needs the anchors' classes and makes the loss
    depend on the batch's other tuples (in_batch)."""

    pairings = ("triplet",)

    def __init__(self, margin: float = 1.0, p: float = 2.0, mining: str = "none"):
        super().__init__()
        if margin < 0 or p <= 0:
            raise ConfigError(f"loss.margin must be >= 0 and loss.p > 0, got margin={margin}, p={p}")
        check_mining(mining)
        self.margin, self.p, self.mining = margin, p, mining
        self.in_batch = mining != "none"

    def forward(self, z: torch.Tensor, target: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.in_batch:
            return mined_triplet_loss(z, labels, self.margin, self.p, self.mining)
        anchor, positive, negative = z  # each: tuples x dim
        return F.triplet_margin_loss(anchor, positive, negative, margin=self.margin, p=self.p)


class ContrastiveLoss(Loss):
    """Margin contrastive loss (Hadsell, Chopra & LeCun 2006, eq. 4) on pairs with Euclidean distance d:
    d^2 / 2 for similar pairs (target +1), max(0, margin - d)^2 / 2 for dissimilar ones (-1), averaged."""

    pairings = ("pair",)

    def __init__(self, margin: float = 1.0):
        super().__init__()
        if margin <= 0:
            raise ConfigError(f"loss.margin must be > 0, got {margin}")
        self.margin = margin

    def forward(self, z: torch.Tensor, target: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        first, second = z
        distance = F.pairwise_distance(first, second)
        similar = target > 0
        per_pair = torch.where(similar, distance.square(), F.relu(self.margin - distance).square()) / 2
        return per_pair.mean()
