"""The pretraining loop: sample tuples, augment, encode once, loss, step; autocast (AMP) as configured.
The loop can stop at any step boundary (a signal) and continue later from a checkpoint, bit for bit."""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from cl_runner import distributed
from cl_runner.batch import BatchShare, TupleBatch
from cl_runner.checkpoint import LoopPosition, TrainingRecord
from cl_runner.distributed import World
from cl_runner.errors import UserError
from cl_runner.interruption import Interrupted
from cl_runner.monitor import Collapsed, Monitor
from cl_runner.parts import TrainingParts
from cl_runner.runtime import Compute, autocast_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopSettings:
    """How pretraining runs. compute: device, precision and memory format; log_every: steps between logged points
    (and, on a GPU, NaN checks); world: the processes of a distributed run, each training on its share of every
    global batch of `batch_size` tuples; progress_bar: off for a sweep's jobs in worker processes (the sweep draws
    one view of them all); monitor_every: epochs between the online monitor's measurements (and the last epoch);
    stop_on_collapse: end training when the monitor sees the representation collapse."""

    epochs: int
    batch_size: int
    compute: Compute = Compute()
    log_every: int = 10
    checkpoint_every: int = 1
    world: World = World()
    progress_bar: bool = True
    monitor_every: int = 0
    stop_on_collapse: bool = False


class Diverged(UserError):
    """The loss became NaN or infinite."""


def train_step(objective: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               batch: TupleBatch, compute: Compute, *, share: BatchShare | None = None, progress: float = 1.0,
               check_finite: bool = False) -> torch.Tensor | None:
    """One optimization step on a batch of tuples (this process's `share` of the global batch; by default the
    whole of it): the `objective`'s loss (an `Objective`, or one wrapped in DistributedDataParallel) encodes the
    views (in one pass by default) under the `compute`'s autocast and computes itself in fp32, then the update and
    the loss's own `after_step` (e.g. a momentum encoder's update; `progress`: share of training done after this
    step). Returns the loss, not synchronized to the host; with `check_finite` (a
    host sync), a NaN or infinite loss (on any process) is not applied and None is returned."""
    tuples = len(batch.images) // batch.views

    def encode(module: nn.Module, images: torch.Tensor) -> torch.Tensor:
        with autocast_for(compute.device, compute.precision):
            z = module(images.contiguous(memory_format=compute.memory_format))
        z = z.to(torch.promote_types(z.dtype, torch.float32))  # the loss computes in fp32 (or wider)
        return z.view(-1, tuples, z.shape[-1])  # views x tuples x dim (the batch's views, or its local views)

    loss = objective(batch, share or BatchShare.split(tuples), encode)
    if check_finite and distributed.agreed_max(int(not torch.isfinite(loss))):
        return None
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    inner = getattr(objective, "module", objective)  # DistributedDataParallel's wrapped module
    inner.loss_fn.after_step(inner.encoder, progress)
    return loss.detach()


