"""Losses without negatives that keep the embedding's dimensions informative: Barlow Twins and VICReg."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cl_runner.errors import ConfigError
from cl_runner.losses.base import Loss


class BarlowTwinsLoss(Loss):
    """Barlow Twins (Zbontar et al. 2021, eq. 1): the cross-correlation C of the two views' batch-standardized
    embeddings, sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2."""

    pairings = ("multiview",)
    two_views = True
    in_batch = True

    def __init__(self, lambda_offdiag: float = 0.005):
        super().__init__()
        if lambda_offdiag < 0:
            raise ConfigError(f"loss.lambda_offdiag must be >= 0, got {lambda_offdiag}")
        self.lambda_offdiag = lambda_offdiag

    def forward(self, z: torch.Tensor, target: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        a, b = (F.batch_norm(v, None, None, training=True) for v in (z[0], z[1]))  # zero mean, unit std
        correlation = a.T @ b / len(a)  # dim x dim
        on_diagonal = (1 - torch.diagonal(correlation)).square().sum()
        off_diagonal = correlation.square().sum() - torch.diagonal(correlation).square().sum()
        return on_diagonal + self.lambda_offdiag * off_diagonal


class VICRegLoss(Loss):
    """VICReg (Bardes, Ponce & LeCun 2022, eq. 6): invariance (mean squared distance of the views),
    variance (hinge max(0, 1 - std) per dimension, std with eps 1e-4) and covariance (squared off-diagonal
    covariances / dim), weighted 25, 25 and 1 by default. As in the authors' code, for which those weights were
    tuned, the variance term is averaged over the two views and the covariance term summed."""

    pairings = ("multiview",)
    two_views = True
    in_batch = True

    def __init__(self, invariance: float = 25.0, variance: float = 25.0, covariance: float = 1.0):
        super().__init__()
        if min(invariance, variance, covariance) < 0:
            raise ConfigError("loss weights must be >= 0")
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
