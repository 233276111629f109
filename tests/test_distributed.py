"""Two gloo processes (real ones, spawned), each with its share of a global batch, train through the same
`train_step` that cl-run runs, under DistributedDataParallel and batch normalization over the global batch: for
every loss the loss, the gradients after one step and the weights and running statistics after two equal those
of one process on the whole batch. This is the equivalence that lightly's issues 1528 (a gather whose backward
made 1- and 2-GPU runs differ) and 1977 (Barlow Twins gradients off by 1/world_size) were about. The batch of 15
tuples splits 8/7, so the weighting of uneven parts is tested too."""
from __future__ import annotations


import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn

from cl_runner import distributed
from cl_runner.batch import BatchShare, TupleBatch
from cl_runner.distributed import World
from cl_runner.parts import Objective
from cl_runner.runtime import Compute, make_grad_scaler
from cl_runner.train import train_step
from conftest import REPO

WORLD, TUPLES, CPU = 2, 15, torch.device("cpu")
LOSSES = sorted(p.stem for p in (REPO / "conf" / "loss").glob("*.yaml"))
VIEWS = {"triplet": 3, "contrastive": 2, "cosine_embedding": 2}
MINED = ["triplet+batch_hard", "triplet+semi_hard"]  # loss config + loss.mining: triplets mined in the batch
CASES = LOSSES + MINED


class TinyEncoder(nn.Sequential):
    """A convolution, batch norm (synchronized in the distributed run) and a linear projection to 8 dimensions."""

    output_dim = 8

    def __init__(self):
        super().__init__(nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, self.output_dim))

FP32 = Compute(CPU, "fp32", channels_last=False)

def make_loss(case: str) -> nn.Module:
    name, _, mining = case.partition("+")
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):  # a config's defaults too
        cfg = compose("config", overrides=[f"loss={name}"]).loss
    if mining:
        cfg.mining = mining
    overrides = {"moco": {"queue_size": 64}, "imix_moco": {"queue_size": 64}, "byol": {"predictor_hidden": 16},
                 "imix_byol": {"predictor_hidden": 16}, "simsiam": {"predictor_hidden": 16},
                 "swav": {"epochs": 4, "num_prototypes": 5, "queue_size": 20, "queue_start_epochs": 0},
                 "dino": {"epochs": 2, "head": {"out_dim": 16, "hidden_dim": 16, "bottleneck_dim": 8}}}
    return instantiate(cfg, **overrides.get(name, {}))


def global_batches(case: str) -> list[TupleBatch]:
    """Two steps' global batches (float64: the ranks' sums run in another order, so equality is up to rounding,
    kept far below any real error)."""
    name = case.partition("+")[0]
    generator = torch.Generator().manual_seed(1)
    views = VIEWS.get(name, 2)
    return [TupleBatch(torch.randn(views * TUPLES, 1, 6, 6, generator=generator, dtype=torch.float64), views,
                       target=torch.randint(0, 2, (TUPLES,), generator=generator).double() * 2 - 1
                       if views == 2 and name in VIEWS else None,
                       labels=torch.randint(0, 3, (TUPLES,), generator=generator)) for _ in range(2)]


def part(batch: TupleBatch, share: BatchShare) -> TupleBatch:
    rows = share.rows
    images = batch.images.unflatten(0, (batch.views, -1))[:, rows].flatten(0, 1)
    return TupleBatch(images, batch.views, None if batch.target is None else batch.target[rows], batch.labels[rows])


