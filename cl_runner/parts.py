"""The parts of a run, built from its config: the encoder (as initialized from the run's seed), the loss, the
sampler, the optimizer, the learning-rate schedule and the checkpointer; in a distributed run with batch
normalization over the global batch and the objective in DistributedDataParallel."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from cl_runner import distributed, randomness
from cl_runner.batch import BatchShare, TupleBatch
from cl_runner.checkpoint import Checkpointer
from cl_runner.config import LOCAL_VIEW_FIX, check_image_size
from cl_runner.data.datasets import ImageSet
from cl_runner.data.pairing import TupleSampler
from cl_runner.distributed import World
from cl_runner.errors import UserError
from cl_runner.losses import Loss
from cl_runner.monitor import Monitor
from cl_runner.optim import make_optimizer, parameter_groups
from cl_runner.evaluation.probes import Probes
from cl_runner.randomness import TrainingStreams
from cl_runner.runtime import COMPILE_AUTO, Compute, choose_fastest_kernels, compiles, make_grad_scaler

log = logging.getLogger(__name__)


class Objective(nn.Module):
    """The encoder and the loss as one module whose forward is the training loss of a batch: the unit that
    DistributedDataParallel wraps, so that it averages the gradients of the loss's own parameters (a predictor)
    along with the encoder's."""

    def __init__(self, encoder: nn.Module, loss_fn: Loss):
        super().__init__()
        self.encoder, self.loss_fn = encoder, loss_fn

    def forward(self, batch: TupleBatch, share: BatchShare, encode) -> torch.Tensor:
        return self.loss_fn.training_loss(self.encoder, batch, share, encode)


@dataclass
class TrainingParts:
    """Everything pretraining acts on, built from the config (`build_training`).
    `objective`: what computes a batch's loss (an `Objective` of `encoder` and `loss_fn`, compiled or wrapped
    in DistributedDataParallel as the run asks); `monitor`: the online monitoring (eval.monitor_every), if on."""

    encoder: nn.Module
    loss_fn: Loss
    sampler: TupleSampler
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    streams: TrainingStreams
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None
    checkpointer: Checkpointer | None = None
    objective: nn.Module | None = None
    monitor: Monitor | None = None

    def __post_init__(self):
        if self.objective is None:
            self.objective = Objective(self.encoder, self.loss_fn)


def build_training(cfg: DictConfig, train: ImageSet, device: torch.device, precision: str,
                   run_dir: Path, world: World = World(), val: ImageSet | None = None) -> TrainingParts:
    """The encoder, loss, sampler, optimizer, schedule, checkpointer and (with eval.monitor_every, on the
    validation images `val`) the monitor of a run; in a distributed run with batch norm over the global batch
    (distributed.sync_bn) and the objective in DistributedDataParallel."""
    streams = TrainingStreams.from_seed(cfg.seed, device)
    choose_fastest_kernels(device)
    encoder = build_encoder(cfg, train.images.shape[1], device)
    check_image_size(encoder, train)
    sync_bn = world.is_distributed and cfg.distributed.sync_bn
    if sync_bn:
        encoder = distributed.sync_batch_norm(encoder, device)
    sampler = instantiate(cfg.pairing)
    compiled = {part for part in COMPILE_AUTO if compiles(cfg.compile, part, device)}
    if train.images.device.type != device.type:  # the images stay in host memory: built batch by batch, eagerly
        compiled.discard("batch")
    sampler.setup(train, instantiate(cfg.aug), streams, compiled="batch" in compiled)
    if sampler.local_views:
        check_image_size(encoder, sampler.local_view_sample(), "multi-crop local views", LOCAL_VIEW_FIX)
    loss_fn = instantiate(cfg.loss)
    loss_fn.classes = len(train.classes)
    try:  # the loss's parts, the optimizer and the schedule: their own checks of the config run here
        loss_fn.setup(encoder, cfg.batch_size)
        loss_fn.to(device)
        if sync_bn:  # a predictor's batch norm
            loss_fn = distributed.sync_batch_norm(loss_fn, device)
        trained = nn.ModuleList([encoder, loss_fn])  # with the loss's own parameters (a predictor)
        optimizer = make_optimizer(instantiate(cfg.optimizer), parameter_groups(trained, cfg.optimizer.weight_decay))
        schedule = instantiate(cfg.schedule)(optimizer, steps_per_epoch=math.ceil(sampler.tuples_per_epoch() /
                                             cfg.batch_size), epochs=cfg.epochs, batch_size=cfg.batch_size)
    except ValueError as err:  # ours raise ConfigError (a ValueError); torch's optimizers a plain ValueError
        raise UserError(f"loss, optimizer or schedule: {err}") from err
    log.info("learning rate %.4g at the first step (optimizer.lr %g, scaling rule %s)", schedule.get_last_lr()[0],
             cfg.optimizer.lr, cfg.schedule.lr_scaling)
    scaler = make_grad_scaler(device, precision)
    monitor = None
    if cfg.eval.monitor_every:
        monitor = Monitor(encoder, train, val, cfg.eval.monitor_bank,
                          Probes(cfg.eval.solver, device, cosine_knn_k=cfg.eval.cosine_knn_k,
                                 cosine_knn_temperature=cfg.eval.cosine_knn_temperature))
    objective = Objective(torch.compile(encoder) if "encoder" in compiled else encoder, loss_fn)  # same weights
    if compiled:
        log.info("compiled with torch.compile: the %s (the first steps wait for the compilation)",
                 " and the ".join(sorted(compiled)))
    if world.is_distributed:  # its gradient buckets take the parameters' memory format: set it first
        objective.to(memory_format=Compute(channels_last=cfg.channels_last).memory_format)
        objective = torch.nn.parallel.DistributedDataParallel(objective)
    return TrainingParts(encoder, loss_fn, sampler, optimizer, scaler, streams, schedule,
                         Checkpointer(run_dir, {"encoder": encoder, "loss": loss_fn, "optimizer": optimizer,
                                                "scaler": scaler, "schedule": schedule, "monitor": monitor},
                                      streams, writes=world.is_main), objective, monitor)


def build_encoder(cfg: DictConfig, channels: int, device: torch.device) -> nn.Module:
    """The encoder for images of `channels` channels as initialized from the run's `init` stream: the same
    weights for every run of this seed and encoder, whatever its loss, augmentation or data order."""
    with randomness.seeded(cfg.seed, "init"):
        encoder = instantiate(cfg.encoder, backbone={"in_channels": channels})
    return encoder.to(device)


def initial_encoder(cfg: DictConfig, channels: int, device: torch.device) -> nn.Module:
    """The run's encoder as initialized, in the memory format training used: the random-initialization baseline,
    rebuilt from the seed (so that resuming needs nothing saved), equal to an `epochs=0` run's encoder."""
    return build_encoder(cfg, channels, device).to(memory_format=Compute(channels_last=cfg.channels_last).memory_format)
