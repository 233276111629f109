"""SimSiam: two views through one encoder and a predictor, no negatives, a stop-gradient against collapse."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cl_runner.errors import ConfigError
from cl_runner.losses.base import Loss
from cl_runner.models import ProjectionHead


def cross_view_cosine(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity of each view's prediction to the other view's target, both directions averaged:
    (cos(p_1, z_2) + cos(p_2, z_1)) / 2 over the batch; the targets get no gradient. Inputs: [2, tuples, dim]."""
    targets = targets.detach()
    return (F.cosine_similarity(predictions[0], targets[1]).mean()
            + F.cosine_similarity(predictions[1], targets[0]).mean()) / 2


class SimSiamLoss(Loss):
    """SimSiam (Chen & He 2021, Algorithm 1): L = D(p_1, stopgrad(z_2)) / 2 + D(p_2, stopgrad(z_1)) / 2 with
    D = -cosine similarity, z the encoder's projections and p = h(z) a bottleneck MLP predictor
    (dim -> predictor_hidden -> dim, Linear-BN-ReLU-Linear) that the loss owns."""

    pairings = ("multiview",)
    two_views = True

    def __init__(self, predictor_hidden: int = 512):
        super().__init__()
        if predictor_hidden < 1:
            raise ConfigError(f"loss.predictor_hidden must be >= 1, got {predictor_hidden}")
        self.predictor_hidden = predictor_hidden

    def setup(self, encoder, batch_size):
        self.predictor = ProjectionHead([encoder.output_dim, self.predictor_hidden, encoder.output_dim])

    def forward(self, z: torch.Tensor, target: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        predictions = self.predictor(z.flatten(0, 1)).view_as(z)
        return -cross_view_cosine(predictions, z)
