"""SwAV (Caron et al. 2020): Sinkhorn-Knopp and the swapped prediction against references written from the paper's
pseudocode (Algorithm 1), the queue, the prototypes (frozen for the first epoch, l2-normalized after every step),
the refusals and the config."""
import io
import math

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn

from cl_runner.batch import BatchShare, TupleBatch
from cl_runner.config import validate
from cl_runner.data.pairing import MultiViewSampler
from cl_runner.errors import ConfigError
from cl_runner.losses.swav import SwAVLoss, sinkhorn
from cl_runner.parts import Objective
from cl_runner.runtime import Compute, make_grad_scaler
from cl_runner.train import train_step
from conftest import REPO, loss_before_and_after_sgd

CPU = torch.device("cpu")


class TinyEncoder(nn.Sequential):
    output_dim = 8

    def __init__(self):
        super().__init__(nn.Flatten(), nn.Linear(36, 16), nn.Tanh(), nn.Linear(16, self.output_dim))


def swav(encoder: nn.Module | None = None, **settings) -> SwAVLoss:
    torch.manual_seed(0)
    loss = SwAVLoss(**{"epochs": 1, "num_prototypes": 5, "queue_size": 0, "freeze_prototypes_epochs": 0, **settings})
    loss.setup(encoder or TinyEncoder(), batch_size=6)
    loss.double().normalize_prototypes()  # again in float64
    return loss


def images(views: int, tuples: int, seed: int) -> TupleBatch:
    generator = torch.Generator().manual_seed(seed)
    return TupleBatch(torch.randn(views * tuples, 1, 6, 6, generator=generator, dtype=torch.float64), views)


def encoding(views: int):
    """train_step's encode, without autocast: [views x tuples, ...] -> [views, tuples, dim]."""
    def encode(module, x):
        z = module(x)
        return z.view(views, -1, z.shape[-1])
    return encode


def sinkhorn_reference(scores: list[list[float]], epsilon: float, iterations: int) -> list[list[float]]:
    """The paper's Algorithm 1 sinkhorn, entry by entry: Q = exp(scores / eps)^T, Q /= sum(Q), then `iterations`
    times Q *= (r / u) row-wise with r = 1/K, u the row sums, and Q *= (c / column sums) with c = 1/B; the codes
    are (Q / column sums)^T."""
    samples, prototypes = len(scores), len(scores[0])
    q = [[math.exp(scores[b][k] / epsilon) for b in range(samples)] for k in range(prototypes)]
    total = sum(sum(row) for row in q)
    q = [[x / total for x in row] for row in q]
    for _ in range(iterations):
        q = [[x * (1 / prototypes) / sum(row) for x in row] for row in q]
        columns = [sum(q[k][b] for k in range(prototypes)) for b in range(samples)]
        q = [[q[k][b] * (1 / samples) / columns[b] for b in range(samples)] for k in range(prototypes)]
    columns = [sum(q[k][b] for k in range(prototypes)) for b in range(samples)]
    return [[q[k][b] / columns[b] for k in range(prototypes)] for b in range(samples)]


def test_sinkhorn_hand_computed():
    e = math.e
    # two samples, each nearest its own prototype, epsilon 1: exp(scores)^T is already balanced, the codes its rows
    codes = sinkhorn(torch.eye(2, dtype=torch.float64), epsilon=1.0, iterations=3)
    assert torch.allclose(codes, torch.tensor([[e, 1], [1, e]], dtype=torch.float64) / (e + 1), atol=1e-15)
    # both nearest prototype 0: the softmax would give e / (e + 1) to it, the equipartition splits them half-half
    codes = sinkhorn(torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64), epsilon=1.0, iterations=1)
    assert torch.allclose(codes, torch.full((2, 2), 0.5, dtype=torch.float64), atol=1e-15)


def test_sinkhorn_equals_the_papers_pseudocode_and_splits_the_batch_evenly():
    g = torch.Generator().manual_seed(3)
    scores = F.normalize(torch.randn(6, 8, generator=g, dtype=torch.float64), dim=1) @ \
        F.normalize(torch.randn(4, 8, generator=g, dtype=torch.float64), dim=1).T  # cosines: 6 samples, 4 prototypes
    for epsilon, iterations in [(0.05, 3), (0.5, 1), (0.3, 10)]:
        codes = sinkhorn(scores, epsilon, iterations)
        expected = torch.tensor(sinkhorn_reference(scores.tolist(), epsilon, iterations), dtype=torch.float64)
        torch.testing.assert_close(codes, expected, rtol=0, atol=1e-12)
        torch.testing.assert_close(codes.sum(dim=1), torch.ones(6, dtype=torch.float64), rtol=0, atol=1e-12)
    # after enough iterations each prototype takes B / K of the batch
    codes = sinkhorn(scores, 0.5, 200)
    torch.testing.assert_close(codes.sum(dim=0), torch.full((4,), 6 / 4, dtype=torch.float64), rtol=0, atol=1e-9)
    assert (sinkhorn(scores, 0.05, 1).sum(dim=0) - 6 / 4).abs().max() > 1e-3  # which one iteration is far from


