"""Online monitoring (`eval.monitor_every`): while a run trains, what its representation is worth on the validation
split, every few epochs: cosine kNN accuracy against a bounded bank of training embeddings (weighted votes, Wu et
al. 2018), RankMe and uniformity (the collapse indicators of the final evaluation), and the accuracy of a linear
head trained alongside the encoder on its detached backbone features with an optimizer of its own (the online
linear evaluation of solo-learn and lightly). The head never sends a gradient into the encoder, so monitoring does
not change what trains. Everything reads the backbone's features of clean images, the encoder in eval mode."""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from cl_runner import evaluation
from cl_runner.data.datasets import ImageSet
from cl_runner.errors import UserError
from cl_runner.evaluation.probes import Probes

log = logging.getLogger(__name__)

COLLAPSE_RANKME = 1.5  # an effective rank below this: the embeddings span about one direction
COLLAPSE_STD = 0.1  # normalized std below this times 1/sqrt(D), a tenth of spread-out embeddings' (Chen & He 2021)
HEAD_LR, HEAD_MOMENTUM = 0.1, 0.9  # the online head's SGD, as solo-learn's online classifier


class Collapsed(UserError):
    """The representation collapsed while training and `train.stop_on_collapse` ended the run."""


class Monitor:
    """Watches `encoder` on `val` (the monitor set), with a bank of the first `bank` images of `train`. `step`
    trains the online head on the anchors of the batch just trained on (their backbone features are caught by a
    forward hook during the training forward pass: no second pass); `measure` embeds and scores."""

    def __init__(self, encoder: nn.Module, train: ImageSet, val: ImageSet, bank: int, probes: Probes):
        self.encoder, self.val, self.probes = encoder, val, probes
        self.bank = ImageSet(train.images[:bank], None if train.labels is None else train.labels[:bank],
                             train.classes)
        self.labelled = train.labelled and val.labelled
        self.head = nn.Linear(encoder.backbone.embedding_dim, len(train.classes)).to(train.images.device) \
            if self.labelled else None
        self.optimizer = torch.optim.SGD(self.head.parameters(), lr=HEAD_LR, momentum=HEAD_MOMENTUM) \
            if self.head is not None else None
        self.caught: torch.Tensor | None = None
        self.warned = False
        encoder.backbone.register_forward_hook(self._catch)

    def _catch(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        if module.training and self.head is not None:
            self.caught = output.detach()

    def step(self, labels: torch.Tensor) -> None:
        """One step of the online head on the first len(labels) rows of the features just caught (the batch's
        first view: its anchors), in float32, outside autocast."""
        if self.head is None or self.caught is None:
            return
        features, self.caught = self.caught[:len(labels)].float(), None
        loss = F.cross_entropy(self.head(features), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def measure(self) -> dict[str, float]:
        """The monitor's figures now: `knn_top1` and `head_top1` (labelled data), `rankme`, `normalized_std`,
        `uniformity`."""
        val_x = evaluation.embed(self.encoder, self.val.images)
        figures = {name: value for name, value in evaluation.diagnostics(val_x, self.probes.device).items()
                   if name in ("rankme", "normalized_std", "uniformity")}
        if self.labelled:
            bank_x = evaluation.embed(self.encoder, self.bank.images)
            val_y = self.val.labels.cpu().numpy()
            figures["knn_top1"] = self.probes.cosine_knn(bank_x, self.bank.labels.cpu().numpy(), val_x, val_y,
                                                         len(self.val.classes))
            with torch.no_grad():
                predicted = self.head(torch.from_numpy(val_x).to(self.head.weight.device)).argmax(1)
            figures["head_top1"] = float((predicted.cpu() == self.val.labels.cpu()).float().mean())
        return figures

    def collapsed(self, figures: dict[str, float]) -> bool:
        """Whether `figures` show a collapse: RankMe below COLLAPSE_RANKME, or the normalized std below
        COLLAPSE_STD / sqrt(D). Warns once, in one line, the first time."""
        dim = self.encoder.backbone.embedding_dim
        collapsed = figures["rankme"] < COLLAPSE_RANKME or figures["normalized_std"] < COLLAPSE_STD / math.sqrt(dim)
        if collapsed and not self.warned:
            self.warned = True
            log.warning("the representation has collapsed: RankMe %.2f (below %.1f means about one direction), "
                        "normalized std %.4f (spread-out %d-d embeddings give about %.4f)", figures["rankme"],
                        COLLAPSE_RANKME, figures["normalized_std"], dim, 1 / math.sqrt(dim))
        return collapsed

    def state_dict(self) -> dict | None:
        if self.head is None:
            return None
        return {"head": self.head.state_dict(), "optimizer": self.optimizer.state_dict(), "warned": self.warned}

    def load_state_dict(self, state: dict | None) -> None:
        if state is None or self.head is None:
            return
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.warned = state["warned"]
