"""Cross-entropy losses over in-batch similarities (InfoNCE family): NT-Xent, SupCon, debiased, N-pair (i-Mix:
imix.py)."""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F

from cl_runner.errors import ConfigError
from cl_runner.losses.base import Loss, contrastive_figures


SIMILARITIES = ("cosine", "dot")


def multi_positive_contrastive(z: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                               temperature: float, normalize: bool = True) -> tuple[torch.Tensor, dict]:
    """The loss shared by NT-Xent and SupCon (Khosla et al. 2020, eq. 2, L_out): for each of the N = views x
    tuples embeddings i (l2-normalized, unless `normalize` is false: dot products), the mean over its positives p of
    -log(exp(z_i . z_p / T) / sum over a in positives(i) + negatives(i) of exp(z_i . z_a / T)), averaged over i.
    `positives` and `negatives` are boolean [N, N] masks (never the diagonal). Returns the loss and its
    contrastive_figures."""
    flat = z.reshape(-1, z.shape[-1])  # N x dim, views stacked: index = view * tuples + t
    flat = F.normalize(flat, dim=1) if normalize else flat
    logits = flat @ flat.T / temperature  # N x N
    logits = logits.masked_fill(~(positives | negatives), float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    per_anchor = -(log_prob.masked_fill(~positives, 0.0)).sum(dim=1) / positives.sum(dim=1).clamp_min(1)
    has_positive = positives.any(dim=1)  # a mean over these anchors, without a boolean index (a host sync on a GPU)
    loss = per_anchor.masked_fill(~has_positive, 0.0).sum() / has_positive.sum()
    return loss, contrastive_figures(logits, positives)


def _same(ids: torch.Tensor) -> torch.Tensor:
    """[N, N] mask of pairs with equal ids, the diagonal left out."""
    same = ids[:, None] == ids[None, :]
    return same & ~torch.eye(len(ids), dtype=torch.bool, device=ids.device)


class _InBatchContrastive(Loss, ABC):
    """Shared by NT-Xent and SupCon: multi_positive_contrastive over the masks a subclass defines."""

    pairings = ("multiview",)
    in_batch = True
    local_views = True

    def __init__(self, temperature: float, similarity: str = "cosine"):
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"loss.temperature must be > 0, got {temperature}")
        if similarity not in SIMILARITIES:
            raise ConfigError(f"loss.similarity must be cosine or dot, got {similarity!r}")
        self.temperature, self.normalize = temperature, similarity == "cosine"

    @abstractmethod
    def masks(self, views: int, tuples: int, labels: torch.Tensor | None,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Boolean [N, N] positives and negatives for N = views x tuples embeddings."""

    def forward(self, z: torch.Tensor, target: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        positives, negatives = self.masks(z.shape[0], z.shape[1], labels, z.device)
        loss, self.figures = multi_positive_contrastive(z, positives, negatives, self.temperature, self.normalize)
        return loss


class NTXentLoss(_InBatchContrastive):
    """NT-Xent, the normalized temperature-scaled cross entropy of SimCLR (Chen et al. 2020, eq. 1): each view's
    positives are the other views of its image, every other embedding of the batch a negative. With class
    labels (negatives=label_aware), same-class images are left out of the negatives (false-negative
    elimination, Huynh et al. 2022). `similarity`: cosine (l2-normalized embeddings, SimCLR's choice) or dot (the
    raw dot product, "without l2 normalization" in SimCLR's Table 5)."""

    def __init__(self, temperature: float = 0.5, similarity: str = "cosine"):
        super().__init__(temperature, similarity)
        self.instance_masks = {}  # (views, tuples, device) -> masks without labels: the same at every step

    def masks(self, views, tuples, labels, device):
        if labels is None:
            key = (views, tuples, device)
            if key not in self.instance_masks:
                self.instance_masks[key] = self.masks_of(views, tuples, None, device)
            return self.instance_masks[key]
        return self.masks_of(views, tuples, labels, device)

    @staticmethod
    def masks_of(views, tuples, labels, device):
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
            raise ConfigError("loss=supcon needs class labels: set pairing.negatives=label_aware")
        positives = _same(labels.repeat(views))
        return positives, ~positives & ~torch.eye(len(positives), dtype=torch.bool, device=device)


class DebiasedNTXentLoss(Loss):
    """Debiased contrastive loss (Chuang et al. 2020, eq. 7 with M = 1) on two views: the negatives' term is
    corrected for the chance tau_plus that a negative shares the anchor's class,
    g = max((sum_neg exp(s/T) - n tau_plus exp(s_pos/T)) / (1 - tau_plus), n e^(-1/T)), with n = 2N - 2
    negatives, and the loss is -log(exp(s_pos/T) / (exp(s_pos/T) + g)), averaged over the 2N anchors."""

    pairings = ("multiview",)
    two_views = True
    in_batch = True

    def __init__(self, temperature: float = 0.5, tau_plus: float = 0.1):
        super().__init__()
        if temperature <= 0 or not 0 <= tau_plus < 1:
            raise ConfigError(f"loss needs temperature > 0 and 0 <= tau_plus < 1, got {temperature}, {tau_plus}")
        self.temperature, self.tau_plus = temperature, tau_plus

    def forward(self, z: torch.Tensor, target: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
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
        logits = (flat @ flat.T / self.temperature).detach().fill_diagonal_(float("-inf"))
        partners = torch.zeros_like(not_negative)
        partners[index, (index + tuples) % (2 * tuples)] = True
        self.figures = contrastive_figures(logits, partners)  # of the uncorrected distribution, as NT-Xent's
        return -torch.log(positive / (positive + g)).mean()


class NPairLoss(Loss):
    """Multi-class N-pair loss (Sohn 2016, eq. 3 and the l2 term of section 3.2.2): for anchors a_i and positives
    p_i, log(1 + sum_{j != i} exp(a_i . p_j - a_i . p_i)), i.e. cross-entropy over the similarities
    a_i . p_j with target i, plus l2_reg times the mean squared norm of the embeddings."""

    pairings = ("multiview",)
    two_views = True
    in_batch = True

    def __init__(self, l2_reg: float = 0.002):
        super().__init__()
        if l2_reg < 0:
            raise ConfigError(f"loss.l2_reg must be >= 0, got {l2_reg}")
        self.l2_reg = l2_reg

    def forward(self, z: torch.Tensor, target: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        anchors, positives = z[0], z[1]
        logits = anchors @ positives.T  # tuples x tuples
        classes = torch.arange(len(anchors), device=z.device)
        regularizer = (anchors.square().sum(1) + positives.square().sum(1)).mean() / 2
        self.figures = contrastive_figures(logits, classes[:, None] == classes[None, :])
        return F.cross_entropy(logits, classes) + self.l2_reg * regularizer
