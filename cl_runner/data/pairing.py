"""Which images form a training tuple: pairs with a +1/-1 target, or (anchor, positive, negative) triplets.

The anchor is the clean image, the positive an augmented view of it, the negative a clean image of another
class (the study's label-aware negatives, which avoid the sample bias of Chuang et al. 2020). A sampler turns
a batch of tuple ids into one stacked batch of model inputs, all on the training device.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from cl_runner.data.augment import normalize, to_unit
from cl_runner.data.datasets import ImageSet


@dataclass
class TupleBatch:
    """The model inputs of one step: `views` groups of the same size stacked along dim 0, so the encoder runs
    once and its output reshapes to [views, tuples, dim]. `target` is +1/-1 per pair (pairs only)."""

    images: torch.Tensor
    views: int
    target: torch.Tensor | None = None


class LabelAwareNegatives:
    """Draws, for each anchor, an image uniformly among all images of the other classes, in one vectorized
    step: a uniform index over the N - n_y images outside the anchor's class block of the label-sorted order."""

    def __init__(self, labels: torch.Tensor):
        self.order = torch.argsort(labels, stable=True)
        self.counts = torch.bincount(labels)
        self.starts = torch.cumsum(self.counts, 0) - self.counts
        if (self.counts > 0).sum() < 2:
            raise ValueError("label-aware negatives need images of at least two classes")

    def sample(self, anchor_labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Indices [B] of negatives, never of the anchor's class."""
        own = self.counts[anchor_labels]
        others = len(self.order) - own
        u = torch.rand(len(anchor_labels), generator=generator, device=anchor_labels.device)
        pos = torch.minimum((u * others).long(), others - 1)
        pos = pos + (pos >= self.starts[anchor_labels]).long() * own  # skip the anchor's class block
        return self.order[pos]


class TupleSampler(ABC):
    """Shared machinery: the training split, its negatives and the positives' augmentation.

    fixed_views: draw each image's positive view once (quantized to uint8, as the study's PIL pipeline
    stored it) and reuse it every epoch, as the study's code did; otherwise a fresh draw every step.
    """

    name = ""
    views = 0

    def __init__(self, fixed_views: bool = False):
        self.fixed_views = fixed_views

    def setup(self, train: ImageSet, augment, generator: torch.Generator, chunk: int = 4096) -> None:
        self.train, self.augment = train, augment
        self.negatives = LabelAwareNegatives(train.labels)
        self.stored_views = None
        if self.fixed_views:
            self.stored_views = torch.cat([
                augment(train.images[i:i + chunk], generator).mul(255).round_().to(torch.uint8)
                for i in range(0, len(train), chunk)])

    @abstractmethod
    def tuples_per_epoch(self) -> int:
        """How many tuples one epoch visits."""

    @abstractmethod
    def batch(self, ids: torch.Tensor, generator: torch.Generator) -> TupleBatch:
        """The stacked model inputs of the tuples `ids` (a slice of this epoch's permutation)."""

    def positive_views(self, anchors: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augmented views in [0, 1] of the images with indices `anchors`."""
        if self.stored_views is not None:
            return to_unit(self.stored_views[anchors])
        return self.augment(self.train.images[anchors], generator)

    def negative_images(self, anchors: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return to_unit(self.train.images[self.negatives.sample(self.train.labels[anchors], generator)])


class TripletSampler(TupleSampler):
    """Triplets (anchor, positive, negative); one per training image and epoch."""

    name = "triplet"
    views = 3

    def tuples_per_epoch(self) -> int:
        return len(self.train)

    def batch(self, ids: torch.Tensor, generator: torch.Generator) -> TupleBatch:
        anchors = to_unit(self.train.images[ids])
        stacked = torch.cat([anchors, self.positive_views(ids, generator), self.negative_images(ids, generator)])
        return TupleBatch(normalize(stacked), views=3)


class PairSampler(TupleSampler):
    """Pairs (anchor, second, target): tuple id i < N is image i with its positive view (+1), id N + i is
    image i with a negative (-1), so an epoch holds both pairs of every image, shuffled together."""

    name = "pair"
    views = 2

    def tuples_per_epoch(self) -> int:
        return 2 * len(self.train)

    def batch(self, ids: torch.Tensor, generator: torch.Generator) -> TupleBatch:
        n = len(self.train)
        anchor_ids = ids % n
        is_positive = ids < n
        anchors = to_unit(self.train.images[anchor_ids])
        second = torch.empty_like(anchors)
        second[is_positive] = self.positive_views(anchor_ids[is_positive], generator)
        second[~is_positive] = self.negative_images(anchor_ids[~is_positive], generator)
        target = is_positive.float() * 2 - 1
        return TupleBatch(normalize(torch.cat([anchors, second])), views=2, target=target)
