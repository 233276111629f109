"""What one training step works on: a batch of tuples, and this process's share of the step's global batch.

Plain values only, so that the samplers that build a batch, the losses that read it and the loop that hands the
one to the other share a vocabulary without importing each other (or the process group)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TupleBatch:
    """The model inputs of one step (this process's rows of it): `views` groups of the same size stacked along
    dim 0, so the encoder runs once and its output reshapes to [views, tuples, dim]. `target` is +1/-1 per pair
    (pairs only); `labels` the class of each tuple where the pairing may use labels (label-aware batches).
    `local_images`: multi-crop's `local_views` smaller views of each tuple (Caron et al. 2020), stacked the same
    way, encoded in a pass of their own (None: none)."""

    images: torch.Tensor
    views: int
    target: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    local_images: torch.Tensor | None = None
    local_views: int = 0


@dataclass(frozen=True)
class BatchShare:
    """This process's part of a step's global batch: the batch is split in rank order into contiguous parts whose
    sizes differ by at most one (torch.tensor_split's sizes). One process holds the whole batch."""

    sizes: tuple[int, ...]
    rank: int = 0

    @classmethod
    def split(cls, total: int, processes: int = 1, rank: int = 0) -> "BatchShare":
        """`total` tuples over `processes` processes, as seen by `rank`."""
        base, extra = divmod(total, processes)
        return cls(tuple(base + (r < extra) for r in range(processes)), rank)

    @property
    def rows(self) -> slice:
        """This process's rows of the global batch."""
        start = sum(self.sizes[:self.rank])
        return slice(start, start + self.sizes[self.rank])

    @property
    def weight(self) -> float:
        """The factor on a mean over this process's tuples that makes the ranks' average (DDP's) the mean over
        the global batch: 1 when the parts are of one size."""
        return self.sizes[self.rank] * len(self.sizes) / sum(self.sizes)
