"""One run over several processes (torchrun; one per GPU, or gloo processes on a CPU): who this process is, the
process group, each process's part of a step's global batch, and the gathers that let an in-batch loss (and
batch normalization) see the whole global batch.

The gathers' backward follows the scheme that makes N ranks equal one process (solo-learn's GatherLayer;
lightly's issue 1528 is what goes wrong otherwise): every rank's objective depends on every rank's part, so the
backward sums the ranks' gradients for all parts and hands each rank the sum for its own part, and
DistributedDataParallel's average over the N ranks then leaves every parameter with the one-process gradient of
the mean of the ranks' objectives. Per-tuple losses are weighted (`BatchShare.weight`) so that this mean is the
mean over the global batch even when the parts differ in size (an epoch's last batch)."""
from __future__ import annotations

import datetime
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import nn

from cl_runner.batch import BatchShare
from cl_runner.errors import UserError

COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)  # a collective that waits longer ends the run (a hung rank)


@dataclass(frozen=True)
class World:
    """This process's place in the run: `rank` of `size` processes, `local_rank` on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run folder."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.size > 1

    @classmethod
    def from_env(cls) -> "World":
        """The world torchrun (or SLURM through submitit) describes in RANK, WORLD_SIZE and LOCAL_RANK."""
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))

    def __str__(self) -> str:
        return f"rank {self.rank} of {self.size}"

    def share(self, total: int) -> BatchShare:
        """This process's contiguous part of `total` rows (a step's tuples, the images to embed)."""
        return BatchShare.split(total, self.size, self.rank)


def cluster_world() -> World:
    """The world of a job that a cluster launcher runs as several tasks (Hydra's submitit launcher with
    tasks_per_node > 1, on SLURM or locally), as submitit describes it, exported for the process group's env://
    rendezvous (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK) as torchrun would; one process else."""
    try:
        import submitit
        tasks = submitit.JobEnvironment().num_tasks
    except (ImportError, RuntimeError):  # not a submitit job
        return World()
    if tasks < 2:
        return World()
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return World.from_env()


def join(world: World) -> None:
    """Join the run's process group (gloo between CPU tensors, nccl between CUDA ones, where CUDA exists), through
    the rendezvous torchrun describes in MASTER_ADDR and MASTER_PORT."""
    if world.is_distributed and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(world.local_rank % torch.cuda.device_count())
        dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo",
                                timeout=COLLECTIVE_TIMEOUT)


class RankFailed(UserError):
    """A process of the run failed where every process takes the same step (setup): all of them stop, and rank 0
    alone says why (the failing rank's message; its traceback, for a bug, is in its own output)."""


class PeerLost(UserError):
    """Another process of the run ended (killed, or crashed) while this one waited for it in a collective."""


@contextmanager
def together(world: World) -> Iterator[None]:
    """Every process runs the block; then they compare outcomes, so that an error on any of them ends all of
    them instead of leaving the others waiting: rank 0 raises its own error, or `RankFailed` with the first
    failing rank's message; every other rank raises `RankFailed` (from its own error where it had one), which it
    does not report: rank 0 does."""
    if not world.is_distributed:
        yield
        return
    try:
        yield
    except Exception as err:
        failed = _outcome(world, str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}")
        if world.is_main:
            raise
        raise failed from err
    failed = _outcome(world, None)
    if failed is not None:
        raise failed


def _outcome(world: World, failure: str | None) -> RankFailed | None:
    """Every rank's failure (or None) gathered: the first failing rank's, as the error every rank raises."""
    outcomes: list = [None] * world.size
    dist.all_gather_object(outcomes, failure)
    failed = [(rank, message) for rank, message in enumerate(outcomes) if message is not None]
    if not failed:
        return None
    rank, message = failed[0]
    return RankFailed(message if rank == 0 else f"rank {rank} of {world.size}: {message}")


def lost_peer(err: BaseException) -> bool:
    """Whether `err` is a collective failing because another process of the run went away (gloo's reset or
    closed connection, nccl's remote error, a timeout)."""
    text = str(err)
    return active() and (isinstance(err, dist.DistError) or any(
        clue in text for clue in ("Connection reset", "Connection closed", "Broken pipe", "remote process",
                                  "Timed out", "timed out", "NCCL error")))


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def end_process(code: int) -> NoReturn:
    """End this process of a distributed run with exit status `code`, once its logs and streams are flushed,
    without finalizing the interpreter.

    The process group's worker threads outlive `leave()` once a DistributedDataParallel model was built (measured
    with torch 2.14: gloo's threads still run after destroy_process_group), so they run on while the interpreter
    finalizes. One that takes the GIL then (to free a tensor that Python made, as a collective's work lets go of
    it, or to run a callback) is ended by Python with pthread_exit, whose unwinding through torch's noexcept code
    aborts the process: "terminate called without an active exception", SIGABRT, and torchrun stops the other
    processes (tests/test_distributed_exit.py makes it happen on cue). Ending here leaves nothing to finalize."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def wait_for_the_others() -> None:
    """Until every process of the run is here too (one that has ended lets the others go on)."""
    if active():
        try:
            dist.barrier()
        except (RuntimeError, dist.DistError):  # a process gone: nobody left to wait for
            pass


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast(value, world: World):
    """Rank 0's `value` (any picklable object) on every rank."""
    if not world.is_distributed:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def agreed_max(value: int) -> int:
    """The largest of the ranks' `value`s (e.g. a signal number, or 1 for a rank that saw a NaN), on every rank:
    so that all ranks stop, or skip, at the same step. A CPU tensor: gloo carries it, no GPU sync."""
    if not active():
        return value
    flag = torch.tensor([value])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """The mean over the ranks of a (detached) tensor."""
    if not active():
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()


class _GatherWithGradient(torch.autograd.Function):
    """all_gather forward; backward: the sum over ranks of the gradients of all parts, this rank's part kept."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return tuple(parts)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> torch.Tensor:
        summed = torch.stack(grads)
        dist.all_reduce(summed)
        return summed[dist.get_rank()]


def gather(x: torch.Tensor, dim: int = 0, sizes: tuple[int, ...] | None = None) -> torch.Tensor:
    """Every rank's `x`, concatenated along `dim` in rank order, gradients flowing back to each rank's own part;
    `x` itself outside a distributed run. `sizes`: the ranks' lengths along `dim` where they differ (each part is
    padded to the longest for the all_gather)."""
    if not active():
        return x
    longest = max(sizes) if sizes else x.shape[dim]
    rows = x.movedim(dim, 0)
    if len(rows) < longest:
        rows = torch.cat([rows, rows.new_zeros((longest - len(rows), *rows.shape[1:]))])
    parts = _GatherWithGradient.apply(rows)
    if sizes:
        parts = [part[:size] for part, size in zip(parts, sizes)]
    return torch.cat(parts).movedim(0, dim)


def gather_constant(x: torch.Tensor | None, dim: int = 0, sizes: tuple[int, ...] | None = None
                    ) -> torch.Tensor | None:
    """As `gather`, for tensors that carry no gradient (labels, a momentum encoder's keys, input images); None
    stays None."""
    if x is None:
        return None
    with torch.no_grad():
        return gather(x.detach(), dim, sizes)


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch normalization over the global batch of a distributed run on CPUs, where torch's SyncBatchNorm (CUDA
    kernels only) cannot run: each rank's per-channel mean, biased variance and count are gathered (with
    gradients; one collective per layer) and merged (Chan et al. 1979's parallel formula), then the rank
    normalizes its own part. Equal to BatchNorm on the whole batch; outside training, or outside a distributed
    run, plain BatchNorm."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(input)
        dims = [d for d in range(input.dim()) if d != 1]
        x = input.to(torch.promote_types(input.dtype, torch.float32))  # statistics in fp32 at least
        var, mean = torch.var_mean(x, dims, correction=0)  # one pass
        count = torch.full_like(mean, x.numel() / x.shape[1])
        stats = gather(torch.stack([mean, var, count])[None])  # ranks x (mean, variance, count) x channels
        counts = stats[:, 2].detach()
        total = counts.sum(0)
        share = counts / total
        global_mean = (share * stats[:, 0]).sum(0)
        global_var = (share * (stats[:, 1] + (stats[:, 0] - global_mean).square())).sum(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(global_mean, momentum)
                self.running_var.lerp_(global_var * total / (total - 1), momentum)
        scale = torch.rsqrt(global_var + self.eps)  # y = x * scale + shift: one pass over the images
        if self.affine:
            scale = scale * self.weight
        shift = -global_mean * scale + (self.bias if self.affine else 0.0)
        shape = [1, -1] + [1] * (input.dim() - 2)
        return torch.addcmul(shift.view(shape), x, scale.view(shape)).to(input.dtype)


def sync_batch_norm(module: nn.Module, device: torch.device) -> nn.Module:
    """`module` with every BatchNorm layer normalizing over the global batch: torch's SyncBatchNorm on CUDA,
    CPUSyncBatchNorm on CPUs. Weights and running statistics are kept."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, CPUSyncBatchNorm):
        like = next(iter(module.state_dict().values()), torch.empty(0))
        synced = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                  module.track_running_stats, device=device, dtype=like.dtype)
        synced.load_state_dict(module.state_dict())
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        module.add_module(name, sync_batch_norm(child, device))
    return module
