"""Methods with a momentum encoder, an exponential moving average of the trained encoder that provides the
targets: MoCo v2 (against a queue of past keys) and BYOL (through a predictor, no negatives)."""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from cl_runner import distributed
from cl_runner.errors import ConfigError
from cl_runner.losses.base import Loss, contrastive_figures
from cl_runner.losses.siamese import cross_view_cosine
from cl_runner.models import ProjectionHead


def cosine_momentum(start: float, end: float, progress: float) -> float:
    """BYOL's schedule (Grill et al. 2020, section 3.2): tau = end - (end - start) (cos(pi progress) + 1) / 2,
    from `start` at the first step to `end` at the last (BYOL: 0.996 -> 1)."""
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2


class _MomentumEncoder(Loss):
    """Owns `momentum_encoder`, a copy of the encoder that gradients never reach; after every step its
    parameters move towards the encoder's: xi <- tau xi + (1 - tau) theta, tau on `cosine_momentum`."""

    def __init__(self, momentum: float, final_momentum: float):
        super().__init__()
        if not 0 <= momentum <= final_momentum <= 1:
            raise ConfigError(f"loss needs 0 <= momentum <= final_momentum <= 1, got {momentum}, {final_momentum}")
        self.momentum, self.final_momentum = momentum, final_momentum

    def setup(self, encoder, batch_size):
        self.momentum_encoder = copy.deepcopy(encoder).requires_grad_(False)

    @torch.no_grad()
    def after_step(self, encoder: nn.Module, progress: float) -> None:
        tau = cosine_momentum(self.momentum, self.final_momentum, progress)
        torch._foreach_lerp_(list(self.momentum_encoder.parameters()), list(encoder.parameters()), 1 - tau)


class MoCoLoss(_MomentumEncoder):
    """MoCo v2 (He et al. 2020, Algorithm 1; Chen et al. 2020, "Improved baselines": MLP head, T = 0.2):
    queries q from the encoder, keys k from the momentum encoder (l2-normalized), and for each query the
    cross-entropy of [q . k+, q . queue] / T with the positive first; the keys then enter a FIFO queue of
    `queue_size`. Symmetrized over the two views as in MoCo v3 (Chen, Xie & He 2021): each view is the query
    of the other's key. With class labels (negatives=label_aware) queued keys of the query's class are left
    out of the negatives. In a distributed run the queue takes every process's keys (in the global batch's order);
    batch normalization over the global batch (SyncBatchNorm) stands in for MoCo's shuffling BN."""

    pairings = ("multiview",)
    two_views = True

    def __init__(self, temperature: float = 0.2, queue_size: int = 4096, momentum: float = 0.99,
                 final_momentum: float = 0.999):
        super().__init__(momentum, final_momentum)
        if temperature <= 0:
            raise ConfigError(f"loss.temperature must be > 0, got {temperature}")
        self.temperature, self.queue_size = temperature, queue_size

    def setup(self, encoder, batch_size):
        if self.queue_size < 2 * batch_size:
            raise ConfigError(f"loss.queue_size={self.queue_size} must hold at least one step's keys "
                              f"(2 x batch_size = {2 * batch_size})")
        super().setup(encoder, batch_size)
        self.register_buffer("queue", F.normalize(torch.randn(self.queue_size, encoder.output_dim), dim=1))
        self.register_buffer("queue_labels", torch.full((self.queue_size,), -1))  # -1: no class
        self.register_buffer("queue_position", torch.zeros((), dtype=torch.long))

    def training_loss(self, encoder, batch, share, encode):
        queries = F.normalize(encode(encoder, batch.images), dim=-1)  # 2 x tuples x dim
        with torch.no_grad():
            keys = F.normalize(encode(self.momentum_encoder, batch.images), dim=-1)
        loss = self(queries, keys, batch.labels) * share.weight
        labels = distributed.gather_constant(batch.labels, sizes=share.sizes)  # the global batch's keys: the queue
        self.enqueue(distributed.gather_constant(keys, dim=1, sizes=share.sizes).flatten(0, 1),
                     None if labels is None else labels.repeat(2))
        return loss

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """queries, keys: [2, tuples, dim], l2-normalized; the queue is the one before this step's keys."""
        q = queries.flatten(0, 1)  # 2N x dim: the queries of view 1, then of view 2...
        k = keys.flip(0).flatten(0, 1)  # ...each against the other view's key
        positive = (q * k).sum(dim=1, keepdim=True)  # 2N x 1
        negative = q @ self.queue.clone().T  # 2N x queue_size; a copy, as enqueue() writes in place
        if labels is not None:
            negative = negative.masked_fill(labels.repeat(2)[:, None] == self.queue_labels[None, :], float("-inf"))
        logits = torch.cat([positive, negative], dim=1) / self.temperature  # 2N x (1 + queue_size)
        first = torch.zeros_like(logits, dtype=torch.bool)
        first[:, 0] = True
        self.figures = contrastive_figures(logits, first)  # the key against the queue
        return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, labels: torch.Tensor | None) -> None:
        slots = (self.queue_position + torch.arange(len(keys), device=keys.device)) % self.queue_size
        self.queue[slots] = keys
        self.queue_labels[slots] = -1 if labels is None else labels
        self.queue_position.copy_((self.queue_position + len(keys)) % self.queue_size)


class BYOLLoss(_MomentumEncoder):
    """BYOL (Grill et al. 2020, eq. 2): the encoder's projection goes through a predictor q (dim ->
    predictor_hidden -> dim, Linear-BN-ReLU-Linear) and regresses the momentum encoder's projection of the
    other view, ||q(z_1)/|q(z_1)| - z'_2/|z'_2|||^2 = 2 - 2 cos(q(z_1), z'_2), summed over both directions
    (the symmetrized loss) and averaged over the batch. The momentum follows the cosine schedule 0.996 -> 1."""

    pairings = ("multiview",)
    two_views = True

    def __init__(self, predictor_hidden: int = 4096, momentum: float = 0.996, final_momentum: float = 1.0):
        super().__init__(momentum, final_momentum)
        if predictor_hidden < 1:
            raise ConfigError(f"loss.predictor_hidden must be >= 1, got {predictor_hidden}")
        self.predictor_hidden = predictor_hidden

    def setup(self, encoder, batch_size):
        super().setup(encoder, batch_size)
        self.predictor = ProjectionHead([encoder.output_dim, self.predictor_hidden, encoder.output_dim])

    def training_loss(self, encoder, batch, share, encode):
        z = encode(encoder, batch.images)
        with torch.no_grad():
            targets = encode(self.momentum_encoder, batch.images)
        return self(self.predictor(z.flatten(0, 1)).view_as(z), targets) * share.weight

    def forward(self, predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """predictions, targets: [2, tuples, dim]."""
        return 4 - 4 * cross_view_cosine(predictions, targets)
