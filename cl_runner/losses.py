"""Losses behind one calling convention: `loss(z, target)` with z [views, tuples, dim] from one encoder pass,
and `target` the +1/-1 pair labels (pairs only). Each loss names the pairings it can train on."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CosineEmbeddingLoss(nn.Module):
    """Pairwise cosine loss (torch.nn.CosineEmbeddingLoss): 1 - cos(a, b) for target +1,
    max(0, cos(a, b) - margin) for target -1, averaged over pairs."""

    pairings = ("pair",)

    def __init__(self, margin: float = 0.0):
        super().__init__()
        if not -1.0 <= margin <= 1.0:
            raise ValueError(f"loss.margin must lie in [-1, 1], got {margin}")
        self.margin = margin

    def forward(self, z: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        first, second = z  # each: tuples x dim
        return F.cosine_embedding_loss(first, second, target, margin=self.margin)


class TripletMarginLoss(nn.Module):
    """Triplet margin loss (Schroff et al. 2015; torch.nn.TripletMarginLoss):
    max(0, ||a - p||_p - ||a - n||_p + margin), averaged over triplets."""

    pairings = ("triplet",)

    def __init__(self, margin: float = 1.0, p: float = 2.0):
        super().__init__()
        if margin < 0 or p <= 0:
            raise ValueError(f"loss.margin must be >= 0 and loss.p > 0, got margin={margin}, p={p}")
        self.margin, self.p = margin, p

    def forward(self, z: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        anchor, positive, negative = z  # each: tuples x dim
        return F.triplet_margin_loss(anchor, positive, negative, margin=self.margin, p=self.p)
