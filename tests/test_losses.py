import math

import pytest
import torch
from torch import nn

from cl_runner.losses import CosineEmbeddingLoss, TripletMarginLoss


def test_cosine_embedding_hand_computed():
    # pair 1: identical directions, target +1 -> 1 - 1 = 0; pair 2: 90 degrees, target +1 -> 1 - 0 = 1
    # pair 3: 60 degrees, target -1, margin 0 -> max(0, 0.5) = 0.5; pair 4: opposite, target -1 -> 0
    first = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    second = torch.tensor([[2.0, 0.0], [0.0, 3.0], [0.5, math.sqrt(3) / 2], [-1.0, 0.0]])
    target = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss = CosineEmbeddingLoss()(torch.stack([first, second]), target)
    assert loss.item() == pytest.approx((0 + 1 + 0.5 + 0) / 4, abs=1e-6)
    # with margin 0.6 the 60-degree negative no longer counts
    assert CosineEmbeddingLoss(margin=0.6)(torch.stack([first, second]), target).item() == pytest.approx(0.25, abs=1e-6)


def test_triplet_hand_computed():
    anchor = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    positive = torch.tensor([[3.0, 4.0], [1.0, 0.0]])  # distances 5 and 1
    negative = torch.tensor([[0.0, 2.0], [0.0, 5.0]])  # distances 2 and 5
    # max(0, 5 - 2 + 1) = 4 and max(0, 1 - 5 + 1) = 0 -> mean 2
    loss = TripletMarginLoss(margin=1.0)(torch.stack([anchor, positive, negative]))
    assert loss.item() == pytest.approx(2.0, abs=1e-4)  # torch adds eps=1e-6 inside the norm


def test_losses_equal_torch_nn_on_random_inputs():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 64, 32, generator=g)
    target = torch.where(torch.rand(64, generator=g) < 0.5, 1.0, -1.0)
    ours = CosineEmbeddingLoss(margin=0.1)(z[:2], target)
    assert torch.allclose(ours, nn.CosineEmbeddingLoss(margin=0.1)(z[0], z[1], target))
    ours = TripletMarginLoss(margin=1.0, p=2)(z)
    assert torch.allclose(ours, nn.TripletMarginLoss(margin=1.0, p=2)(z[0], z[1], z[2]))


def test_losses_name_their_pairings_and_check_hyperparameters():
    assert CosineEmbeddingLoss.pairings == ("pair",)
    assert TripletMarginLoss.pairings == ("triplet",)
    with pytest.raises(ValueError, match="margin"):
        CosineEmbeddingLoss(margin=2.0)
    with pytest.raises(ValueError, match="margin"):
        TripletMarginLoss(margin=-1.0)


def test_losses_are_differentiable_and_decrease_under_sgd():
    g = torch.Generator().manual_seed(1)
    for loss_fn, views, target in [(TripletMarginLoss(), 3, None),
                                   (CosineEmbeddingLoss(), 2, torch.tensor([1.0, -1.0] * 16))]:
        z = torch.randn(views, 32, 8, generator=g, requires_grad=True)
        opt = torch.optim.SGD([z], lr=0.5)
        first = loss_fn(z, target).item()
        for _ in range(20):
            opt.zero_grad()
            loss_fn(z, target).backward()
            opt.step()
        assert loss_fn(z, target).item() < first
