"""Embeddings for the evaluation: the frozen encoder's, of clean images (and of one augmented view of the first
test images, for alignment), computed once per encoder in one phase, sharded over a distributed run's processes."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from cl_runner import distributed, randomness
from cl_runner.data.augment import normalize, to_unit
from cl_runner.data.datasets import ImageSet, Splits
from cl_runner.distributed import World


@torch.inference_mode()
def embed(encoder: nn.Module, images: torch.Tensor, features: str = "backbone", batch_size: int = 1024,
          world: World = World()) -> np.ndarray:
    """Embeddings [N, D] (float32, on the host) of clean uint8 images, the encoder in eval mode (BatchNorm
    uses its running statistics, nothing is updated); `features`: the backbone's, or the projector's output.
    In a distributed run (`world`) each process embeds its contiguous shard and every process receives all."""
    if world.is_distributed:
        share = world.share(len(images))
        mine = torch.from_numpy(embed(encoder, images[share.rows], features, batch_size))
        return distributed.gather_constant(mine, sizes=share.sizes).numpy()
    was_training = encoder.training
    encoder.train(False)  # eval mode: BatchNorm uses its running statistics
    device = next(encoder.parameters()).device  # images kept in host memory travel a batch at a time
    chunks = [encoder.features(normalize(to_unit(images[i:i + batch_size].to(device))), features).float().cpu()
              for i in range(0, len(images), batch_size)]
    encoder.train(was_training)
    return torch.cat(chunks).numpy()




@dataclass
class Embeddings:
    """What the evaluation reads of the encoders: the trained encoder's embeddings of the test images, of the
    probe's training images (standard protocol, validation), of one augmented view of the first test images
    (alignment) and of the validation images; and, for the random-encoder baseline, the initialization's of the
    test, probe and validation images."""

    test: np.ndarray
    probe: np.ndarray | None
    views: np.ndarray
    val: np.ndarray | None = None
    initial_test: np.ndarray | None = None
    initial_probe: np.ndarray | None = None
    initial_val: np.ndarray | None = None


def alignment_views(augment: Callable, test: ImageSet, seed: int, device: torch.device, points: int = 2000
                    ) -> torch.Tensor:
    """One view (uint8), made on `device`, of each of the first test images, drawn by the run's own augmentation
    (`augment(images, generator)`, seeded, so it is the same for every run of that augmentation): their
    embeddings' alignment (Wang & Isola 2020) with the clean images' is a diagnostic."""
    images = test.take(torch.arange(min(points, len(test)), device=device))
    generator = randomness.generator(seed, "alignment", device)
    return augment(images, generator).mul(255).round_().to(torch.uint8)
