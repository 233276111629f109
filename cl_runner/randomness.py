"""One random stream per purpose, each derived from (seed, purpose), so that runs share their draws where they
can (common random numbers): two runs with the same seed that differ only in the loss start from the same
weights and see the same tuples, negatives and augmentation parameters; two that differ only in the augmentation
see the same epoch order and negatives. Their paired difference then measures the scenario, not the luck of
the draw. Checkpoints save every stream, so resume continues each exactly."""
from __future__ import annotations

import random
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields

import numpy as np
import torch


def stream_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed for `purpose`, statistically independent of every other purpose's (numpy's SeedSequence
    hashes the pair; the purpose enters as the CRC-32 of its name, stable across processes and versions)."""
    state = np.random.SeedSequence([seed, zlib.crc32(purpose.encode())]).generate_state(2, np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & (2**63 - 1)


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's global generators (a loss's own draws: MoCo's first queue, i-Mix's
    mixing); the run's main draws each have a stream of their own (below)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def evaluation_seed(seed: int) -> int:
    """The seed of the evaluation's own draws (the paper protocol's split, t-SNE), as scikit-learn takes it."""
    return stream_seed(seed, "evaluation") % 2**32


def generator(seed: int, purpose: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on `device` for `purpose`."""
    return torch.Generator(device).manual_seed(stream_seed(seed, purpose))


@contextmanager
def seeded(seed: int, purpose: str) -> Iterator[None]:
    """Inside, torch's global CPU generator draws `purpose`'s stream (e.g. the encoder's initialization in
    its modules' constructors); outside, the global state is as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(seed, purpose))
        yield


@dataclass
class TrainingStreams:
    """The draws of pretraining, one generator each on the training device: the epochs' tuple order, the
    negatives (which image pairs with an anchor) and the augmentation parameters of every view."""

    order: torch.Generator
    negatives: torch.Generator
    augment: torch.Generator

    @classmethod
    def from_seed(cls, seed: int, device: torch.device | str = "cpu") -> "TrainingStreams":
        return cls(**{f.name: generator(seed, f.name, device) for f in fields(cls)})

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name).get_state() for f in fields(self)}

    def load_state_dict(self, states: dict[str, torch.Tensor]) -> None:
        for f in fields(self):
            getattr(self, f.name).set_state(states[f.name])
