"""Losses behind one calling convention: `loss(z, target, labels)` with z [views, tuples, dim] from one encoder
pass, `target` the +1/-1 pair labels (pairs only) and `labels` the tuples' classes where the pairing passes them.
Each loss names the pairings it can train on."""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

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


class _InBatchContrastive(nn.Module, ABC):
    """Shared by NT-Xent and SupCon: multi_positive_contrastive over the masks a subclass defines."""

    pairings = ("multiview",)

    def __init__(self, temperature: float):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"loss.temperature must be > 0, got {temperature}")
        self.temperature = temperature

    @abstractmethod
    def masks(self, views: int, tuples: int, labels: torch.Tensor | None,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Boolean [N, N] positives and negatives for N = views x tuples embeddings."""

    def forward(self, z: torch.Tensor, target: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        positives, negatives = self.masks(z.shape[0], z.shape[1], labels, z.device)
        return multi_positive_contrastive(z, positives, negatives, self.temperature)


class NTXentLoss(_InBatchContrastive):
    """NT-Xent, the normalized temperature-scaled cross entropy of SimCLR (Chen et al. 2020, eq. 1): each view's
    positives are the other views of its image, every other embedding of the batch a negative. With class
    labels (negatives=label_aware), same-class images are left out of the negatives (false-negative
    elimination, Huynh et al. 2022)."""

    def __init__(self, temperature: float = 0.5):
        super().__init__(temperature)

    def masks(self, views, tuples, labels, device):
        instance = torch.arange(tuples, device=device).repeat(views)
        positives = _same(instance)
        negatives = ~positives & ~torch.eye(len(instance), dtype=torch.bool, device=device)
        if labels is not None:
            negatives &= ~_same(labels.repeat(views))
        return positives, negatives


class SupConLoss(_InBatchContrastive):
    """Supervised contrastive loss (Khosla et al. 2020, eq. 2, L_out): every embedding of the same class is a
    positive, every other a negative. Needs the labels: pairing=multiview with negatives=label_aware."""

    needs_labels = True

    def __init__(self, temperature: float = 0.1):
        super().__init__(temperature)

    def masks(self, views, tuples, labels, device):
        if labels is None:
            raise ValueError("loss=supcon needs class labels: set pairing.negatives=label_aware")
        positives = _same(labels.repeat(views))
        return positives, ~positives & ~torch.eye(len(positives), dtype=torch.bool, device=device)


class ContrastiveLoss(nn.Module):
    """Margin contrastive loss (Hadsell, Chopra & LeCun 2006, eq. 4) on pairs with Euclidean distance d:
    d^2 / 2 for similar pairs (target +1), max(0, margin - d)^2 / 2 for dissimilar ones (-1), averaged."""

    pairings = ("pair",)

    def __init__(self, margin: float = 1.0):
        super().__init__()
        if margin <= 0:
            raise ValueError(f"loss.margin must be > 0, got {margin}")
        self.margin = margin

    def forward(self, z: torch.Tensor, target: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        first, second = z
        distance = F.pairwise_distance(first, second)
        similar = target > 0
        per_pair = torch.where(similar, distance.square(), F.relu(self.margin - distance).square()) / 2
        return per_pair.mean()


class DebiasedNTXentLoss(nn.Module):
    """Debiased contrastive loss (Chuang et al. 2020, eq. 7 with M = 1) on two views: the negatives' term is
    corrected for the chance tau_plus that a negative shares the anchor's class,
    g = max((sum_neg exp(s/T) - n tau_plus exp(s_pos/T)) / (1 - tau_plus), n e^(-1/T)), with n = 2N - 2
    negatives, and the loss is -log(exp(s_pos/T) / (exp(s_pos/T) + g)), averaged over the 2N anchors."""

    pairings = ("multiview",)

    def __init__(self, temperature: float = 0.5, tau_plus: float = 0.1):
        super().__init__()
        if temperature <= 0 or not 0 <= tau_plus < 1:
            raise ValueError(f"loss needs temperature > 0 and 0 <= tau_plus < 1, got {temperature}, {tau_plus}")
        self.temperature, self.tau_plus = temperature, tau_plus

    def forward(self, z: torch.Tensor, target: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        if z.shape[0] != 2:
            raise ValueError("loss=debiased works on two views: set pairing.views=2")
        tuples = z.shape[1]
        flat = F.normalize(torch.cat([z[0], z[1]]), dim=1)  # 2N x dim
        similarity = torch.exp(flat @ flat.T / self.temperature)  # 2N x 2N
        index = torch.arange(2 * tuples, device=z.device)
        positive = similarity[index, (index + tuples) % (2 * tuples)]
        not_negative = torch.eye(2 * tuples, dtype=torch.bool, device=z.device)
        not_negative[index, (index + tuples) % (2 * tuples)] = True
        negatives = similarity.masked_fill(not_negative, 0.0).sum(dim=1)
        n = 2 * tuples - 2
        g = (negatives - n * self.tau_plus * positive) / (1 - self.tau_plus)
        g = torch.clamp(g, min=n * math.exp(-1 / self.temperature))
        return -torch.log(positive / (positive + g)).mean()


class NPairLoss(nn.Module):
    """Multi-class N-pair loss (Sohn 2016, eq. 3 and the l2 term of section 3.2.2): for anchors a_i and positives
    p_i, log(1 + sum_{j != i} exp(a_i . p_j - a_i . p_i)), i.e. cross-entropy over the similarities
    a_i . p_j with target i, plus l2_reg times the mean squared norm of the embeddings."""

    pairings = ("multiview",)

    def __init__(self, l2_reg: float = 0.002):
        super().__init__()
        if l2_reg < 0:
            raise ValueError(f"loss.l2_reg must be >= 0, got {l2_reg}")
        self.l2_reg = l2_reg

    def forward(self, z: torch.Tensor, target: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        anchors, positives = z[0], z[1]
        logits = anchors @ positives.T  # tuples x tuples
        classes = torch.arange(len(anchors), device=z.device)
        regularizer = (anchors.square().sum(1) + positives.square().sum(1)).mean() / 2
        return F.cross_entropy(logits, classes) + self.l2_reg * regularizer


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins (Zbontar et al. 2021, eq. 1): the cross-correlation C of the two views' batch-standardized
    embeddings, sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2."""

    pairings = ("multiview",)

    def __init__(self, lambda_offdiag: float = 0.005):
        super().__init__()
        if lambda_offdiag < 0:
            raise ValueError(f"loss.lambda_offdiag must be >= 0, got {lambda_offdiag}")
        self.lambda_offdiag = lambda_offdiag

    def forward(self, z: torch.Tensor, target: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        a, b = (F.batch_norm(v, None, None, training=True) for v in (z[0], z[1]))  # zero mean, unit std
        correlation = a.T @ b / len(a)  # dim x dim
        on_diagonal = (1 - torch.diagonal(correlation)).square().sum()
        off_diagonal = correlation.square().sum() - torch.diagonal(correlation).square().sum()
        return on_diagonal + self.lambda_offdiag * off_diagonal


class VICRegLoss(nn.Module):
    """VICReg (Bardes, Ponce & LeCun 2022, eq. 6): invariance (mean squared distance of the views),
    variance (hinge max(0, 1 - std) per dimension, std with eps 1e-4) and covariance (squared off-diagonal
    covariances / dim), weighted 25, 25 and 1 by default. As in the authors' code, for which those weights were
    tuned, the variance term is averaged over the two views and the covariance term summed."""

    pairings = ("multiview",)

    def __init__(self, invariance: float = 25.0, variance: float = 25.0, covariance: float = 1.0):
        super().__init__()
        if min(invariance, variance, covariance) < 0:
            raise ValueError("loss weights must be >= 0")
        self.weights = (invariance, variance, covariance)

    def forward(self, z: torch.Tensor, target: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        a, b = z[0], z[1]
        invariance = F.mse_loss(a, b)
        variance = covariance = 0.0
        for view in (a, b):
            centred = view - view.mean(dim=0)
            std = torch.sqrt(centred.var(dim=0) + 1e-4)
            variance = variance + F.relu(1 - std).mean() / 2
            cov = centred.T @ centred / (len(view) - 1)  # dim x dim
            covariance = covariance + (cov.square().sum() - torch.diagonal(cov).square().sum()) / view.shape[1]
        w_inv, w_var, w_cov = self.weights
        return w_inv * invariance + w_var * variance + w_cov * covariance