def swav_reference(z: torch.Tensor, prototypes: torch.Tensor, temperature: float, epsilon: float,
                   iterations: int) -> torch.Tensor:
    """The paper's Algorithm 1: z = normalize(embeddings), scores = z C, the codes q of the first two views by
    sinkhorn (no gradient), p = softmax(scores / temp), and with two views loss = -0.5 (q_t log p_s + q_s log p_t),
    summed over the prototypes and averaged over the batch as its implementation (main_swav.py) does; with more
    views (multi-crop, section 3.2) each other view predicts q_1 and q_2, the terms averaged."""
    z = z / z.norm(dim=-1, keepdim=True)
    scores = [view @ prototypes.T for view in z]
    with torch.no_grad():
        q = [torch.tensor(sinkhorn_reference(scores[i].tolist(), epsilon, iterations), dtype=z.dtype) for i in (0, 1)]
    p = [torch.softmax(s / temperature, dim=1) for s in scores]

    def fit(q, p):
        return -(q * torch.log(p)).sum(dim=1).mean()

    if len(z) == 2:
        return 0.5 * (fit(q[0], p[1]) + fit(q[1], p[0]))
    return sum(sum(fit(q[i], p[v]) for v in range(len(z)) if v != i) / (len(z) - 1) for i in (0, 1)) / 2


@pytest.mark.parametrize("views", [2, 4])
def test_loss_and_gradients_equal_the_papers_pseudocode(views):
    loss = swav(temperature=0.2, epsilon=0.1, num_prototypes=6)
    g = torch.Generator().manual_seed(views)
    z = torch.randn(views, 7, 8, generator=g, dtype=torch.float64, requires_grad=True)
    weight = loss.prototypes.weight
    ours, expected = loss(z), swav_reference(z, weight, 0.2, 0.1, 3)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=0)
    for got, want in zip(torch.autograd.grad(ours, [z, weight]), torch.autograd.grad(expected, [z, weight])):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13)  # no gradient through the codes
    if views == 4:  # views 3 and 4 only predict: changing them leaves the codes, and so the first two terms
        other = z.detach().clone()
        other[2:] = torch.randn(2, 7, 8, generator=g, dtype=torch.float64)
        torch.testing.assert_close(loss(other), swav_reference(other, weight, 0.2, 0.1, 3), rtol=1e-12, atol=0)
        assert torch.equal(loss.codes(F.normalize(other[:2], dim=-1) @ weight.T),
                           loss.codes(F.normalize(z.detach()[:2], dim=-1) @ weight.T))


def test_the_queue_starts_on_time_keeps_the_last_embeddings_newest_first_and_joins_the_codes():
    encoder = TinyEncoder().double()
    loss = swav(encoder, epochs=2, queue_size=10, queue_start_epochs=1)  # 3 steps an epoch: queued from the 4th
    batches = [images(2, 4, seed) for seed in range(6)]
    embedded = [F.normalize(encoder(b.images), dim=-1).view(2, 4, 8).detach() for b in batches]
    weight = loss.prototypes.weight.detach()
    for step, batch in enumerate(batches):
        scores = embedded[step] @ weight.T
        alone = torch.stack([sinkhorn(view, 0.05, 3) for view in scores])
        if step <= 3:  # nothing queued yet: the codes of the batch alone
            assert loss.queued == 0 and not loss.queue.any() and torch.equal(loss.codes(scores), alone)
        else:  # the queue's scores join each view's batch in Sinkhorn, their codes dropped
            queued = loss.queue[:, :loss.queued] @ weight.T
            with_queue = torch.stack([sinkhorn(torch.cat([scores[i], queued[i]]), 0.05, 3)[:4] for i in (0, 1)])
            torch.testing.assert_close(loss.codes(scores), with_queue, rtol=0, atol=1e-15)
            assert (with_queue - alone).abs().max() > 1e-3
        loss.training_loss(encoder, batch, BatchShare.split(4), encoding(2))
        loss.after_step(encoder, (step + 1) / 6)
        if step == 3:
            torch.testing.assert_close(loss.queue[:, :4], embedded[3], rtol=0, atol=1e-15)
            assert loss.queued == 4 and not loss.queue[:, 4:].any()
    torch.testing.assert_close(loss.queue, torch.cat(embedded[:2:-1], dim=1)[:, :10], rtol=0, atol=1e-15)
    assert loss.queued == 10


