"""i-Mix (Lee et al. 2021): mixup in input space with virtual labels, one mechanism (`VirtualMix`) applied to the
three methods of its paper: N-pair, MoCo v2 (in-batch keys and the queue) and BYOL (a lambda-weighted pair of
targets). With `alpha = 0` nothing is mixed and each is its own unmixed baseline."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cl_runner import distributed
from cl_runner.batch import BatchShare
from cl_runner.errors import ConfigError
from cl_runner.losses.base import Loss
from cl_runner.losses.momentum import BYOLLoss, MoCoLoss


@dataclass(frozen=True)
class Mixing:
    """One step's draw: lambda, and the permutation pi of the global batch that names each tuple's partner
    (None: nothing mixed, lambda = 1)."""

    coefficient: float = 1.0
    permutation: torch.Tensor | None = None

    def virtual_labels(self, tuples: int, like: torch.Tensor) -> torch.Tensor:
        """[tuples, tuples] on the device and of the dtype of `like`: row i is lambda e_i + (1 - lambda) e_pi(i),
        the mixed virtual label of tuple i."""
        own = torch.eye(tuples, device=like.device, dtype=like.dtype)
        return own if self.permutation is None else torch.lerp(own[self.permutation], own, self.coefficient)


class VirtualMix:
    """i-Mix's mechanism (Lee et al. 2021, Algorithm 1): each step draws lambda ~ Beta(alpha, alpha) and a
    permutation pi of the global batch, and mixes a view in input space, x_i <- lambda x_i + (1 - lambda) x_pi(i);
    the loss then trains on the mixed virtual labels lambda v_i + (1 - lambda) v_pi(i). lambda is drawn on the
    host (no device sync), pi on the batch's device, both from torch's global generator (checkpointed). In a
    distributed run pi ranges over the global batch: each process mixes its rows with partners from any process.
    alpha = 0: no mixing."""

    def __init__(self, alpha: float):
        if alpha < 0:
            raise ConfigError(f"loss.alpha must be >= 0 (0: no mixing), got {alpha}")
        self.beta = torch.distributions.Beta(alpha, alpha) if alpha > 0 else None

    def draw(self, tuples: int, device: torch.device) -> Mixing:
        """The mixing of a global batch of `tuples`."""
        if self.beta is None:
            return Mixing()
        return Mixing(float(self.beta.sample()), torch.randperm(tuples, device=device))

    def mix(self, images: torch.Tensor, share: BatchShare, mixed_views: slice) -> tuple[torch.Tensor, Mixing]:
        """The batch's two views [2, tuples, C, H, W] (this process's rows), those of `mixed_views` mixed with
        their partners' same views, and this step's draw."""
        views = images.unflatten(0, (2, -1))
        mixing = self.draw(sum(share.sizes), images.device)
        if mixing.permutation is not None:
            views = views.clone()
            views[mixed_views] = torch.lerp(partners(views[mixed_views], mixing, share), views[mixed_views],
                                            mixing.coefficient)
        return views, mixing


def partners(x: torch.Tensor, mixing: Mixing, share: BatchShare) -> torch.Tensor:
    """x [k, tuples, ...] (this process's rows) -> the same of each row's partner, from the global batch."""
    everyones = distributed.gather_constant(x, dim=1, sizes=share.sizes)
    return everyones.index_select(1, mixing.permutation[share.rows])


class IMixLoss(Loss):
    """i-Mix on the N-pair loss (Lee et al. 2021, Algorithm 1): the first views are mixed, and the
    similarities s_ij = a_i . p_j / T of the (mixed) first views' l2-normalized embeddings to the unmixed second
    views' are trained with the mixed virtual labels as soft targets of a cross-entropy. Unmixed (alpha = 0)
    it is the N-pair loss of the i-Mix paper, -log(exp(s_ii) / sum_j exp(s_ij)): NT-Xent's one-directional
    form, the second views the only candidates."""

    pairings = ("multiview",)
    two_views = True
    in_batch = True

    def __init__(self, temperature: float = 0.2, alpha: float = 1.0):
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"loss.temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.mixing = VirtualMix(alpha)

    def training_loss(self, encoder, batch, share, encode):
        views, mixing = self.mixing.mix(batch.images, share, slice(0, 1))
        z = distributed.gather(encode(encoder, views.flatten(0, 1)), dim=1, sizes=share.sizes)
        return self(z, mixing)

    def forward(self, z: torch.Tensor, mixing: Mixing = Mixing()) -> torch.Tensor:
        """z: [2, tuples, dim], the (mixed) first views' and the second views' embeddings."""
        anchors, positives = F.normalize(z[0], dim=1), F.normalize(z[1], dim=1)
        logits = anchors @ positives.T / self.temperature  # tuples x tuples
        if mixing.permutation is None:
            return F.cross_entropy(logits, torch.arange(len(logits), device=z.device))
        return F.cross_entropy(logits, mixing.virtual_labels(len(logits), logits))


class IMixMoCoLoss(MoCoLoss):
    """i-Mix on MoCo v2 (Lee et al. 2021; the slides' l_MoCo^i-Mix): each view is mixed and, as the query, scored against the
    momentum encoder's keys of the other (unmixed) view of every tuple in the global batch and the queue,
    [q . k_1 ... q . k_N, q . queue] / T, with the mixed virtual label over the N in-batch keys as the soft target
    (the queue's columns get none); symmetrized over the two views as `MoCoLoss`. Unmixed (alpha = 0) it is
    MoCo v2 with the other tuples' keys as extra negatives. Class labels are not used."""

    def __init__(self, temperature: float = 0.2, queue_size: int = 4096, momentum: float = 0.99,
                 final_momentum: float = 0.999, alpha: float = 1.0):
        super().__init__(temperature, queue_size, momentum, final_momentum)
        self.mixing = VirtualMix(alpha)

    def training_loss(self, encoder, batch, share, encode):
        mixed, mixing = self.mixing.mix(batch.images, share, slice(0, 2))
        queries = F.normalize(encode(encoder, mixed.flatten(0, 1)), dim=-1)  # 2 x tuples x dim
        with torch.no_grad():
            keys = distributed.gather_constant(F.normalize(encode(self.momentum_encoder, batch.images), dim=-1),
                                               dim=1, sizes=share.sizes)  # 2 x global tuples x dim
        targets = mixing.virtual_labels(keys.shape[1], keys)[share.rows]
        loss = self(queries, keys, targets) * share.weight
        self.enqueue(keys.flatten(0, 1), None)
        return loss

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """queries [2, tuples, dim] (this process's rows), keys [2, global tuples, dim], l2-normalized; targets
        [tuples, global tuples], the virtual labels of the queries' rows; the queue is the one before this step."""
        queue = self.queue.clone()  # a copy, as enqueue() writes in place
        logits = torch.cat([torch.cat([queries[view] @ keys[1 - view].T, queries[view] @ queue.T], dim=1)
                            for view in (0, 1)]) / self.temperature  # 2 tuples x (global tuples + queue_size)
        soft = F.pad(targets, (0, len(queue))).repeat(2, 1)
        return F.cross_entropy(logits, soft)


class IMixBYOLLoss(BYOLLoss):
    """i-Mix on BYOL (Lee et al. 2021; the slides' l_BYOL^i-Mix): each view is mixed, and its prediction regresses the
    lambda-weighted pair of the momentum encoder's targets of the other (unmixed) view, of the tuple itself and
    of its partner: lambda l(q(z_i^mix), z'_i) + (1 - lambda) l(q(z_i^mix), z'_pi(i)), l = 2 - 2 cos, summed over
    both directions as `BYOLLoss`. Unmixed (alpha = 0) it is BYOL."""

    def __init__(self, predictor_hidden: int = 4096, momentum: float = 0.996, final_momentum: float = 1.0,
                 alpha: float = 1.0):
        super().__init__(predictor_hidden, momentum, final_momentum)
        self.mixing = VirtualMix(alpha)

    def training_loss(self, encoder, batch, share, encode):
        mixed, mixing = self.mixing.mix(batch.images, share, slice(0, 2))
        z = encode(encoder, mixed.flatten(0, 1))
        predictions = self.predictor(z.flatten(0, 1)).view_as(z)
        with torch.no_grad():
            targets = encode(self.momentum_encoder, batch.images)
            partner_targets = None if mixing.permutation is None else partners(targets, mixing, share)
        return self(predictions, targets, partner_targets, mixing.coefficient) * share.weight

    def forward(self, predictions: torch.Tensor, targets: torch.Tensor, partner_targets: torch.Tensor | None = None,
                coefficient: float = 1.0) -> torch.Tensor:
        """predictions, targets, partner_targets: [2, tuples, dim]; partner_targets[v, i] is the target of view v
        of tuple i's partner."""
        own = super().forward(predictions, targets)
        if partner_targets is None:
            return own
        return coefficient * own + (1 - coefficient) * super().forward(predictions, partner_targets)
