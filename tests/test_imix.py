"""i-Mix on its paper's three methods (Lee et al. 2021; ../shared/seeds/slides-imix-moco-byol.txt): N-pair, MoCo v2
and BYOL, one mixing mechanism, each against a reference written from the slides' formulas, and each with mixing
off equal to its unmixed baseline."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cl_runner.batch import BatchShare, TupleBatch
from cl_runner.losses import BYOLLoss, IMixBYOLLoss, IMixLoss, IMixMoCoLoss
from cl_runner.losses.imix import Mixing, VirtualMix
from conftest import loss_before_and_after_sgd
from test_losses_momentum import small_encoder


def s(a, b):
    """The slides' s(., .): cosine similarity."""
    return F.cosine_similarity(a, b, dim=0)


def recording_encode(seen: list):
    def encode(module, x):
        seen.append(x)
        return module(x).view(2, -1, module(x).shape[-1])
    return encode


def test_npair_imix_hand_computed():
    # two orthogonal tuples, T = 1: each row's softmax puts e / (e + 1) on the matching second view
    z = torch.eye(2).expand(2, 2, 2)
    loss = IMixLoss(temperature=1.0)
    assert loss(z).item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)  # unmixed: N-pair
    # mixed half and half: the soft target puts 1/2 on both columns
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))) / 2
    assert loss(z, Mixing(0.5, torch.tensor([1, 0]))).item() == pytest.approx(expected, abs=1e-6)


def npair_imix_reference(f, f_tilde, mix, permutation, temperature):
    """The slides' l_N-pair with the mixed virtual label v_i = lambda e_i + (1 - lambda) e_pi(i), sample by sample."""
    n = len(f)
    total = 0.0
    for i in range(n):
        denominator = sum(math.exp(s(f[i], f_tilde[k]) / temperature) for k in range(n))
        for m in range(n):
            v = mix * (m == i) + (1 - mix) * (m == int(permutation[i]))
            total -= v * math.log(math.exp(s(f[i], f_tilde[m]) / temperature) / denominator)
    return total / n


def test_npair_imix_equals_the_slides_formula_and_mixes_the_first_views_in_input_space():
    g = torch.Generator().manual_seed(7)
    z = torch.randn(2, 6, 4, generator=g, dtype=torch.float64)
    permutation = torch.randperm(6, generator=g)
    ours = IMixLoss(temperature=0.2)(z, Mixing(0.3, permutation))
    assert ours.item() == pytest.approx(npair_imix_reference(z[0], z[1], 0.3, permutation, 0.2), rel=1e-9)

    images = torch.rand(2 * 4, 1, 3, 3, generator=g)  # two views of 4 tuples, view-major
    seen = []
    torch.manual_seed(0)
    IMixLoss().training_loss(nn.Flatten(), TupleBatch(images, views=2), BatchShare.split(4), recording_encode(seen))
    torch.manual_seed(0)
    mix, permutation = float(torch.distributions.Beta(1.0, 1.0).sample()), torch.randperm(4)
    first, second = images[:4], images[4:]
    assert torch.allclose(seen[0][:4], mix * first + (1 - mix) * first[permutation], atol=1e-6)
    assert torch.equal(seen[0][4:], second)


def test_npair_imix_unmixed_is_ntxents_one_directional_form_and_mixes_nothing():
    """alpha = 0: -log(exp(s(a_i, p_i)/T) / sum_k exp(s(a_i, p_k)/T)), SimCLR's eq. 1 with the second views
    as the only candidates."""
    g = torch.Generator().manual_seed(8)
    z = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    one_directional = sum(-math.log(math.exp(s(z[0, i], z[1, i]) / 0.5)
                                    / sum(math.exp(s(z[0, i], z[1, k]) / 0.5) for k in range(5)))
                          for i in range(5)) / 5
    loss = IMixLoss(temperature=0.5, alpha=0.0)
    assert loss(z).item() == pytest.approx(one_directional, rel=1e-9)
    images = torch.rand(2 * 5, 1, 2, 2, generator=g)
    seen = []
    state = torch.get_rng_state()
    unmixed = loss.training_loss(nn.Flatten(), TupleBatch(images, views=2), BatchShare.split(5),
                                 recording_encode(seen))
    assert torch.equal(seen[0], images) and torch.equal(torch.get_rng_state(), state)  # nothing drawn, nothing mixed
    assert unmixed.item() == pytest.approx(loss(images.flatten(1).view(2, 5, 4)).item(), rel=1e-6)


def moco_imix_reference(q, keys, queue, targets, temperature):
    """The slides' i-Mix MoCo v2 loss for one direction: -sum_n v_in log(exp(s(f_i, f~_n)/T) /
    (sum_k exp(s(f_i, f~_k)/T) + sum_k exp(s(f_i, mu_k)/T))), sample by sample."""
    total = 0.0
    for i in range(len(q)):
        denominator = (sum(math.exp(s(q[i], k) / temperature) for k in keys)
                       + sum(math.exp(s(q[i], mu) / temperature) for mu in queue))
        total -= sum(float(targets[i, n]) * math.log(math.exp(s(q[i], keys[n]) / temperature) / denominator)
                     for n in range(len(keys)))
    return total / len(q)


