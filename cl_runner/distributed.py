"""One run over several processes (torchrun; one per GPU, or gloo processes on a CPU): who this process is, the
process group, and the gathers that let an in-batch loss see the whole global batch.

The gather's backward follows the scheme that makes N ranks equal one process (solo-learn's GatherLayer;
lightly's issue 1528 is what goes wrong otherwise): every rank computes the same loss on the gathered global
batch, so each holds the same gradient for all of it; the backward sums those over the ranks and hands each rank
the part of its own embeddings (N times its share), and DistributedDataParallel's average over the N ranks
then leaves every parameter with exactly the one-process gradient."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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

    @classmethod
    def from_env(cls) -> "World":
        """The world torchrun (or SLURM through submitit) describes in RANK, WORLD_SIZE and LOCAL_RANK."""
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))


def backend(device: torch.device) -> str:
    """nccl between GPUs, gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


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


def gather(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Every rank's `x`, concatenated along `dim` in rank order (gradients flow back to each rank's own part);
    `x` itself outside a distributed run."""
    if not active():
        return x
    return torch.cat(_GatherWithGradient.apply(x), dim=dim)


def gather_labels(x: torch.Tensor | None) -> torch.Tensor | None:
    """Every rank's labels (no gradient), concatenated in rank order."""
    if x is None or not active():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)
