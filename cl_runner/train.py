"""The pretraining loop: sample tuples, augment, encode once, loss, step; autocast (AMP) as configured.
The loop can stop at any step boundary (a signal) and continue later from a checkpoint, bit for bit."""
from __future__ import annotations

import logging
import math
import os
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from cl_runner import distributed
from cl_runner.checkpoint import Checkpointer, TrainState, TrainStats
from cl_runner.data.pairing import TupleBatch, TupleSampler
from cl_runner.distributed import BatchShare, World
from cl_runner.errors import UserError
from cl_runner.losses import Loss
from cl_runner.randomness import TrainingStreams

log = logging.getLogger(__name__)
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Objective(nn.Module):
    """The encoder and the loss as one module whose forward is the training loss of a batch: the unit that
    DistributedDataParallel wraps, so that it averages the gradients of the loss's own parameters (a predictor)
    along with the encoder's."""

    def __init__(self, encoder: nn.Module, loss_fn: Loss):
        super().__init__()
        self.encoder, self.loss_fn = encoder, loss_fn

    def forward(self, batch: TupleBatch, encode) -> torch.Tensor:
        return self.loss_fn.training_loss(self.encoder, batch, encode)


@dataclass
class TrainingParts:
    """Everything pretraining acts on, built from the config (cl_runner.experiment.build_training).
    `objective`: what computes a batch's loss (an `Objective` of `encoder` and `loss_fn`, compiled or wrapped
    in DistributedDataParallel as the run asks)."""

    encoder: nn.Module
    loss_fn: Loss
    sampler: TupleSampler
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    streams: TrainingStreams
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None
    checkpointer: Checkpointer | None = None
    objective: nn.Module | None = None

    def __post_init__(self):
        if self.objective is None:
            self.objective = Objective(self.encoder, self.loss_fn)


@dataclass(frozen=True)
class TrainSettings:
    """How pretraining runs. channels_last: NHWC memory format for encoder and inputs (faster convolutions on CPU
    and tensor cores); log_every: steps between logged points (and, on a GPU, NaN checks); world: the processes
    of a distributed run, each training on its share of every global batch of `batch_size` tuples."""

    epochs: int
    batch_size: int
    device: torch.device = torch.device("cpu")
    precision: str = "fp32"
    log_every: int = 10
    channels_last: bool = True
    checkpoint_every: int = 1
    world: World = World()


class Interrupted(BaseException):
    """Training stopped on a signal after writing a checkpoint (a BaseException: it ends a whole sweep)."""

    def __init__(self, signum: int, checkpoint: str):
        super().__init__(f"stopped by signal {signum}; checkpoint {checkpoint}")
        self.signum, self.checkpoint = signum, checkpoint

    def __reduce__(self):  # rebuilt from its fields when a worker process hands it to the sweep's process
        return Interrupted, (self.signum, self.checkpoint)


class Diverged(UserError):
    """The loss became NaN or infinite."""


