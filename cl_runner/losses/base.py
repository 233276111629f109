"""The contract between a loss and the training loop, so that the loop stays the same for every method.

A loss sees the encoder and the batch through `training_loss(encoder, batch, share, encode)`. The default encodes
all views in one pass and calls `forward(z, target, labels)` with z [views, tuples, dim] (fp32), `target` the +1/-1
pair labels (pairs only) and `labels` the tuples' classes where the pairing passes them. Methods with parts of
their own (a predictor, a momentum encoder, a queue) build them in `setup`, use them in `training_loss` and
update them in `after_step`; their parameters join the optimizer and their state goes into checkpoints.

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
    `two_views` (exactly two views per image); `in_batch`: the loss of a tuple depends on the batch's other
    tuples, so a distributed run gathers the global batch's embeddings for it."""

    pairings: tuple[str, ...] = ()
    needs_labels = False
    two_views = False
    in_batch = False

    def setup(self, encoder: nn.Module, batch_size: int) -> None:
        """Build the parts that depend on the encoder (its `output_dim`) or the batch size; called once, before
        the optimizer is made. Raises ConfigError for settings that cannot work."""

    def training_loss(self, encoder: nn.Module, batch: TupleBatch, share: BatchShare, encode: Encode
                      ) -> torch.Tensor:
        """The loss of one training step (a scalar with gradients) on this process's `share` of the batch."""
        z = encode(encoder, batch.images)  # views x tuples x dim
        if self.in_batch:
            return self(distributed.gather(z, dim=1, sizes=share.sizes),
                        distributed.gather_constant(batch.target, sizes=share.sizes),
                        distributed.gather_constant(batch.labels, sizes=share.sizes))
        return self(z, batch.target, batch.labels) * share.weight

    def after_step(self, encoder: nn.Module, progress: float) -> None:
        """Called after each optimizer step; `progress` is the share of all training steps done, in (0, 1]."""
