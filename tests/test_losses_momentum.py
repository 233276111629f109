"""The methods that own parts: MoCo (momentum encoder + queue), BYOL (predictor + momentum encoder), SimSiam
(predictor): their formulas, references written from the papers' pseudocode, and their parts' behaviour."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cl_runner.batch import TupleBatch
from cl_runner.losses import BYOLLoss, MoCoLoss, SimSiamLoss
from cl_runner.losses.momentum import cosine_momentum
from cl_runner.models import Encoder, PamiCNN
from cl_runner.parts import Objective
from cl_runner.runtime import Compute, make_grad_scaler
from cl_runner.train import train_step
from conftest import loss_before_and_after_sgd

CPU = torch.device("cpu")


def small_encoder() -> Encoder:
    torch.manual_seed(0)
    return Encoder(PamiCNN(1), projector=[16, 8])


def moco_with_queue(queue: torch.Tensor, temperature: float = 1.0) -> MoCoLoss:
    loss = MoCoLoss(temperature=temperature, queue_size=len(queue))
    loss.register_buffer("queue", queue)
    loss.register_buffer("queue_labels", torch.full((len(queue),), -1))
    loss.register_buffer("queue_position", torch.zeros((), dtype=torch.long))
    return loss


def test_cosine_momentum_runs_from_start_to_end():
    assert cosine_momentum(0.996, 1.0, 0.0) == pytest.approx(0.996)
    assert cosine_momentum(0.996, 1.0, 0.5) == pytest.approx(0.998)
    assert cosine_momentum(0.996, 1.0, 1.0) == pytest.approx(1.0)


def test_moco_hand_computed():
    # one negative in the queue, orthogonal to the query; the key equals the query; T = 1:
    # -log(e^1 / (e^1 + e^0)) = log(1 + e^-1) in both directions
    q = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]])
    loss = moco_with_queue(torch.tensor([[0.0, 1.0]]))
    assert loss(q, q).item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    # a queued key of the query's own class is no negative under label-aware negatives: the loss vanishes
    loss.queue_labels.fill_(3)
    assert loss(q, q, torch.tensor([3])).item() == pytest.approx(0.0, abs=1e-6)


def moco_reference(q, k, queue, temperature):
    """MoCo's Algorithm 1 (He et al. 2020) for one direction: positive logits by bmm, negatives against the queue
    (C x K), the positive at index 0."""
    n, c = q.shape
    l_pos = torch.bmm(q.view(n, 1, c), k.view(n, c, 1)).view(n, 1)
    l_neg = torch.mm(q.view(n, c), queue.T.contiguous().view(c, -1))
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(n, dtype=torch.long))


def test_moco_equals_algorithm_1_symmetrized_and_is_symmetric_in_its_views():
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(2, 8, 4, generator=g), dim=-1)
    k = F.normalize(torch.randn(2, 8, 4, generator=g), dim=-1)
    queue = F.normalize(torch.randn(32, 4, generator=g), dim=-1)
    loss = moco_with_queue(queue, temperature=0.2)
    expected = (moco_reference(q[0], k[1], queue, 0.2) + moco_reference(q[1], k[0], queue, 0.2)) / 2
    assert loss(q, k).item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss(q.flip(0), k.flip(0)).item() == pytest.approx(loss(q, k).item(), rel=1e-6)


def test_moco_queue_is_first_in_first_out_and_wraps_around():
    loss = MoCoLoss(queue_size=12)
    loss.setup(small_encoder(), batch_size=4)
    assert loss.queue.shape == (12, 8) and torch.allclose(loss.queue.norm(dim=1), torch.ones(12))
    keys = [torch.full((8, 8), float(i)) for i in (1, 2)]
    loss.enqueue(keys[0], torch.arange(8))
    assert torch.equal(loss.queue[:8], keys[0]) and loss.queue_position.item() == 8
    loss.enqueue(keys[1], None)
    assert torch.equal(loss.queue[8:], keys[1][:4]) and torch.equal(loss.queue[:4], keys[1][4:])
    assert torch.equal(loss.queue[4:8], keys[0][4:]) and loss.queue_position.item() == 4
    assert loss.queue_labels.tolist() == [-1] * 4 + [4, 5, 6, 7] + [-1] * 4
    with pytest.raises(ValueError, match="queue_size"):
        MoCoLoss(queue_size=12).setup(small_encoder(), batch_size=8)


def test_byol_hand_computed():
    # direction 1: prediction orthogonal to the target, 2 - 2 * 0 = 2; direction 2: aligned, 0
    predictions = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]])
    targets = torch.tensor([[[3.0, 0.0]], [[0.0, 2.0]]])
    assert BYOLLoss()(predictions, targets).item() == pytest.approx(2.0, abs=1e-6)


def test_byol_equals_its_pseudocode_and_is_symmetric_in_its_views():
    def regression(x, y):  # BYOL's pseudocode, appendix J: 2 - 2 cos, per sample
        return 2 - 2 * (F.normalize(x, dim=-1) * F.normalize(y, dim=-1)).sum(dim=-1)

    g = torch.Generator().manual_seed(1)
    p, t = torch.randn(2, 16, 8, generator=g), torch.randn(2, 16, 8, generator=g)
    expected = (regression(p[0], t[1]) + regression(p[1], t[0])).mean()
    assert BYOLLoss()(p, t).item() == pytest.approx(expected.item(), rel=1e-5)
    assert BYOLLoss()(p.flip(0), t.flip(0)).item() == pytest.approx(expected.item(), rel=1e-5)


def test_simsiam_hand_computed_with_an_identity_predictor():
    # cos([1, 0], [1, 1]) = 1 / sqrt(2) in both directions: L = -1 / sqrt(2)
    loss = SimSiamLoss()
    loss.predictor = nn.Identity()
    z = torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]]])
    assert loss(z).item() == pytest.approx(-1 / math.sqrt(2), abs=1e-6)


def test_simsiam_equals_its_pseudocode_stops_the_gradient_and_is_symmetric():
    def distance(p, z):  # SimSiam's Algorithm 1: negative cosine, z detached
        return -(F.normalize(p, dim=1) * F.normalize(z.detach(), dim=1)).sum(dim=1).mean()

    loss = SimSiamLoss(predictor_hidden=4)
    loss.setup(small_encoder(), batch_size=16)
    g = torch.Generator().manual_seed(2)
    z = torch.randn(2, 16, 8, generator=g, requires_grad=True)
    p = loss.predictor(z.flatten(0, 1)).view_as(z)
    expected = distance(p[0], z[1]) / 2 + distance(p[1], z[0]) / 2
    ours = loss(z)
    assert ours.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss(z.flip(0)).item() == pytest.approx(ours.item(), rel=1e-5)
    # the gradient reaches z only through the predictor's input, never through the target branch
    (grad_ours,) = torch.autograd.grad(ours, z)
    z_through_predictor = z.detach().requires_grad_()
    p = loss.predictor(z_through_predictor.flatten(0, 1)).view_as(z)
    (grad_expected,) = torch.autograd.grad(-(F.cosine_similarity(p[0], z[1].detach()).mean()
                                             + F.cosine_similarity(p[1], z[0].detach()).mean()) / 2,
                                           z_through_predictor)
    assert torch.allclose(grad_ours, grad_expected, atol=1e-6)


@pytest.mark.parametrize("make", [lambda: BYOLLoss(predictor_hidden=16), lambda: SimSiamLoss(predictor_hidden=4)],
                         ids=["byol", "simsiam"])
def test_predictor_losses_decrease_under_sgd(make):
    loss = make()
    loss.setup(small_encoder(), batch_size=32)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 32, 8, generator=g, requires_grad=True)
    targets = torch.randn(2, 32, 8, generator=g)
    value = (lambda: loss(loss.predictor(z.flatten(0, 1)).view_as(z), targets)) if isinstance(loss, BYOLLoss) \
        else (lambda: loss(z))
    first, last = loss_before_and_after_sgd(value, [z, *loss.predictor.parameters()], lr=0.05)
    assert last < first


def test_moco_decreases_under_sgd():
    g = torch.Generator().manual_seed(4)
    loss = moco_with_queue(F.normalize(torch.randn(64, 8, generator=g), dim=-1), temperature=0.2)
    q = torch.randn(2, 32, 8, generator=g, requires_grad=True)
    k = F.normalize(torch.randn(2, 32, 8, generator=g), dim=-1)
    first, last = loss_before_and_after_sgd(lambda: loss(F.normalize(q, dim=-1), k), [q], lr=0.5)
    assert last < first


@pytest.mark.parametrize("make", [lambda: BYOLLoss(predictor_hidden=16), lambda: MoCoLoss(queue_size=64)],
                         ids=["byol", "moco"])
def test_the_momentum_encoder_gets_no_gradient_and_follows_the_encoder_by_ema(make):
    encoder, loss = small_encoder(), make()
    loss.setup(encoder, batch_size=16)
    optimizer = torch.optim.SGD([*encoder.parameters(), *(p for p in loss.parameters() if p.requires_grad)], lr=0.1)
    before = [p.clone() for p in loss.momentum_encoder.parameters()]
    images = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    train_step(Objective(encoder, loss), optimizer, make_grad_scaler(CPU, "fp32"), TupleBatch(images, views=2),
               Compute(CPU, "fp32", channels_last=False), progress=0.0)
    tau = loss.momentum  # progress 0: the schedule's start
    for old, new, online in zip(before, loss.momentum_encoder.parameters(), encoder.parameters()):
        assert not new.requires_grad and new.grad is None
        assert torch.allclose(new, tau * old + (1 - tau) * online, atol=1e-6)
    assert any(not torch.equal(old, new) for old, new in zip(before, loss.momentum_encoder.parameters()))
