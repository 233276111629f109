"""The supervised baseline beside the self-supervised methods (SimCLR, Chen et al. 2020, Table 1 and Figure 7):
the same encoder, augmentation, optimizer and schedule, trained on the labels instead of on the views' agreement,
then evaluated with the same probes."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from cl_runner.errors import ConfigError
from cl_runner.losses.base import Loss


class SupervisedLoss(Loss):
    """Cross-entropy of a linear classifier on the backbone's features, -log softmax(W h + b)_y, for every
    augmented view of each image with its class y, averaged over the views and the batch. The classifier is the
    loss's own part (it joins the optimizer, not the encoder); a projection head, which a supervised network
    does not have, is frozen at its initialization (so eval.features=projector sees it untrained). Needs the
    labels: pairing=multiview with negatives=label_aware."""

    pairings = ("multiview",)
    needs_labels = True

    def setup(self, encoder, batch_size):
        if self.classes < 2:
            raise ConfigError(f"loss=supervised needs training data of 2 classes or more, got {self.classes}")
        backbone = getattr(encoder, "backbone", None)  # None: an encoder without a head, its own backbone
        if backbone is not None:
            encoder.projector.requires_grad_(False)
        self.classifier = nn.Linear(encoder.output_dim if backbone is None else backbone.embedding_dim, self.classes)

    def training_loss(self, encoder, batch, share, encode):
        features = encode(getattr(encoder, "backbone", encoder), batch.images)  # views x tuples x width
        return self(features, None, batch.labels) * share.weight

    def forward(self, features, target=None, labels=None):
        if labels is None:
            raise ConfigError("loss=supervised needs class labels: set pairing.negatives=label_aware")
        logits = self.classifier(features.flatten(0, 1))  # the views of the batch, one after another
        return F.cross_entropy(logits, labels.repeat(features.shape[0]))