def train_two_steps(name: str, world: World) -> dict:
    torch.manual_seed(0)  # the encoder, MoCo's first queue, i-Mix's draws: the same in every process
    encoder = TinyEncoder().double()
    loss_fn = make_loss(name)
    loss_fn.classes = 3  # the batches' labels (a classifier's size)
    if world.is_distributed:
        encoder = distributed.sync_batch_norm(encoder, CPU)
    loss_fn.setup(encoder, TUPLES)
    loss_fn.double()
    if world.is_distributed:
        loss_fn = distributed.sync_batch_norm(loss_fn, CPU)
    trained = [p for p in (*encoder.parameters(), *loss_fn.parameters()) if p.requires_grad]
    optimizer = torch.optim.SGD(trained, lr=0.05, momentum=0.9)
    objective = Objective(encoder, loss_fn)
    if world.is_distributed:
        objective = nn.parallel.DistributedDataParallel(objective)
    record = {}
    for step, batch in enumerate(global_batches(name)):
        share = world.share(TUPLES)
        loss = train_step(objective, optimizer, make_grad_scaler(CPU, "fp32"), part(batch, share), FP32, share=share,
                          progress=0.5)
        if step == 0:
            record["loss"] = distributed.mean_over_ranks(loss)  # what the training log reports
            record["gradients"] = [p.grad.clone() for p in trained]
    record["weights"] = [p.detach().clone() for p in trained]
    record["state"] = {k: v.clone() for k, v in objective.state_dict().items() if "num_batches" not in k}
    record["state"] = {k.removeprefix("module."): v for k, v in record["state"].items()}
    return record


class NaNOnRankOne(nn.Module):
    """A loss that is finite on rank 0 and NaN on rank 1."""

    def forward(self, z, target=None, labels=None):
        return z.sum() * (float("nan") if dist.get_rank() == 1 else 1.0)


def nan_on_one_rank_skips_the_step_everywhere(rank: int) -> bool:
    torch.manual_seed(0)
    encoder = TinyEncoder().double()
    loss_fn = make_loss("triplet")
    loss_fn.forward = NaNOnRankOne().forward
    objective = nn.parallel.DistributedDataParallel(Objective(encoder, loss_fn))
    optimizer = torch.optim.SGD(encoder.parameters(), lr=0.05)
    before = [p.detach().clone() for p in encoder.parameters()]
    share = World(rank, WORLD).share(TUPLES)
    loss = train_step(objective, optimizer, make_grad_scaler(CPU, "fp32"), part(global_batches("triplet")[0], share),
                      FP32, share=share, check_finite=True)
    return loss is None and all(torch.equal(a, b) for a, b in zip(before, encoder.parameters()))


def rank_main(rank: int, rendezvous: str, results: dict) -> None:
    """One process of the run; it ends as cl-run's processes do (`distributed.end_process`), once its results
    are in: the gloo threads that DDP keeps alive must not meet the interpreter's finalization."""
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD)
    try:
        for name in CASES:
            results[(name, rank)] = train_two_steps(name, World(rank, WORLD))
        results[("nan", rank)] = nan_on_one_rank_skips_the_step_everywhere(rank)
    finally:
        dist.destroy_process_group()
    distributed.end_process(0)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict:
    rendezvous = tmp_path_factory.mktemp("two_ranks") / "store"  # a file: no port for another process to take
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(rank_main, args=(str(rendezvous), results), nprocs=WORLD, join=True)
        return dict(results)


def test_every_loss_config_is_covered():
    assert len(LOSSES) == 22


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_two_ranks_train_as_one_process_on_the_whole_batch(name, two_ranks):
    reference = train_two_steps(name, World())
    for rank in range(WORLD):
        ours = two_ranks[(name, rank)]
        torch.testing.assert_close(ours["loss"], reference["loss"], rtol=1e-10, atol=1e-12)
        for key in ("gradients", "weights"):
            for got, expected in zip(ours[key], reference[key]):
                torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
        assert ours["state"].keys() == reference["state"].keys()
        for key, expected in reference["state"].items():  # BN running statistics and MoCo's queue too
            torch.testing.assert_close(ours["state"][key], expected, rtol=1e-9, atol=1e-12, msg=key)


def test_a_batch_splits_into_parts_that_differ_by_one_at_most():
    assert World(0, 2).share(15).sizes == (8, 7)
    assert [World(r, 4).share(10).rows for r in range(4)] == [slice(0, 3), slice(3, 6), slice(6, 8),
                                                                          slice(8, 10)]
    assert World(1, 2).share(15).weight == pytest.approx(7 * 2 / 15)
    assert BatchShare.split(15).weight == 1.0


@pytest.mark.slow
def test_a_nan_on_one_process_skips_the_step_on_every_process(two_ranks):
    assert two_ranks[("nan", 0)] and two_ranks[("nan", 1)]  # rank 0's loss was finite: it skipped all the same