class SignalStop:
    """While active, SIGINT and SIGTERM only set a flag, so the loop can finish its step and checkpoint;
    calling the object returns the signal received (or None). A second Ctrl-C stops at once.

    Under a cluster launcher that handles SIGUSR2 itself (submitit: SLURM's warning before a time limit or a
    preemption), SIGUSR2 stops the run the same way, and `hand_on` then passes it to that handler, which requeues
    the job; the requeued job resumes from the checkpoint.

    With `parent` (a pid), the run also stops, as if sent SIGHUP, once that process is gone: a sweep job in a
    local worker process (joblib) ends with its checkpoint when its sweep is killed, instead of running on."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    CLUSTER_SIGNAL = signal.SIGUSR2

    def __init__(self, parent: int | None = None):
        self.parent = parent

    def __enter__(self) -> "SignalStop":
        self.signum = None
        self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        if callable(signal.getsignal(self.CLUSTER_SIGNAL)):  # a Python handler: a launcher's own
            self.previous[self.CLUSTER_SIGNAL] = signal.signal(self.CLUSTER_SIGNAL, self._handle)
        return self

    def hand_on(self, signum: int) -> None:
        """Pass the cluster's warning signal to the launcher's handler (after the run has checkpointed)."""
        handler = self.previous.get(signum)
        if signum == self.CLUSTER_SIGNAL and callable(handler):
            handler(signum, None)

    def _handle(self, signum: int, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def __call__(self) -> int | None:
        if self.signum is None and self.parent is not None and os.getppid() != self.parent:
            self.signum = signal.SIGHUP  # orphaned: the parent died without a word
        return self.signum


def autocast_for(device: torch.device, precision: str):
    """bf16/fp16 autocast on the run's device (see `resolve_precision`); a no-op context for fp32, so the same
    code runs either way."""
    if precision not in AUTOCAST_DTYPES:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


def make_grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling for fp16 autocast on CUDA only; a pass-through otherwise."""
    return torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and precision == "fp16")


def train_step(objective: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               batch: TupleBatch, *, device: torch.device, precision: str, memory_format: torch.memory_format,
               progress: float = 1.0, check_finite: bool = False) -> torch.Tensor | None:
    """One optimization step on a batch of tuples: the `objective`'s loss (an `Objective`, or one wrapped in
    DistributedDataParallel) encodes the views (in one pass by default) under autocast and computes itself in
    fp32, then the update and the loss's own `after_step` (e.g. a momentum encoder's update; `progress`: share
    of training done after this step). Returns the loss, not synchronized to the host; with `check_finite` (a
    host sync), a NaN or infinite loss (on any process) is not applied and None is returned."""
    def encode(module: nn.Module, images: torch.Tensor) -> torch.Tensor:
        with autocast_for(device, precision):
            z = module(images.contiguous(memory_format=memory_format))
        z = z.to(torch.promote_types(z.dtype, torch.float32))  # the loss computes in fp32 (or wider)
        return z.view(batch.views, -1, z.shape[-1])  # views x tuples x dim

    loss = objective(batch, encode)
    if check_finite and distributed.agreed_max(int(not torch.isfinite(loss))):
        return None
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    inner = getattr(objective, "module", objective)  # DistributedDataParallel's wrapped module
    inner.loss_fn.after_step(inner.encoder, progress)
    return loss.detach()


