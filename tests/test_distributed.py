"""Two gloo processes (real ones, spawned) with gathered embeddings give every in-batch loss the value and the
parameter gradients of one process on the concatenated batch: the equivalence lightly's issues 1528 (a gather
whose backward made 1- and 2-GPU runs differ) and 1977 (Barlow Twins gradients off by 1/world_size) were about."""
from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from cl_runner import distributed
from cl_runner.losses import BarlowTwinsLoss, DebiasedNTXentLoss, NPairLoss, NTXentLoss, SupConLoss, VICRegLoss

WORLD = 2
LOSSES = {"ntxent": lambda: NTXentLoss(temperature=0.5), "supcon": lambda: SupConLoss(temperature=0.5),
          "debiased": lambda: DebiasedNTXentLoss(), "npair": lambda: NPairLoss(),
          "barlow_twins": lambda: BarlowTwinsLoss(), "vicreg": lambda: VICRegLoss()}
VIEWS, TUPLES, FEATURES, DIM = 2, 16, 12, 8


def problem():
    """A linear 'encoder' and a batch of images [views, tuples, features] with labels, the same in every process
    (float64: the ranks' sums run in another order, so equality is up to rounding, kept far below any real error)."""
    generator = torch.Generator().manual_seed(0)
    encoder = nn.Linear(FEATURES, DIM).double()
    with torch.no_grad():
        encoder.weight.copy_(torch.randn(DIM, FEATURES, generator=generator))
        encoder.bias.copy_(torch.randn(DIM, generator=generator))
    images = torch.randn(VIEWS, TUPLES, FEATURES, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 4, (TUPLES,), generator=generator)
    return encoder, images, labels


def loss_and_gradients(name: str, encoder: nn.Module, images: torch.Tensor, labels: torch.Tensor):
    z = distributed.gather(encoder(images), dim=1)  # the global batch, in rank order
    loss = LOSSES[name]()(z, None, distributed.gather_labels(labels))
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in encoder.parameters()]


def rank_main(rank: int, port: int, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        for name in LOSSES:
            encoder, images, labels = problem()
            share = slice(rank * TUPLES // WORLD, (rank + 1) * TUPLES // WORLD)  # this rank's slice of the batch
            loss, grads = loss_and_gradients(name, encoder, images[:, share], labels[share])
            for grad in grads:  # what DistributedDataParallel does: the mean over the ranks
                dist.all_reduce(grad)
                grad /= WORLD
            results[(name, rank)] = (loss, grads)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks() -> dict:
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(rank_main, args=(free_port(), results), nprocs=WORLD, join=True)
        return dict(results)


@pytest.mark.parametrize("name", LOSSES)
def test_two_ranks_equal_one_process_on_the_whole_batch(name, two_ranks):
    encoder, images, labels = problem()
    reference_loss, reference_grads = loss_and_gradients(name, encoder, images, labels)  # not distributed
    for rank in range(WORLD):
        loss, grads = two_ranks[(name, rank)]
        torch.testing.assert_close(loss, reference_loss, rtol=1e-12, atol=1e-12)
        for grad, reference in zip(grads, reference_grads):
            torch.testing.assert_close(grad, reference, rtol=1e-10, atol=1e-12)
