"""Losses behind one calling convention: `loss(z, target, labels)` with z [views, tuples, dim] from one encoder
pass, `target` the +1/-1 pair labels (pairs only) and `labels` the tuples' classes where the pairing passes them.
Each loss names the pairings it can train on."""
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

    def forward(self, z: torch.Tensor, target: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
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

    def forward(self, z: torch.Tensor, target: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        anchor, positive, negative = z  # each: tuples x dim
        return F.triplet_margin_loss(anchor, positive, negative, margin=self.margin, p=self.p)


def multi_positive_contrastive(z: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                               temperature: float) -> torch.Tensor:
    """The loss shared by NT-Xent and SupCon (Khosla et al. 2020, eq. 2, L_out): for each of the N = views x
    tuples embeddings i (l2-normalized), the mean over its positives p of
    -log(exp(z_i . z_p / T) / sum over a in positives(i) + negatives(i) of exp(z_i . z_a / T)), averaged over i.
    `positives` and `negatives` are boolean [N, N] masks (never the diagonal)."""
    flat = F.normalize(z.reshape(-1, z.shape[-1]), dim=1)  # N x dim, views stacked: index = view * tuples + t
    logits = flat @ flat.T / temperature  # N x N
    logits = logits.masked_fill(~(positives | negatives), float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    per_anchor = -(log_prob.masked_fill(~positives, 0.0)).sum(dim=1) / positives.sum(dim=1).clamp_min(1)
    return per_anchor[positives.any(dim=1)].mean()


def _same(ids: torch.Tensor) -> torch.Tensor:
    """[N, N] mask of pairs with equal ids, the diagonal left out."""
    same = ids[:, None] == ids[None, :]
    return same & ~torch.eye(len(ids), dtype=torch.bool, device=ids.device)


class NTXentLoss(nn.Module):
    """NT-Xent, the normalized temperature-scaled cross entropy of SimCLR (Chen et al. 2020, eq. 1): each view's
    positives are the other views of its image, every other embedding of the batch a negative. With class
    labels (negatives=label_aware), same-class images are left out of the negatives (false-negative
    elimination, Huynh et al. 2022)."""

    pairings = ("multiview",)

    def __init__(self, temperature: float = 0.5):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"loss.temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, z: torch.Tensor, target: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        views, tuples = z.shape[:2]
        instance = torch.arange(tuples, device=z.device).repeat(views)
        positives = _same(instance)
        negatives = ~positives & ~torch.eye(len(instance), dtype=torch.bool, device=z.device)
        if labels is not None:
            negatives &= ~_same(labels.repeat(views))
        return multi_positive_contrastive(z, positives, negatives, self.temperature)


class SupConLoss(nn.Module):
    """Supervised contrastive loss (Khosla et al. 2020, eq. 2, L_out): every embedding of the same class is a
    positive, every other a negative. Needs the labels: pairing=multiview with negatives=label_aware."""

    pairings = ("multiview",)
    needs_labels = True

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"loss.temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, z: torch.Tensor, target: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None:
            raise ValueError("loss=supcon needs class labels: set pairing.negatives=label_aware")
        views = z.shape[0]
        positives = _same(labels.repeat(views))
        negatives = ~positives & ~torch.eye(len(positives), dtype=torch.bool, device=z.device)
        return multi_positive_contrastive(z, positives, negatives, self.temperature)
