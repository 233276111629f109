"""Which images form a training tuple: pairs with a +1/-1 target, (anchor, positive, negative) triplets, or
k augmented views of each image with in-batch negatives.

In the study the anchor is the clean image, the positive an augmented view of it, the negative a clean image of
another class (label-aware negatives, which avoid the sample bias of Chuang et al. 2020); `negatives=random`
draws them without labels (the unsupervised setting) and `augment_anchor` augments the anchor too. A sampler
turns a batch of tuple ids into one stacked batch of model inputs, all on the training device.

In a distributed run each process builds only its rows of the global batch, but every random draw (augmentation
parameters, negatives) is made for the whole global batch from the shared streams, so the processes' parts
together are exactly the batch one process would build.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from cl_runner.batch import TupleBatch
from cl_runner.data.augment import normalize, rows_of, to_unit
from cl_runner.data.datasets import ImageSet
from cl_runner.errors import ConfigError
from cl_runner.randomness import TrainingStreams


class LabelAwareNegatives:
    """Draws, for each anchor, an image uniformly among all images of the other classes, in one vectorized
    step: a uniform index over the N - n_y images outside the anchor's class block of the label-sorted order."""

    def __init__(self, labels: torch.Tensor):
        self.labels = labels
        self.order = torch.argsort(labels, stable=True)
        self.counts = torch.bincount(labels)
        self.starts = torch.cumsum(self.counts, 0) - self.counts
        if (self.counts > 0).sum() < 2:
            raise ConfigError("label-aware negatives need images of at least two classes")

    def sample(self, anchors: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Indices [B] of negatives for the images `anchors`, never of an anchor's class."""
        anchor_labels = self.labels[anchors]
        own = self.counts[anchor_labels]
        others = len(self.order) - own
        u = torch.rand(len(anchors), generator=generator, device=anchors.device)
        pos = torch.minimum((u * others).long(), others - 1)
        pos = pos + (pos >= self.starts[anchor_labels]).long() * own  # skip the anchor's class block
        return self.order[pos]


class RandomNegatives:
    """Draws, for each anchor, any other image uniformly, labels unseen: the unsupervised setting, where some
    negatives share the anchor's class (the sample bias of Chuang et al. 2020)."""

    def __init__(self, size: int):
        self.size = size
        if self.size < 2:
            raise ConfigError("random negatives need at least two images")

    def sample(self, anchors: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Indices [B] of negatives for the images `anchors`, never the anchor itself."""
        u = torch.rand(len(anchors), generator=generator, device=anchors.device)
        pos = (u * (self.size - 1)).long().clamp_max_(self.size - 2)
        return pos + (pos >= anchors).long()  # skip the anchor's own index


NEGATIVES = ("label_aware", "random")


class TupleSampler(ABC):
    """Shared machinery: the training split, its negatives and the augmentation of positives (and anchors).

    fixed_views: draw each image's positive view once (quantized to uint8, as the study's PIL pipeline
    stored it) and reuse it every epoch, as the study's code did; otherwise a fresh draw every step.
    negatives: `label_aware` (another class) or `random` (any other image).
    augment_anchor: the anchor is an augmented view too (its own draw), as in SimCLR and BYOL.
    On an accelerator (`sync_free`, set by `setup` from the data's device) batches are built without host syncs.
    """

    name = ""
    views = 0

    def __init__(self, fixed_views: bool = False, negatives: str = "label_aware", augment_anchor: bool = False):
        if negatives not in NEGATIVES:
            raise ConfigError(f"pairing.negatives must be one of {', '.join(NEGATIVES)}, got {negatives!r}")
        self.fixed_views, self.negative_kind, self.augment_anchor = fixed_views, negatives, augment_anchor

    def setup(self, train: ImageSet, augment, streams: TrainingStreams, chunk: int = 4096) -> None:
        self.train, self.augment = train, augment
        self.sync_free = train.images.device.type != "cpu"  # on an accelerator: no data-dependent shapes
        self.negatives = (LabelAwareNegatives(train.labels) if self.negative_kind == "label_aware"
                          else RandomNegatives(len(train)))
        self.stored_views = None
        if self.fixed_views:
            self.stored_views = torch.cat([
                augment(train.take(torch.arange(i, min(i + chunk, len(train)), device=streams.augment.device)),
                        streams.augment).mul(255).round_().to(torch.uint8)
                for i in range(0, len(train), chunk)])

    @abstractmethod
    def tuples_per_epoch(self) -> int:
        """How many tuples one epoch visits."""

    @abstractmethod
    def batch(self, ids: torch.Tensor, streams: TrainingStreams, rows: slice | None = None) -> TupleBatch:
        """The stacked model inputs of the tuples `ids` (a slice of this epoch's permutation), or of this
        process's `rows` of them (a distributed run); views draw from `streams.augment`, negatives from
        `streams.negatives`, both for all of `ids`."""

    def augmented(self, anchors: torch.Tensor, generator: torch.Generator, rows: slice | torch.Tensor) -> torch.Tensor:
        """Fresh augmented views in [0, 1] of the images `anchors[rows]`, their parameters drawn for all `anchors`."""
        params = self.augment.draw(len(anchors), self.train.images.shape[-2:], generator, anchors.device)
        return self.augment.apply(self.train.take(anchors[rows]), rows_of(params, rows))

    def positive_views(self, anchors: torch.Tensor, generator: torch.Generator,
                       rows: slice | torch.Tensor = slice(None)) -> torch.Tensor:
        """Augmented views in [0, 1] of the images `anchors[rows]`: the stored ones with `fixed_views`."""
        if self.stored_views is not None:
            return to_unit(self.stored_views.index_select(0, anchors[rows]))
        return self.augmented(anchors, generator, rows)

    def anchor_views(self, anchors: torch.Tensor, generator: torch.Generator,
                     rows: slice | torch.Tensor = slice(None)) -> torch.Tensor:
        """The anchors `anchors[rows]` in [0, 1]: clean images, or fresh augmented views with `augment_anchor`."""
        if self.augment_anchor:
            return self.augmented(anchors, generator, rows)
        return to_unit(self.train.take(anchors[rows]))

    def negative_images(self, anchors: torch.Tensor, generator: torch.Generator,
                        rows: slice | torch.Tensor = slice(None)) -> torch.Tensor:
        """Negatives in [0, 1] for `anchors[rows]`, drawn for all `anchors`."""
        return to_unit(self.train.take(self.negatives.sample(anchors, generator)[rows]))


class TripletSampler(TupleSampler):
    """Triplets (anchor, positive, negative); one per training image and epoch."""

    name = "triplet"
    views = 3

    def tuples_per_epoch(self) -> int:
        return len(self.train)

    def batch(self, ids: torch.Tensor, streams: TrainingStreams, rows: slice | None = None) -> TupleBatch:
        rows = rows or slice(0, len(ids))
        stacked = torch.cat([self.anchor_views(ids, streams.augment, rows),
                             self.positive_views(ids, streams.augment, rows),
                             self.negative_images(ids, streams.negatives, rows)])
        return TupleBatch(normalize(stacked), views=3)


class PairSampler(TupleSampler):
    """Pairs (anchor, second, target): tuple id i < N is image i with its positive view (+1), id N + i is
    image i with a negative (-1), so an epoch holds both pairs of every image, shuffled together."""

    name = "pair"
    views = 2

    def tuples_per_epoch(self) -> int:
        return 2 * len(self.train)

    def batch(self, ids: torch.Tensor, streams: TrainingStreams, rows: slice | None = None) -> TupleBatch:
        rows = rows or slice(0, len(ids))
        n = len(self.train)
        anchor_ids = ids % n
        is_positive = ids < n
        anchors = self.anchor_views(anchor_ids, streams.augment, rows)
        if self.sync_free:  # a positive view and a negative for every pair, the target picks: no host sync
            second = torch.where(is_positive[rows].view(-1, 1, 1, 1),
                                 self.positive_views(anchor_ids, streams.augment, rows),
                                 self.negative_images(anchor_ids, streams.negatives, rows))
        else:  # only the images each pair needs (drawn for all the batch's positives, and negatives)
            second = torch.empty_like(anchors)
            for picked, make, generator in ((is_positive, self.positive_views, streams.augment),
                                            (~is_positive, self.negative_images, streams.negatives)):
                where = torch.nonzero(picked).squeeze(1)  # the global batch's pairs of this kind
                mine = torch.nonzero((where >= rows.start) & (where < rows.stop)).squeeze(1)
                second.index_copy_(0, where[mine] - rows.start, make(anchor_ids[where], generator, mine))
        target = is_positive[rows].float() * 2 - 1
        return TupleBatch(normalize(torch.cat([anchors, second])), views=2, target=target)


class MultiViewSampler(TupleSampler):
    """k augmented views of every image (SimCLR's setting, Chen et al. 2020): the other images of the batch
    are the negatives. With `negatives=label_aware` the batch carries the labels, so a loss can leave
    same-class images out of the negatives; with `random` it does not (the unsupervised setting)."""

    name = "multiview"

    def __init__(self, views: int = 2, negatives: str = "random", fixed_views: bool = False,
                 augment_anchor: bool = True):
        super().__init__(fixed_views=fixed_views, negatives=negatives, augment_anchor=augment_anchor)
        if views < 2:
            raise ConfigError(f"pairing.views must be at least 2, got {views}")
        if fixed_views:
            raise ConfigError("pairing.fixed_views is for pairs and triplets: multi-view needs fresh views")
        self.views = views

    def tuples_per_epoch(self) -> int:
        return len(self.train)

    def batch(self, ids: torch.Tensor, streams: TrainingStreams, rows: slice | None = None) -> TupleBatch:
        rows = rows or slice(0, len(ids))
        first = self.anchor_views(ids, streams.augment, rows)  # a clean first view unless augment_anchor
        others = [self.positive_views(ids, streams.augment, rows) for _ in range(self.views - 1)]
        labels = self.train.labels[ids[rows]] if self.negative_kind == "label_aware" else None
        return TupleBatch(normalize(torch.cat([first, *others])), views=self.views, labels=labels)
