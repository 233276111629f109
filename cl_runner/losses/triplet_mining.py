"""Triplet mining in the batch for the study's triplet pairing: the hardest (Hermans, Beyer & Leibe 2017, "In
Defense of the Triplet Loss", batch hard) or the semi-hard (Schroff et al. 2015, FaceNet, eq. 4) positives and
negatives of each anchor, among the batch's embeddings whose class relative to the anchor is known."""
from __future__ import annotations

import torch

from cl_runner.errors import ConfigError

MINING = ("none", "batch_hard", "semi_hard")


def check_mining(mining: str, allowed: tuple[str, ...] = MINING) -> None:
    """Refuse a `loss.mining` that is not one of `allowed` (a loss's own: this module's, or SimCLR's)."""
    if mining not in allowed:
        raise ConfigError(f"loss.mining must be one of {', '.join(allowed)}, got {mining!r}")


def candidates(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For B triplets (anchor, positive, negative) with the anchors' classes `labels` [B], boolean [B, 3B] masks
    over the embeddings [anchors; positives; negatives] of each anchor's positives (its own positive, and the
    other anchors and positives of its class) and negatives (its own negative, and the anchors and positives of
    other classes). Another triplet's negative is neither: its class is only known to differ from that triplet's."""
    b = len(labels)
    same = labels[:, None] == labels[None, :]
    own = torch.eye(b, dtype=torch.bool, device=labels.device)
    nothing = torch.zeros_like(own)
    positives = torch.cat([same & ~own, same, nothing], dim=1)
    negatives = torch.cat([~same, ~same, own], dim=1)
    return positives, negatives


def mined_triplet_loss(z: torch.Tensor, labels: torch.Tensor | None, margin: float, p: float,
                       mining: str) -> torch.Tensor:
    """The triplet margin loss max(0, d(a, p) - d(a, n) + margin) over mined triplets of z [3, B, dim]:
    `batch_hard`: per anchor, its farthest positive against its nearest negative, averaged over the anchors;
    `semi_hard`: per anchor and each of its positives, the nearest negative farther than that positive (FaceNet's
    semi-hard, d(a, p) < d(a, n); where none is, the farthest negative, as TensorFlow's triplet_semihard_loss),
    averaged over the (anchor, positive) pairs."""
    if labels is None:
        raise ConfigError(f"loss.mining={mining} needs the anchors' classes: set pairing.negatives=label_aware")
    anchors, pool = z[0], z.flatten(0, 1)
    distance = torch.cdist(anchors, pool, p=p)  # B x 3B
    positives, negatives = candidates(labels)
    if mining == "batch_hard":
        hardest_positive = distance.masked_fill(~positives, float("-inf")).amax(dim=1)
        hardest_negative = distance.masked_fill(~negatives, float("inf")).amin(dim=1)
        return torch.relu(hardest_positive - hardest_negative + margin).mean()
    b = len(anchors)
    by_distance, _ = distance.masked_fill(~negatives, float("inf")).sort(dim=1)  # each anchor's negatives first
    count = negatives.sum(dim=1, keepdim=True)
    to_positive = distance[:, :2 * b].contiguous()  # positives are anchors or positives, never negatives
    first_farther = torch.searchsorted(by_distance, to_positive, right=True)  # B x 2B: the first d(a, n) > d(a, p)
    chosen = torch.where(first_farther < count, by_distance.gather(1, first_farther.clamp(max=3 * b - 1)),
                         by_distance.gather(1, count - 1))  # none farther: the farthest
    per_pair = torch.relu(to_positive - chosen + margin)
    return per_pair.masked_fill(~positives[:, :2 * b], 0.0).sum() / positives.sum()