def imix_moco(queue: torch.Tensor, **kwargs) -> IMixMoCoLoss:
    loss = IMixMoCoLoss(queue_size=len(queue), **kwargs)
    loss.setup(small_encoder(), batch_size=len(queue) // 2)
    loss.queue = queue.clone()
    return loss


def test_moco_imix_equals_the_slides_formula_symmetrized():
    g = torch.Generator().manual_seed(1)
    q = F.normalize(torch.randn(2, 6, 4, generator=g, dtype=torch.float64), dim=-1)
    k = F.normalize(torch.randn(2, 6, 4, generator=g, dtype=torch.float64), dim=-1)
    queue = F.normalize(torch.randn(12, 4, generator=g, dtype=torch.float64), dim=-1)
    mixing = Mixing(0.7, torch.randperm(6, generator=g))
    targets = mixing.virtual_labels(6, q)
    loss = imix_moco(queue, temperature=0.2)
    expected = (moco_imix_reference(q[0], k[1], queue, targets, 0.2)
                + moco_imix_reference(q[1], k[0], queue, targets, 0.2)) / 2
    assert loss(q, k, targets).item() == pytest.approx(expected, rel=1e-9)


def test_moco_imix_mixes_both_views_alike_queries_them_against_clean_keys_and_queues_the_keys():
    g = torch.Generator().manual_seed(2)
    images = torch.rand(2 * 8, 1, 28, 28, generator=g)
    loss = imix_moco(F.normalize(torch.randn(16, 8, generator=g), dim=-1))
    seen = []
    torch.manual_seed(3)
    loss.training_loss(loss.momentum_encoder, TupleBatch(images, views=2), BatchShare.split(8), recording_encode(seen))
    torch.manual_seed(3)
    mix, permutation = float(torch.distributions.Beta(1.0, 1.0).sample()), torch.randperm(8)
    views = images.view(2, 8, 1, 28, 28)
    assert torch.allclose(seen[0].view_as(views), mix * views + (1 - mix) * views[:, permutation], atol=1e-6)
    assert torch.equal(seen[1], images)  # the momentum encoder's keys: clean views
    keys = F.normalize(loss.momentum_encoder(images), dim=-1)
    assert torch.allclose(loss.queue, keys, atol=1e-6) and loss.queue_position.item() == 0  # 16 keys: wrapped


def test_byol_imix_equals_the_slides_formula_and_unmixed_is_byol():
    def l_byol(p, t):  # the slides' l_BYOL: 2 - 2 s(g(f_i), F~ v_i)
        return 2 - 2 * s(p, t)

    g = torch.Generator().manual_seed(4)
    p, t = torch.randn(2, 5, 3, generator=g, dtype=torch.float64), torch.randn(2, 5, 3, generator=g,
                                                                               dtype=torch.float64)
    permutation, mix = torch.randperm(5, generator=g), 0.4
    expected = sum(mix * l_byol(p[v, i], t[1 - v, i]) + (1 - mix) * l_byol(p[v, i], t[1 - v, permutation[i]])
                   for v in (0, 1) for i in range(5)) / 5
    loss = IMixBYOLLoss(predictor_hidden=4)
    assert loss(p, t, t[:, permutation], mix).item() == pytest.approx(float(expected), rel=1e-9)
    assert loss(p, t).item() == pytest.approx(BYOLLoss()(p, t).item(), rel=1e-12)


def test_byol_imix_with_mixing_off_trains_as_byol():
    images = torch.rand(2 * 8, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    values = []
    for loss in (IMixBYOLLoss(predictor_hidden=8, alpha=0.0), BYOLLoss(predictor_hidden=8)):
        encoder = small_encoder()
        torch.manual_seed(6)
        loss.setup(encoder, batch_size=8)
        values.append(loss.training_loss(encoder, TupleBatch(images, views=2), BatchShare.split(8),
                                         lambda module, x: module(x).view(2, -1, 8)))
    assert torch.equal(values[0], values[1])


@pytest.mark.parametrize("name", ["npair", "moco", "byol"])
def test_every_imix_loss_decreases_under_sgd(name):
    g = torch.Generator().manual_seed(9)
    z = torch.randn(2, 16, 8, generator=g, requires_grad=True)
    mixing = Mixing(0.6, torch.randperm(16, generator=g))
    if name == "npair":
        loss_fn = IMixLoss()
        value = lambda: loss_fn(z, mixing)  # noqa: E731
    elif name == "moco":
        loss_fn = imix_moco(F.normalize(torch.randn(32, 8, generator=g), dim=-1))
        keys = F.normalize(torch.randn(2, 16, 8, generator=g), dim=-1)
        targets = mixing.virtual_labels(16, z)
        value = lambda: loss_fn(F.normalize(z, dim=-1), keys, targets)  # noqa: E731
    else:
        targets = torch.randn(2, 16, 8, generator=g)
        loss_fn = IMixBYOLLoss()
        value = lambda: loss_fn(z, targets, targets[:, mixing.permutation], mixing.coefficient)  # noqa: E731
    first, last = loss_before_and_after_sgd(value, [z], lr=0.5)
    assert last < first


def test_the_mixing_draws_lambda_from_beta_and_refuses_a_negative_alpha():
    torch.manual_seed(0)
    draws = torch.tensor([VirtualMix(0.2).draw(4, torch.device("cpu")).coefficient for _ in range(2000)])
    # Beta(0.2, 0.2): mean 1/2, variance 1 / (4 (2 alpha + 1)) = 0.179
    assert draws.mean().item() == pytest.approx(0.5, abs=0.03)
    assert draws.var().item() == pytest.approx(1 / (4 * 1.4), abs=0.02)
    assert VirtualMix(0.0).draw(4, torch.device("cpu")).permutation is None
    for make in (lambda: IMixLoss(alpha=-1), lambda: IMixMoCoLoss(alpha=-0.5), lambda: IMixBYOLLoss(alpha=-2)):
        with pytest.raises(ValueError, match=r"loss.alpha must be >= 0 \(0: no mixing\)"):
            make()
    with pytest.raises(ValueError, match="loss.temperature must be > 0"):
        IMixLoss(temperature=0)