def train(loss: SwAVLoss, encoder: nn.Module, steps: int, weight_decay: float = 0.0) -> list[dict]:
    """`steps` steps of cl-run's train_step (SGD, momentum 0.9) over a run of `steps`: the prototypes' weights
    before and after each, and their gradient."""
    optimizer = torch.optim.SGD([*encoder.parameters(), *loss.parameters()], lr=0.5, momentum=0.9,
                                weight_decay=weight_decay)
    objective, weight = Objective(encoder, loss), loss.prototypes.weight
    records = []
    for step in range(steps):
        before = weight.detach().clone()
        train_step(objective, optimizer, make_grad_scaler(CPU, "fp32"), images(2, 6, step),
                   Compute(CPU, "fp32", channels_last=False), progress=(step + 1) / steps)
        records.append({"before": before, "gradient": weight.grad.clone(), "after": weight.detach().clone()})
    return records


def test_the_prototypes_get_no_gradient_and_stay_put_during_the_first_epoch():
    encoder = TinyEncoder().double()
    loss = swav(encoder, epochs=4, freeze_prototypes_epochs=1)  # 5 steps an epoch
    for step, record in enumerate(train(loss, encoder, steps=20, weight_decay=0.01)):
        if step < 5:  # weight decay only rescales the rows, which the normalization undoes
            assert not record["gradient"].any()
            torch.testing.assert_close(record["after"], record["before"], rtol=0, atol=1e-14)
        else:
            assert record["gradient"].abs().max() > 1e-6 and (record["after"] - record["before"]).abs().max() > 1e-6


def test_the_prototypes_rows_are_unit_vectors_from_setup_and_after_every_step():
    loss = SwAVLoss(epochs=1, num_prototypes=5)
    loss.setup(TinyEncoder(), batch_size=6)
    torch.testing.assert_close(loss.prototypes.weight.norm(dim=1), torch.ones(5), rtol=0, atol=1e-6)
    encoder = TinyEncoder().double()
    loss = swav(encoder, epochs=1)
    ones = torch.ones(5, dtype=torch.float64)
    for record in train(loss, encoder, steps=20):
        torch.testing.assert_close(record["after"].norm(dim=1), ones, rtol=0, atol=1e-14)


def test_the_loss_decreases_under_sgd():
    loss = swav(num_prototypes=4)
    z = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64, requires_grad=True)
    first, last = loss_before_and_after_sgd(lambda: loss(z), [z, loss.prototypes.weight], lr=0.5)
    assert last < first


def test_a_checkpoint_keeps_the_queue_and_the_progress():
    encoder = TinyEncoder().double()
    loss = swav(encoder, epochs=2, queue_size=10, queue_start_epochs=0, freeze_prototypes_epochs=1)
    for step in range(3):
        loss.training_loss(encoder, images(2, 4, step), BatchShare.split(4), encoding(2))
        loss.after_step(encoder, (step + 1) / 6)
    saved = io.BytesIO()
    torch.save(loss.state_dict(), saved)
    saved.seek(0)
    resumed = swav(encoder, epochs=2, queue_size=10, queue_start_epochs=0, freeze_prototypes_epochs=1)
    resumed.load_state_dict(torch.load(saved, weights_only=True))  # as cl-run reads a checkpoint
    assert (resumed.progress, resumed.queued) == (0.5, 10) and torch.equal(resumed.queue, loss.queue)
    z = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    assert torch.equal(resumed(z), loss(z))


@pytest.mark.parametrize("setting, match", [
    ({"temperature": 0.0}, "loss.temperature must be > 0"), ({"temperature": float("nan")}, "loss.temperature"),
    ({"epsilon": -0.05}, "loss.epsilon must be > 0"),
    ({"sinkhorn_iterations": 0}, "loss.sinkhorn_iterations must be an integer >= 1"),
    ({"num_prototypes": 1}, "loss.num_prototypes must be an integer >= 2"),
    ({"num_prototypes": 2.5}, "loss.num_prototypes"),
    ({"queue_size": -1}, "loss.queue_size must be an integer >= 0"),
    ({"queue_start_epochs": -1}, "loss.queue_start_epochs must be >= 0"),
    ({"freeze_prototypes_epochs": -0.5}, "loss.freeze_prototypes_epochs must be >= 0"),
    ({"epochs": -1}, "loss.epochs must be an integer >= 0")])
def test_settings_that_cannot_work_are_refused(setting, match):
    with pytest.raises(ConfigError, match=match):
        SwAVLoss(**{"epochs": 10, **setting})


def test_the_config_trains_on_two_or_more_views_for_the_runs_epochs():
    assert SwAVLoss.pairings == ("multiview",) and not SwAVLoss.two_views and SwAVLoss.in_batch
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["loss=swav", "epochs=7", "pairing.views=4"])
    validate(cfg)  # more than two views: fine
    loss = instantiate(cfg.loss)
    assert isinstance(loss, SwAVLoss) and loss.epochs == 7 and loss.num_prototypes == 3000
    assert cfg.pairing._target_ == "cl_runner.data.pairing.MultiViewSampler"
    with pytest.raises(ConfigError, match="pairing.views must be at least 2"):  # fewer: the pairing refuses
        MultiViewSampler(views=1)
