"""The protocols that train a classifier on labelled images, augmented on the device by random resized crop and
horizontal flip: `linear_aug`, a linear head on the frozen encoder (the field's linear evaluation, as solo-learn
and lightly report CIFAR figures), and `finetune`, the whole encoder and a linear head (SimCLR's semi-supervised
protocol, Chen et al. 2020, appendix B.5). Both train on the labelled share of the probe set
(`eval.label_fraction`), with their recipe's fixed settings (nothing is chosen on the test set), checkpoint at the
end of every epoch, and score the clean test images once at the end.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from cl_runner.data.augment import Pipeline, normalize
from cl_runner.data.augment.geometry import HorizontalFlip, RandomResizedCrop
from cl_runner.evaluation.embeddings import embed
from cl_runner.evaluation.probes import classification_figures
from cl_runner.evaluation.protocol import Context, Encoded, Protocol
from cl_runner.randomness import generator, seeded
from cl_runner.runtime import autocast_for, make_grad_scaler


@dataclass(frozen=True)
class Recipe:
    """How a classifier is trained: SGD with `momentum` (Nesterov's with `nesterov`) and `weight_decay`, a cosine
    decay of `lr` to 0 over `epochs` passes, `batch_size` labelled images a step."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    nesterov: bool = False


def batches(order: torch.Tensor, size: int) -> list[torch.Tensor]:
    """`order` in batches of `size`, a last batch of one image joined to the one before (BatchNorm cannot train on
    a single image)."""
    split = list(order.split(size))
    if len(split) > 1 and len(split[-1]) == 1:
        split[-2:] = [torch.cat(split[-2:])]
    return split


def crop_and_flip() -> Pipeline:
    """The protocols' augmentation: torchvision's RandomResizedCrop (scale 0.08-1) and a horizontal flip (p 0.5)."""
    return Pipeline([RandomResizedCrop(), HorizontalFlip()], ("crop", "flip"))


class ClassifierTraining(Protocol):
    """A protocol that trains a linear head (and, for `finetune`, the encoder) with its `recipe`."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe

    @classmethod
    def from_settings(cls, settings: DictConfig) -> "ClassifierTraining":
        return cls(Recipe(**settings[cls.name]))

    def head(self, encoded: Encoded, context: Context) -> nn.Linear:
        """The linear head, initialized from its own stream (the same for the trained encoder and its baseline)."""
        with seeded(context.seed, f"{self.name}/head"):
            return nn.Linear(encoded.test.shape[1], context.num_classes).to(context.device)

    def fit(self, trainable: nn.Module, logits: Callable[[torch.Tensor], torch.Tensor], encoded: Encoded,
            context: Context) -> list[float]:
        """Train `trainable` (its parameters that require gradients) to minimize the cross-entropy of
        `logits(images)` on the labelled images, from the protocol's last checkpoint when there is one; returns
        the mean loss of every epoch."""
        recipe, progress, device = self.recipe, context.progress, context.device
        labelled = context.labelled_probe()
        steps = len(batches(torch.arange(len(labelled)), recipe.batch_size))
        optimizer = torch.optim.SGD([p for p in trainable.parameters() if p.requires_grad], lr=recipe.lr,
                                    momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                                    nesterov=recipe.nesterov)
        total = max(1, recipe.epochs * steps)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step /
                                                                                                  total)))
        scaler = make_grad_scaler(device, context.compute.precision)
        losses: list[float] = []
        saved = progress.restore(self.name, encoded.tag)
        if saved is not None:
            trainable.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            schedule.load_state_dict(saved["schedule"])
            losses = list(saved["losses"])
        augment = crop_and_flip()
        for epoch in range(len(losses), recipe.epochs):
            order = torch.randperm(len(labelled), generator=generator(context.seed, f"{self.name}/order/{epoch}"))
            draws = generator(context.seed, f"{self.name}/augment/{epoch}", device)
            epoch_loss = torch.zeros((), device=device)  # summed on the device: no wait for the loss each step
            for batch in batches(order.to(device), recipe.batch_size):
                progress.stop_if_signalled(self.name, encoded.tag)
                images = normalize(augment(labelled.take(batch), draws))
                with autocast_for(device, context.compute.precision):
                    loss = F.cross_entropy(logits(images.contiguous(memory_format=context.compute.memory_format))
                                           .float(), labelled.labels.index_select(0, batch.to(labelled.labels.device))
                                           .to(device))
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                schedule.step()
                epoch_loss += loss.detach() * len(batch)
            losses.append(float(epoch_loss) / len(labelled))
            progress.save(self.name, encoded.tag, {"model": trainable.state_dict(), "optimizer": optimizer.state_dict(),
                                                   "schedule": schedule.state_dict(), "losses": losses})
        return losses

    def figures(self, scores: torch.Tensor, losses: list[float], context: Context, prefix: str) -> dict:
        """The figures of the test images' `scores`, with the epochs' losses and the number of labelled images."""
        labels = context.data.test.labels.to(scores.device)
        return {**classification_figures(scores, labels, context.num_classes, prefix), "scored_images": len(labels),
                "labelled_images": len(context.labelled), "epoch_losses": losses}


class LinearAug(ClassifierTraining):
    """A linear head trained by SGD on the frozen encoder's features of augmented images (the encoder stays in
    eval mode: BatchNorm uses its running statistics and no weight changes); the test set scored on its clean
    embeddings."""

    name = "linear_aug"
    summary = (("linear_top1", "linear_aug"),)

    def evaluate(self, encoded: Encoded, context: Context) -> dict:
        head, encoder, features = self.head(encoded, context), encoded.encoder, context.settings.features
        was_training = encoder.training
        encoder.train(False)

        def logits(images: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                x = encoder.features(images, features).float()
            return head(x)

        try:
            losses = self.fit(head, logits, encoded, context)
        finally:
            encoder.train(was_training)
        with torch.no_grad():
            scores = head(torch.from_numpy(encoded.test).to(context.device)).softmax(1)
        return self.figures(scores, losses, context, "linear_")


class Finetune(ClassifierTraining):
    """The whole encoder (a copy: the run's own stays as it was) and a linear head on its features, trained
    together with the cross-entropy (BatchNorm in training mode); the test set scored by the fine-tuned copy."""

    name = "finetune"
    summary = (("top1", "finetune"),)

    def evaluate(self, encoded: Encoded, context: Context) -> dict:
        tuned, losses = self.tune(encoded, context)
        test_x = torch.from_numpy(embed(tuned["encoder"], context.data.test.images, context.settings.features))
        with torch.no_grad():
            scores = tuned["head"](test_x.to(context.device)).softmax(1)
        return self.figures(scores, losses, context, "")

    def tune(self, encoded: Encoded, context: Context) -> tuple[nn.ModuleDict, list[float]]:
        """The fine-tuned copy of the encoder (`encoder`) with its linear head (`head`), and the epochs' losses."""
        features = context.settings.features
        tuned = nn.ModuleDict({"encoder": copy.deepcopy(encoded.encoder), "head": self.head(encoded, context)})
        for parameter in tuned.parameters():
            parameter.requires_grad_(True)
        tuned.train(True)
        losses = self.fit(tuned, lambda images: tuned["head"](tuned["encoder"].features(images, features).float()),
                          encoded, context)
        return tuned, losses
