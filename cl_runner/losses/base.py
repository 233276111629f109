"""The contract between a loss and the training loop, so that the loop stays the same for every method.

A loss sees the encoder and the batch through `training_loss(encoder, batch, share, encode)`. The default encodes
all views in one pass and calls `forward(z, target, labels)` with z [views, tuples, dim] (fp32), `target` the +1/-1
pair labels (pairs only) and `labels` the tuples' classes where the pairing passes them. Methods with parts of
their own (a predictor, a momentum encoder, a queue) build them in `setup`, use them in `training_loss` and
update them in `after_step`; their parameters join the optimizer and their state goes into checkpoints. A loss
over in-batch candidates also leaves its step's `figures` (contrastive_figures: SimCLR's Table 5 diagnostics),
which the loop averages over each epoch.

In a distributed run the batch is this process's `share` of the global batch. A loss whose terms depend on the
other tuples of the batch (in-batch negatives, batch statistics: `in_batch`) is computed on the embeddings of
the whole global batch, gathered with gradients (`cl_runner.distributed.gather`); any other is a mean over the
process's own tuples, weighted by `share.weight`. Either way the processes' gradients average to the one-process
gradient.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from cl_runner import distributed
from cl_runner.batch import BatchShare, TupleBatch

# encode(module, images) -> embeddings [views, tuples, dim] in fp32, under the run's autocast and memory format
Encode = Callable[[nn.Module, torch.Tensor], torch.Tensor]


class Loss(nn.Module):
    """Base of every loss. Class attributes state what it trains on, checked before any work:
    `pairings` (the pairing names it accepts), `needs_labels` (class labels: negatives=label_aware) and
    `two_views` (exactly two views per image), `local_views` (it takes multi-crop's smaller views too, after the
    others: `embed_views`); `in_batch`: the loss of a tuple depends on the batch's other
    tuples, so a distributed run gathers the global batch's embeddings for it. `classes`: what the run tells
    the loss of its data before `setup` (a classifier's size)."""

    pairings: tuple[str, ...] = ()
    needs_labels = False
    two_views = False
    in_batch = False
    local_views = False  # takes multi-crop's smaller views after the batch's others (pairing.local_views)
    classes = 0  # the training data's number of classes (0: unlabelled), set before `setup`

    def __init__(self):
        super().__init__()
        self.figures: dict[str, torch.Tensor] = {}  # the last forward's diagnostics, detached (none: {})

    def setup(self, encoder: nn.Module, batch_size: int) -> None:
        """Build the parts that depend on the encoder (its `output_dim`) or the batch size; called once, before
        the optimizer is made. Raises ConfigError for settings that cannot work."""

    def training_loss(self, encoder: nn.Module, batch: TupleBatch, share: BatchShare, encode: Encode
                      ) -> torch.Tensor:
        """The loss of one training step (a scalar with gradients) on this process's `share` of the batch."""
        z = embed_views(encoder, batch, encode)  # views x tuples x dim
        if self.in_batch:
            return self(distributed.gather(z, dim=1, sizes=share.sizes),
                        distributed.gather_constant(batch.target, sizes=share.sizes),
                        distributed.gather_constant(batch.labels, sizes=share.sizes))
        return self(z, batch.target, batch.labels) * share.weight

    def after_step(self, encoder: nn.Module, progress: float) -> None:
        """Called after each optimizer step; `progress` is the share of all training steps done, in (0, 1]."""


def embed_views(encoder: nn.Module, batch: TupleBatch, encode: Encode) -> torch.Tensor:
    """The embeddings of all of a batch's views, [views + local_views, tuples, dim]: the views of one size in one
    pass, multi-crop's smaller local views (if any) in another, after them."""
    z = encode(encoder, batch.images)
    return z if batch.local_images is None else torch.cat([z, encode(encoder, batch.local_images)])


@torch.no_grad()
def contrastive_figures(logits: torch.Tensor, positives: torch.Tensor, entropy: bool = True
                        ) -> dict[str, torch.Tensor]:
    """The two diagnostics of SimCLR's Table 5 (Chen et al. 2020) for one step of a loss that scores each anchor's
    candidates: `logits` [anchors, candidates] (-inf: not a candidate of that anchor), `positives` a boolean mask of
    the same shape. `contrastive_accuracy`: the share of anchors (with a positive) whose highest-scored candidate
    is a positive. `contrastive_entropy`: the mean entropy, in nats, of softmax(logits) over each anchor's
    candidates (left out with `entropy=False`: a loss without a distribution over them)."""
    has_positive = positives.any(dim=1)
    top_is_positive = positives.gather(1, logits.argmax(dim=1, keepdim=True)).squeeze(1) & has_positive
    figures = {"contrastive_accuracy": top_is_positive.sum() / has_positive.sum()}
    if entropy:
        figures["contrastive_entropy"] = torch.special.entr(logits.float().softmax(dim=1)).sum(dim=1).mean()
    return figures
