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
from cl_runner.data.augment import Augmentation, normalize, rows_of, to_unit
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
        return self.pick(anchors, torch.rand(len(anchors), generator=generator, device=anchors.device))

    def pick(self, anchors: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """`sample` from the draws `u` [B] in [0, 1)."""
        anchor_labels = self.labels[anchors]
        own = self.counts[anchor_labels]
        others = len(self.order) - own
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
        return self.pick(anchors, torch.rand(len(anchors), generator=generator, device=anchors.device))

    def pick(self, anchors: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """`sample` from the draws `u` [B] in [0, 1)."""
        pos = (u * (self.size - 1)).long().clamp_max_(self.size - 2)
        return pos + (pos >= anchors).long()  # skip the anchor's own index


NEGATIVES = ("label_aware", "random")


Uniforms = list  # a pipeline's draws for a view: one dict of tensors per operation
Draws = dict  # one batch's draws from the training streams, by role: an augmentation's uniforms, negatives' [B]


class TupleSampler(ABC):
    """Shared machinery: the training split, its negatives and the augmentation of positives (and anchors).

    fixed_views: draw each image's positive view once (quantized to uint8, as the study's PIL pipeline
    stored it) and reuse it every epoch, as the study's code did; otherwise a fresh draw every step.
    negatives: `label_aware` (another class) or `random` (any other image).
    augment_anchor: the anchor is an augmented view too (its own draw), as in SimCLR and BYOL.
    View k of a tuple (0: the anchor, 1: the positive; a multi-view tuple's views in order) goes through the
    augmentation's pipeline for view k.

    A batch is built in two steps: `draws`, every random number it needs, taken from the streams in a fixed order
    (a few generator calls), then `inputs`, which turns the tuple ids and the draws into model inputs: tensor
    arithmetic and indexing only, so that `torch.compile` can fuse it into a few kernels for a fixed batch shape
    (`setup(compiled=True)`; generators stay outside the compiled function, so the streams are the same either
    way). On an accelerator, or compiled, batches are built `sync_free`: no data-dependent shapes, no host syncs.
    """

    name = ""
    views = 0
    local_views = 0  # multi-crop's (MultiViewSampler)

    def __init__(self, fixed_views: bool = False, negatives: str = "label_aware", augment_anchor: bool = False):
        if negatives not in NEGATIVES:
            raise ConfigError(f"pairing.negatives must be one of {', '.join(NEGATIVES)}, got {negatives!r}")
        self.fixed_views, self.negative_kind, self.augment_anchor = fixed_views, negatives, augment_anchor

    def setup(self, train: ImageSet, augment: Augmentation, streams: TrainingStreams, compiled: bool = False,
              chunk: int = 4096) -> None:
        augment.check_views(self.augmented_views(), self.name)
        self.train, self.augment = train, augment
        self.sync_free = compiled or train.images.device.type != "cpu"
        self.build = torch.compile(self.inputs, fullgraph=True, dynamic=False) if compiled else self.inputs
        self.negatives = (LabelAwareNegatives(train.labels) if self.negative_kind == "label_aware"
                          else RandomNegatives(len(train)))
        self.stored_views = None
        if self.fixed_views:
            self.stored_views = torch.cat([
                augment(train.take(torch.arange(i, min(i + chunk, len(train)), device=streams.augment.device)),
                        streams.augment).mul(255).round_().to(torch.uint8)
                for i in range(0, len(train), chunk)])

    def augmented_views(self) -> list[int]:
        """The indices of the views that are augmented (0: the anchor, 1: the positive)."""
        return [0, 1] if self.augment_anchor else [1]

    @abstractmethod
    def tuples_per_epoch(self) -> int:
        """How many tuples one epoch visits."""

    def batch(self, ids: torch.Tensor, streams: TrainingStreams, rows: slice | None = None) -> TupleBatch:
        """The stacked model inputs of the tuples `ids` (a slice of this epoch's permutation), or of this
        process's `rows` of them (a distributed run); views draw from `streams.augment`, negatives from
        `streams.negatives`, both for all of `ids`."""
        images, target, labels = self.build(ids, self.draws(ids, streams), rows or slice(0, len(ids)))
        if isinstance(images, tuple):  # the views and multi-crop's local views
            return TupleBatch(images[0], self.views, target, labels, images[1], self.local_views)
        return TupleBatch(images, self.views, target, labels)

    def anchor_labels(self, ids: torch.Tensor, rows: slice) -> torch.Tensor:
        """The classes of the anchors of the tuples `ids[rows]` (a pair's id N + i is image i's)."""
        return self.train.labels[ids[rows] % len(self.train)]

    @abstractmethod
    def draws(self, ids: torch.Tensor, streams: TrainingStreams) -> Draws:
        """Every random number the batch of tuples `ids` needs, drawn for all of them in a fixed order."""

    @abstractmethod
    def inputs(self, ids: torch.Tensor, draws: Draws, rows: slice) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                          torch.Tensor | None]:
        """The `rows` of the batch of `ids` from its `draws`: normalized images stacked by view (a pair of such
        stacks with multi-crop's local views: the views, the local views), the target (pairs) and the labels
        (label-aware), without a generator."""

    def view_draws(self, n: int, generator: torch.Generator, view: int) -> Uniforms:
        """The draws of n freshly augmented views, as view `view` of their tuples."""
        return self.augment.view(view).uniforms(n, tuple(self.train.images.shape[1:]), generator, generator.device)

    def anchor_draws(self, n: int, generator: torch.Generator) -> Uniforms | None:
        """The anchors' draws: none for clean anchors."""
        return self.view_draws(n, generator, 0) if self.augment_anchor else None

    def positive_draws(self, n: int, generator: torch.Generator, view: int = 1) -> Uniforms | None:
        """The positives' draws: none with fixed views."""
        return None if self.stored_views is not None else self.view_draws(n, generator, view)

    def augmented(self, anchors: torch.Tensor, uniforms: Uniforms, rows: slice | torch.Tensor,
                  view: int) -> torch.Tensor:
        """Augmented views in [0, 1] of the images `anchors[rows]`, their draws `uniforms` made for all `anchors`."""
        pipeline = self.augment.view(view)
        params = pipeline.params(uniforms, self.train.images.shape[-2:])
        return pipeline.apply(self.train.take(anchors[rows]), rows_of(params, rows), self.sync_free)

    def positive_views(self, anchors: torch.Tensor, uniforms: Uniforms | None,
                       rows: slice | torch.Tensor, view: int = 1) -> torch.Tensor:
        """Augmented views in [0, 1] of the images `anchors[rows]`: the stored ones with `fixed_views`."""
        if uniforms is None:
            return to_unit(self.stored_views.index_select(0, anchors[rows]))
        return self.augmented(anchors, uniforms, rows, view)

    def anchor_views(self, anchors: torch.Tensor, uniforms: Uniforms | None,
                     rows: slice | torch.Tensor) -> torch.Tensor:
        """The anchors `anchors[rows]` in [0, 1]: clean images, or fresh augmented views with `augment_anchor`."""
        if uniforms is None:
            return to_unit(self.train.take(anchors[rows]))
        return self.augmented(anchors, uniforms, rows, 0)

    def negative_images(self, anchors: torch.Tensor, u: torch.Tensor, rows: slice | torch.Tensor) -> torch.Tensor:
        """Negatives in [0, 1] for `anchors[rows]`, from the draws `u` made for all `anchors`."""
        return to_unit(self.train.take(self.negatives.pick(anchors, u)[rows]))


def negative_draws(n: int, generator: torch.Generator) -> torch.Tensor:
    """The draws of n negatives."""
    return torch.rand(n, generator=generator, device=generator.device)


class TripletSampler(TupleSampler):
    """Triplets (anchor, positive, negative); one per training image and epoch."""

    name = "triplet"
    views = 3

    def tuples_per_epoch(self) -> int:
        return len(self.train)

    def draws(self, ids, streams) -> Draws:
        n = len(ids)
        return {"anchor": self.anchor_draws(n, streams.augment), "positive": self.positive_draws(n, streams.augment),
                "negative": negative_draws(n, streams.negatives)}

    def inputs(self, ids, draws, rows):
        stacked = torch.cat([self.anchor_views(ids, draws["anchor"], rows),
                             self.positive_views(ids, draws["positive"], rows),
                             self.negative_images(ids, draws["negative"], rows)])
        labels = self.train.labels[ids[rows]] if self.negative_kind == "label_aware" else None  # the anchors'
        return normalize(stacked), None, labels


class PairSampler(TupleSampler):
    """Pairs (anchor, second, target): tuple id i < N is image i with its positive view (+1), id N + i is
    image i with a negative (-1), so an epoch holds both pairs of every image, shuffled together. `sync_free`:
    a positive view and a negative are made for every pair and the target picks; otherwise only the images each
    pair needs (drawn for all the batch's positives, and for all its negatives)."""

    name = "pair"
    views = 2

    def tuples_per_epoch(self) -> int:
        return 2 * len(self.train)

    def draws(self, ids, streams) -> Draws:
        positives = len(ids) if self.sync_free else int((ids < len(self.train)).sum())
        return {"anchor": self.anchor_draws(len(ids), streams.augment),
                "positive": self.positive_draws(positives, streams.augment),
                "negative": negative_draws(len(ids) if self.sync_free else len(ids) - positives, streams.negatives)}

    def inputs(self, ids, draws, rows):
        n = len(self.train)
        anchor_ids = ids % n
        is_positive = ids < n
        anchors = self.anchor_views(anchor_ids, draws["anchor"], rows)
        if self.sync_free:
            second = torch.where(is_positive[rows].view(-1, 1, 1, 1),
                                 self.positive_views(anchor_ids, draws["positive"], rows),
                                 self.negative_images(anchor_ids, draws["negative"], rows))
        else:
            second = torch.empty_like(anchors)
            for picked, make, drawn in ((is_positive, self.positive_views, draws["positive"]),
                                        (~is_positive, self.negative_images, draws["negative"])):
                where = torch.nonzero(picked).squeeze(1)  # the global batch's pairs of this kind
                mine = torch.nonzero((where >= rows.start) & (where < rows.stop)).squeeze(1)
                second.index_copy_(0, where[mine] - rows.start, make(anchor_ids[where], drawn, mine))
        target = is_positive[rows].float() * 2 - 1
        return normalize(torch.cat([anchors, second])), target, None


class MultiViewSampler(TupleSampler):
    """k augmented views of every image (SimCLR's setting, Chen et al. 2020): the other images of the batch
    are the negatives. With `negatives=label_aware` the batch carries the labels, so a loss can leave
    same-class images out of the negatives; with `random` it does not (the unsupervised setting).

    `local_views`: multi-crop (Caron et al. 2020, SwAV section 3.2): that many more views of each image, views
    `views` and on, whose pipelines (aug.views) may crop them to a smaller size (aug.ops.crop.size); the batch
    carries them apart (TupleBatch.local_images), as a stack of another size."""

    name = "multiview"

    def __init__(self, views: int = 2, local_views: int = 0, negatives: str = "random", fixed_views: bool = False,
                 augment_anchor: bool = True):
        super().__init__(fixed_views=fixed_views, negatives=negatives, augment_anchor=augment_anchor)
        if views < 2:
            raise ConfigError(f"pairing.views must be at least 2, got {views}")
        if isinstance(local_views, bool) or not isinstance(local_views, int) or local_views < 0:
            raise ConfigError(f"pairing.local_views must be an integer >= 0 (0: no multi-crop), got {local_views!r}")
        if fixed_views:
            raise ConfigError("pairing.fixed_views is for pairs and triplets: multi-view needs fresh views")
        self.views, self.local_views = views, local_views

    def tuples_per_epoch(self) -> int:
        return len(self.train)

    def augmented_views(self) -> list[int]:
        return list(range(0 if self.augment_anchor else 1, self.views + self.local_views))

    def local_view_sample(self) -> ImageSet:
        """One local view of the first training image, as pixels: what the encoder must take (a size check)."""
        generator = torch.Generator(self.train.images.device).manual_seed(0)
        first = torch.zeros(1, dtype=torch.long, device=self.train.images.device)
        view = self.augmented(first, self.view_draws(1, generator, self.views), slice(0, 1), self.views)
        return ImageSet(view.mul(255).round_().to(torch.uint8), None, [])

    def draws(self, ids, streams) -> Draws:
        n = len(ids)
        return {"first": self.anchor_draws(n, streams.augment),  # a clean first view unless augment_anchor
                "others": [self.positive_draws(n, streams.augment, view)
                           for view in range(1, self.views + self.local_views)]}  # the local views' last

    def inputs(self, ids, draws, rows):
        first = self.anchor_views(ids, draws["first"], rows)
        others = [self.positive_views(ids, drawn, rows, view) for view, drawn in enumerate(draws["others"], 1)]
        labels = self.train.labels[ids[rows]] if self.negative_kind == "label_aware" else None
        views = normalize(torch.cat([first, *others[:self.views - 1]]))
        if not self.local_views:
            return views, None, labels
        return (views, normalize(torch.cat(others[self.views - 1:]))), None, labels