def pretrain(parts: TrainingParts, state: TrainState, settings: TrainSettings, writer: SummaryWriter | None,
             stop_signal: Callable[[], int | None] = lambda: None) -> TrainStats:
    """Train `parts.encoder` in place from `state` up to `settings.epochs` passes over the sampler's tuples, in
    random order, stepping the learning-rate schedule (a torch LR scheduler) after every optimizer step. Each
    epoch's order draws from `parts.streams.order`, each batch's negatives and views from the sampler's streams.
    In a distributed run every process draws the same order and trains on its share of each batch; the figures
    logged (to `writer`, rank 0's) are the global batch's.

    The checkpointer saves every `settings.checkpoint_every` epochs (0: never) and when `stop_signal()` names a
    signal (on any process: they agree at every step), which then ends training with `Interrupted` after the
    current step.
    """
    encoder, loss_fn, sampler, streams = parts.encoder, parts.loss_fn, parts.sampler, parts.streams
    world = settings.world
    epochs, batch_size, device = settings.epochs, settings.batch_size, settings.device
    checkpointer = parts.checkpointer
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    encoder.to(memory_format=memory_format)
    loss_fn.to(memory_format=memory_format)  # a momentum encoder, a predictor
    num_tuples = sampler.tuples_per_epoch()
    steps_per_epoch = math.ceil(num_tuples / batch_size)
    total_steps = epochs * steps_per_epoch
    finite_check_every = 1 if device.type == "cpu" else settings.log_every  # a check is a host sync on a GPU
    stats = state.stats
    encoder.train()
    loss_fn.train()
    bar = tqdm(total=total_steps, initial=state.epoch * steps_per_epoch + state.step_in_epoch,
               unit="step", dynamic_ncols=True, mininterval=1.0, disable=not world.is_main)
    start = time.perf_counter() - stats.seconds
    try:
        while state.epoch < epochs:
            if state.step_in_epoch == 0:
                state.order = torch.randperm(num_tuples, generator=streams.order, device=device)
                state.epoch_loss_sum = 0.0
            epoch_loss = torch.tensor(state.epoch_loss_sum, device=device)
            window_loss, window_steps = torch.zeros((), device=device), 0
            while state.step_in_epoch < steps_per_epoch:
                first = state.step_in_epoch * batch_size
                ids = state.order[first:first + batch_size]
                batch = sampler.batch(ids, streams, BatchShare.split(len(ids), world))
                loss = train_step(parts.objective, parts.optimizer, parts.scaler, batch, device=device,
                                  precision=settings.precision,
                                  memory_format=memory_format, progress=(stats.steps + 1) / total_steps,
                                  check_finite=(stats.steps + 1) % finite_check_every == 0)
                if loss is None:
                    _diverged(stats.steps + 1, checkpointer)
                if parts.schedule is not None:
                    parts.schedule.step()

                state.step_in_epoch += 1
                stats.steps += 1
                stats.tuples += len(ids)
                stats.images += batch.views * len(ids)
                epoch_loss += loss
                window_loss += loss
                window_steps += 1
                bar.update()
                if stats.steps % settings.log_every == 0 or state.step_in_epoch == steps_per_epoch:
                    # the only host sync: every log_every steps
                    mean_loss = distributed.mean_over_ranks(window_loss / window_steps).item()
                    stats.seconds = time.perf_counter() - start
                    if writer is not None:
                        writer.add_scalar("train/loss", mean_loss, stats.steps)
                        writer.add_scalar("train/lr", parts.optimizer.param_groups[0]["lr"], stats.steps)
                        writer.add_scalar("train/tuples_per_s", stats.tuples_per_second, stats.steps)
                    bar.set_postfix(epoch=f"{state.epoch + 1}/{epochs}", loss=f"{mean_loss:.4f}",
                                    tuples_per_s=f"{stats.tuples_per_second:.0f}")
                    window_loss, window_steps = torch.zeros((), device=device), 0
                signum = distributed.agreed_max(stop_signal() or 0) or None
                if signum is not None and checkpointer is not None:
                    state.epoch_loss_sum = distributed.mean_over_ranks(epoch_loss).item()
                    stats.seconds = time.perf_counter() - start
                    raise Interrupted(signum, checkpointer.save(state))
            stats.epoch_losses.append(distributed.mean_over_ranks(epoch_loss).item() / steps_per_epoch)
            if not math.isfinite(stats.epoch_losses[-1]):
                _diverged(stats.steps, checkpointer)
            state.epoch, state.step_in_epoch, state.epoch_loss_sum = state.epoch + 1, 0, 0.0
            stats.seconds = time.perf_counter() - start
            if writer is not None:
                writer.add_scalar("train/epoch_loss", stats.epoch_losses[-1], state.epoch)
            log.info("epoch %d/%d: loss %.4f, %.0f tuples/s", state.epoch, epochs, stats.epoch_losses[-1],
                     stats.tuples_per_second)
            if checkpointer is not None and settings.checkpoint_every and (
                    state.epoch % settings.checkpoint_every == 0 or state.epoch == epochs):
                checkpointer.save(state)
    finally:
        bar.close()
    return stats


def _diverged(step: int, checkpointer) -> None:
    last = "none" if checkpointer is None else checkpointer.describe()
    raise Diverged(f"the training loss became NaN or infinite by step {step}; nothing after the last good "
                   f"checkpoint ({last}) was kept; lower optimizer.lr")
