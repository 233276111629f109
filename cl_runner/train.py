"""The pretraining loop: sample tuples, augment, encode once, loss, step; AMP on CUDA, fp32 on CPU."""
from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from cl_runner.data.pairing import TupleSampler
from cl_runner.errors import UserError

log = logging.getLogger(__name__)
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainStats:
    """What pretraining measured: wall time, work done, and the mean loss of every epoch."""

    seconds: float = 0.0
    steps: int = 0
    tuples: int = 0
    images: int = 0
    epoch_losses: list[float] = field(default_factory=list)

    @property
    def tuples_per_second(self) -> float:
        return self.tuples / self.seconds if self.seconds else 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def autocast_for(device: torch.device, precision: str):
    """bf16/fp16 autocast on CUDA; a no-op context on CPU and for fp32 (the same code runs on both)."""
    if device.type != "cuda" or precision not in AUTOCAST_DTYPES:
        return nullcontext()
    return torch.autocast(device_type="cuda", dtype=AUTOCAST_DTYPES[precision])


def pretrain(encoder: nn.Module, loss_fn: nn.Module, sampler: TupleSampler, optimizer: torch.optim.Optimizer, *,
             epochs: int, batch_size: int, device: torch.device, precision: str, generator: torch.Generator,
             writer: SummaryWriter, log_every: int = 10, channels_last: bool = True) -> TrainStats:
    """Train `encoder` in place for `epochs` passes over the sampler's tuples, in random order.
    channels_last: NHWC memory format for encoder and inputs (faster convolutions on CPU and on tensor cores)."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    encoder.to(memory_format=memory_format)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and precision == "fp16")
    num_tuples = sampler.tuples_per_epoch()
    steps_per_epoch = math.ceil(num_tuples / batch_size)
    stats = TrainStats()
    encoder.train()
    progress = tqdm(total=epochs * steps_per_epoch, unit="step", dynamic_ncols=True, mininterval=1.0)
    start = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(num_tuples, generator=generator, device=device)
        epoch_loss = torch.zeros((), device=device)
        window_loss, window_steps = torch.zeros((), device=device), 0
        for first in range(0, num_tuples, batch_size):
            ids = order[first:first + batch_size]
            batch = sampler.batch(ids, generator)
            with autocast_for(device, precision):
                z = encoder(batch.images.contiguous(memory_format=memory_format))
            loss = loss_fn(z.float().view(batch.views, len(ids), -1), batch.target)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

            stats.steps += 1
            stats.tuples += len(ids)
            stats.images += len(batch.images)
            epoch_loss += loss.detach()
            window_loss += loss.detach()
            window_steps += 1
            progress.update()
            if stats.steps % log_every == 0 or first + batch_size >= num_tuples:
                mean_loss = (window_loss / window_steps).item()  # the only host sync: every log_every steps
                _check_finite(mean_loss, stats.steps)
                stats.seconds = time.perf_counter() - start
                writer.add_scalar("train/loss", mean_loss, stats.steps)
                writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], stats.steps)
                writer.add_scalar("train/tuples_per_s", stats.tuples_per_second, stats.steps)
                progress.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{mean_loss:.4f}",
                                     tuples_per_s=f"{stats.tuples_per_second:.0f}")
                window_loss, window_steps = torch.zeros((), device=device), 0
        stats.epoch_losses.append((epoch_loss / steps_per_epoch).item())
        writer.add_scalar("train/epoch_loss", stats.epoch_losses[-1], epoch + 1)
        log.info("epoch %d/%d: loss %.4f, %.0f tuples/s", epoch + 1, epochs, stats.epoch_losses[-1],
                 stats.tuples_per_second)
    progress.close()
    stats.seconds = time.perf_counter() - start
    return stats


def _check_finite(loss: float, step: int) -> None:
    if not math.isfinite(loss):
        raise UserError(f"the training loss became {loss} by step {step}; lower optimizer.lr or check the data")