def pretrain(parts: TrainingParts, state: LoopPosition, settings: LoopSettings, writer: SummaryWriter | None,
             stop_signal: Callable[[], int | None] = lambda: None) -> TrainingRecord:
    """Train `parts.encoder` in place from `state` up to `settings.epochs` passes over the sampler's tuples, in
    random order, stepping the learning-rate schedule (a torch LR scheduler) after every optimizer step. Each
    epoch's order draws from `parts.streams.order`, each batch's negatives and views from the sampler's streams.
    In a distributed run every process draws the same order and trains on its share of each batch; the figures
    logged (to `writer`, rank 0's) are the global batch's.

    The checkpointer saves every `settings.checkpoint_every` epochs (0: never), written in the background while
    the next epoch runs, and when `stop_signal()` names a signal (on any process: they agree at every step), which
    then ends training with `Interrupted` after the current step, once that checkpoint is whole. No write outlives
    this function: it returns, or raises, once the last one is done.
    """
    encoder, loss_fn, sampler, streams = parts.encoder, parts.loss_fn, parts.sampler, parts.streams
    world, compute = settings.world, settings.compute
    epochs, batch_size, device = settings.epochs, settings.batch_size, compute.device
    checkpointer = parts.checkpointer
    encoder.to(memory_format=compute.memory_format)
    loss_fn.to(memory_format=compute.memory_format)  # a momentum encoder, a predictor
    num_tuples = sampler.tuples_per_epoch()
    steps_per_epoch = math.ceil(num_tuples / batch_size)
    total_steps = epochs * steps_per_epoch
    finite_check_every = 1 if device.type == "cpu" else settings.log_every  # a check is a host sync on a GPU
    record = state.record
    encoder.train()
    loss_fn.train()
    bar = tqdm(total=total_steps, initial=state.epoch * steps_per_epoch + state.step_in_epoch,
               unit="step", dynamic_ncols=True, mininterval=1.0, disable=not (world.is_main and settings.progress_bar))
    start = time.perf_counter() - record.seconds
    watched: dict[str, str] = {}  # the monitor's last figures, shown on the progress bar
    with bar, nullcontext() if checkpointer is None else checkpointer:  # leaving: the last write is whole
        while state.epoch < epochs:
            if state.step_in_epoch == 0:
                state.order = torch.randperm(num_tuples, generator=streams.order, device=device)
                state.epoch_loss_sum, state.epoch_figure_sums = 0.0, {}
            epoch_loss = torch.tensor(state.epoch_loss_sum, device=device)
            figure_sums = {name: torch.tensor(value, device=device) for name, value in state.epoch_figure_sums.items()}
            window_loss, window_steps = torch.zeros((), device=device), 0
            while state.step_in_epoch < steps_per_epoch:
                first = state.step_in_epoch * batch_size
                ids = state.order[first:first + batch_size]
                share = world.share(len(ids))
                batch = sampler.batch(ids, streams, share.rows)
                loss = train_step(parts.objective, parts.optimizer, parts.scaler, batch, compute, share=share,
                                  progress=(record.steps + 1) / total_steps,
                                  check_finite=(record.steps + 1) % finite_check_every == 0)
                if loss is None:
                    _diverged(record.steps + 1, checkpointer)
                if parts.monitor is not None and parts.monitor.labelled:  # the online head learns from this batch
                    parts.monitor.step(sampler.anchor_labels(ids, share.rows))
                if parts.schedule is not None:
                    parts.schedule.step()

                state.step_in_epoch += 1
                record.steps += 1
                record.tuples += len(ids)
                record.images += (batch.views + batch.local_views) * len(ids)
                epoch_loss += loss
                for name, value in loss_fn.figures.items():
                    figure_sums[name] = figure_sums.get(name, 0.0) + value
                window_loss += loss
                window_steps += 1
                bar.update()
                if record.steps % settings.log_every == 0 or state.step_in_epoch == steps_per_epoch:
                    # the only host sync: every log_every steps
                    mean_loss = distributed.mean_over_ranks(window_loss / window_steps).item()
                    record.seconds = time.perf_counter() - start
                    if writer is not None:
                        writer.add_scalar("train/loss", mean_loss, record.steps)
                        writer.add_scalar("train/lr", parts.optimizer.param_groups[0]["lr"], record.steps)
                        writer.add_scalar("train/tuples_per_s", record.tuples_per_second, record.steps)
                    bar.set_postfix(epoch=f"{state.epoch + 1}/{epochs}", loss=f"{mean_loss:.4f}",
                                    tuples_per_s=f"{record.tuples_per_second:.0f}", **watched)
                    window_loss, window_steps = torch.zeros((), device=device), 0
                signum = distributed.agreed_max(stop_signal() or 0) or None
                if signum is not None and checkpointer is not None:
                    state.epoch_loss_sum = distributed.mean_over_ranks(epoch_loss).item()
                    state.epoch_figure_sums = {name: distributed.mean_over_ranks(value).item()
                                               for name, value in figure_sums.items()}
                    record.seconds = time.perf_counter() - start
                    raise Interrupted(signum, checkpointer.save(state, wait=True))
            record.epoch_losses.append(distributed.mean_over_ranks(epoch_loss).item() / steps_per_epoch)
            if not math.isfinite(record.epoch_losses[-1]):
                _diverged(record.steps, checkpointer)
            figures = {name: distributed.mean_over_ranks(value).item() / steps_per_epoch
                       for name, value in figure_sums.items()}
            for name, value in figures.items():
                record.epoch_figures.setdefault(name, []).append(value)
            state.epoch, state.step_in_epoch = state.epoch + 1, 0
            state.epoch_loss_sum, state.epoch_figure_sums = 0.0, {}
            record.seconds = time.perf_counter() - start
            if writer is not None:
                writer.add_scalar("train/epoch_loss", record.epoch_losses[-1], state.epoch)
                for name, value in figures.items():
                    writer.add_scalar(f"train/{name}", value, state.epoch)
            log.info("epoch %d/%d: loss %.4f%s, %.0f tuples/s", state.epoch, epochs, record.epoch_losses[-1],
                     "".join(f", {name} {value:.4f}" for name, value in figures.items()), record.tuples_per_second)
            if parts.monitor is not None and (state.epoch % settings.monitor_every == 0 or state.epoch == epochs):
                watched = watch(parts.monitor, state, writer, settings.stop_on_collapse, checkpointer)
                record.seconds = time.perf_counter() - start  # training's time includes its monitoring
            if checkpointer is not None and settings.checkpoint_every and (
                    state.epoch % settings.checkpoint_every == 0 or state.epoch == epochs):
                checkpointer.save(state)  # written while the next epoch runs
    return record


def watch(monitor: Monitor, state: LoopPosition, writer: SummaryWriter | None, stop_on_collapse: bool,
          checkpointer) -> dict[str, str]:
    """The monitor's measurement after epoch `state.epoch`: to TensorBoard (`monitor/...`), the log and (returned)
    the progress bar; a collapse warns once and, with `stop_on_collapse`, ends training with a checkpoint."""
    figures = monitor.measure()
    if writer is not None:
        for name, value in figures.items():
            writer.add_scalar(f"monitor/{name}", value, state.record.steps)
    log.info("epoch %d monitor: %s", state.epoch, ", ".join(f"{name} {value:.4f}" for name, value in figures.items()))
    if monitor.collapsed(figures) and stop_on_collapse:
        path = "none written" if checkpointer is None else checkpointer.save(state, wait=True)
        raise Collapsed(f"the representation collapsed by epoch {state.epoch} (RankMe {figures['rankme']:.2f}, "
                        f"normalized std {figures['normalized_std']:.4f}) and train.stop_on_collapse ended the run; "
                        f"its checkpoint: {path}")
    return {name: f"{figures[name]:.3f}" for name in ("knn_top1", "head_top1") if name in figures}


def _diverged(step: int, checkpointer) -> None:
    last = "none" if checkpointer is None else checkpointer.describe()
    raise Diverged(f"the training loss became NaN or infinite by step {step}; nothing after the last good "
                   f"checkpoint ({last}) was kept; lower optimizer.lr")
