import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cl_runner.batch import BatchShare, TupleBatch
from cl_runner.losses import (BarlowTwinsLoss, ContrastiveLoss, CosineEmbeddingLoss, DebiasedNTXentLoss, NPairLoss,
                               NTXentLoss, SupConLoss, TripletMarginLoss, VICRegLoss)
from conftest import loss_before_and_after_sgd


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
                                   (CosineEmbeddingLoss(), 2, torch.tensor([1.0, -1.0] * 16)),
                                   (ContrastiveLoss(), 2, torch.tensor([1.0, -1.0] * 16))]:
        z = torch.randn(views, 32, 8, generator=g, requires_grad=True)
        first, last = loss_before_and_after_sgd(lambda: loss_fn(z, target), [z], lr=0.5)
        assert last < first


def ntxent_reference(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's algorithm 1, written out loop by loop: l(i, j) = -log(exp(s_ij / T) / sum_{k != i} exp(s_ik / T)),
    L = mean over the 2N ordered positive pairs."""
    z = torch.cat([z1, z2])
    z = z / z.norm(dim=1, keepdim=True)
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        denominator = sum(torch.exp(z[i] @ z[k] / temperature) for k in range(2 * n) if k != i)
        total += -torch.log(torch.exp(z[i] @ z[j] / temperature) / denominator)
    return total / (2 * n)


def test_ntxent_on_a_hand_computed_case():
    # two images, two views each; view 2 equals view 1. Normalized: a = (1, 0), b = (0, 1).
    z = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[3.0, 0.0], [0.0, 1.0]]])
    # anchor a: positive a (s = 1), negatives b, b (s = 0): -log(e / (e + 2)) with T = 1; the same for all four
    expected = -math.log(math.e / (math.e + 2))
    assert NTXentLoss(temperature=1.0)(z).item() == pytest.approx(expected, rel=1e-6)


def test_ntxent_equals_simclrs_pseudocode_and_is_symmetric_in_its_views():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 6, 5, generator=g)
    loss = NTXentLoss(temperature=0.3)
    assert loss(z).item() == pytest.approx(ntxent_reference(z[0], z[1], 0.3).item(), rel=1e-5)
    assert loss(z).item() == pytest.approx(loss(z.flip(0)).item(), rel=1e-6)


def test_ntxent_with_dot_similarity_is_the_pseudocode_without_l2_normalization():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    flat, n = torch.cat([z[0], z[1]]), 5
    expected = sum(-torch.log(torch.exp(flat[i] @ flat[(i + n) % (2 * n)] / 0.7)
                              / sum(torch.exp(flat[i] @ flat[k] / 0.7) for k in range(2 * n) if k != i))
                   for i in range(2 * n)) / (2 * n)
    assert NTXentLoss(temperature=0.7, similarity="dot")(z).item() == pytest.approx(expected.item(), rel=1e-9)
    scaled = NTXentLoss(temperature=0.7, similarity="dot")(3 * z).item()
    assert scaled != pytest.approx(expected.item(), rel=1e-3)  # the norms count, as they do not under cosine
    assert NTXentLoss(temperature=0.7)(3 * z).item() == pytest.approx(NTXentLoss(temperature=0.7)(z).item())
    with pytest.raises(ValueError, match="loss.similarity must be cosine or dot, got 'l1'"):
        NTXentLoss(similarity="l1")


def test_ntxent_with_labels_leaves_same_class_images_out_of_the_negatives():
    z = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]], [[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]]])
    labels = torch.tensor([0, 1, 0])
    loss = NTXentLoss(temperature=1.0)
    assert loss(z, labels=labels).item() < loss(z).item()  # image 2 no longer repels image 0
    assert loss(z, labels=torch.tensor([0, 1, 2])).item() == pytest.approx(loss(z).item())


def supcon_reference(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Khosla et al. 2020, eq. 2, anchor by anchor."""
    flat = torch.cat(list(z))
    flat = flat / flat.norm(dim=1, keepdim=True)
    all_labels = labels.repeat(len(z))
    total, anchors = 0.0, 0
    for i in range(len(flat)):
        positives = [p for p in range(len(flat)) if p != i and all_labels[p] == all_labels[i]]
        denominator = sum(torch.exp(flat[i] @ flat[a] / temperature) for a in range(len(flat)) if a != i)
        total += sum(-torch.log(torch.exp(flat[i] @ flat[p] / temperature) / denominator)
                     for p in positives) / len(positives)
        anchors += 1
    return total / anchors


def test_supcon_equals_the_papers_formula_and_reduces_to_ntxent_without_shared_classes():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 8, 4, generator=g)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2])
    assert SupConLoss(0.2)(z, labels=labels).item() == pytest.approx(supcon_reference(z, labels, 0.2).item(),
                                                                     rel=1e-5)
    unique = torch.arange(8)
    assert SupConLoss(0.2)(z, labels=unique).item() == pytest.approx(NTXentLoss(0.2)(z).item(), rel=1e-6)
    with pytest.raises(ValueError, match="needs class labels"):
        SupConLoss()(z)


@pytest.mark.parametrize("loss_fn", [NTXentLoss(0.5), SupConLoss(0.5)], ids=["ntxent", "supcon"])
def test_in_batch_losses_decrease_under_sgd(loss_fn):
    g = torch.Generator().manual_seed(2)
    z = torch.randn(2, 16, 8, generator=g, requires_grad=True)
    labels = torch.arange(16) % 4
    first, last = loss_before_and_after_sgd(lambda: loss_fn(z, labels=labels), [z], lr=0.5)
    assert last < first


def test_contrastive_hand_computed():
    first = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    second = torch.tensor([[3.0, 0.0], [0.5, 0.0], [2.0, 0.0]])
    target = torch.tensor([1.0, -1.0, -1.0])
    # similar at d=3: 9/2; dissimilar at d=0.5, m=1: 0.25/2; dissimilar beyond the margin: 0
    loss = ContrastiveLoss(margin=1.0)(torch.stack([first, second]), target)
    assert loss.item() == pytest.approx((4.5 + 0.125 + 0) / 3, rel=1e-4)


def debiased_reference(z1, z2, temperature, tau_plus):
    """Chuang et al. 2020's published pseudocode, anchor by anchor."""
    out = torch.cat([z1, z2])
    out = out / out.norm(dim=1, keepdim=True)
    n_pairs = len(z1)
    total = 0.0
    for i in range(2 * n_pairs):
        j = (i + n_pairs) % (2 * n_pairs)
        pos = torch.exp(out[i] @ out[j] / temperature)
        neg = sum(torch.exp(out[i] @ out[k] / temperature) for k in range(2 * n_pairs) if k not in (i, j))
        n = 2 * n_pairs - 2
        ng = max((-tau_plus * n * pos + neg) / (1 - tau_plus), torch.tensor(n * math.exp(-1 / temperature)))
        total += -torch.log(pos / (pos + ng))
    return total / (2 * n_pairs)


def test_debiased_equals_its_pseudocode_and_is_ntxent_at_tau_plus_zero():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 6, 4, generator=g)
    for tau_plus in (0.1, 0.3):
        assert DebiasedNTXentLoss(0.5, tau_plus)(z).item() == pytest.approx(
            debiased_reference(z[0], z[1], 0.5, tau_plus).item(), rel=1e-5)
    assert DebiasedNTXentLoss(0.5, 0.0)(z).item() == pytest.approx(NTXentLoss(0.5)(z).item(), rel=1e-6)
    assert DebiasedNTXentLoss(0.5, 0.1)(z).item() == pytest.approx(DebiasedNTXentLoss(0.5, 0.1)(z.flip(0)).item())


def test_npair_hand_computed():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    positives = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    # anchor 0: a.p0 = 2, a.p1 = 0 -> log(1 + e^-2); anchor 1: a.p1 = 1, a.p0 = 0 -> log(1 + e^-1)
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2
    regularizer = (1 + 1 + 4 + 1) / 2 / 2
    loss = NPairLoss(l2_reg=0.1)(torch.stack([anchors, positives]))
    assert loss.item() == pytest.approx(expected + 0.1 * regularizer, rel=1e-6)


def barlow_reference(z1, z2, lam):
    a = (z1 - z1.mean(0)) / z1.std(0, unbiased=False)
    b = (z2 - z2.mean(0)) / z2.std(0, unbiased=False)
    n, d = a.shape
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[k, i] * b[k, j] for k in range(n)) / n
            total += (1 - c) ** 2 if i == j else lam * c ** 2
    return total


def test_barlow_twins_equals_its_formula_is_symmetric_and_zero_for_identical_decorrelated_views():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(2, 16, 3, generator=g)
    loss = BarlowTwinsLoss(0.005)
    assert loss(z).item() == pytest.approx(barlow_reference(z[0], z[1], 0.005).item(), rel=1e-4)
    assert loss(z).item() == pytest.approx(loss(z.flip(0)).item(), rel=1e-5)
    signs = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])  # uncorrelated columns
    assert loss(torch.stack([signs, signs])).item() == pytest.approx(0.0, abs=1e-4)


def vicreg_reference(z1, z2, weights):
    invariance = ((z1 - z2) ** 2).mean()
    variance = covariance = 0.0
    for z in (z1, z2):
        n, d = z.shape
        std = torch.sqrt(z.var(0) + 1e-4)
        variance += torch.clamp(1 - std, min=0).mean() / 2
        centred = z - z.mean(0)
        cov = centred.T @ centred / (n - 1)
        covariance += sum(cov[i, j] ** 2 for i in range(d) for j in range(d) if i != j) / d
    return weights[0] * invariance + weights[1] * variance + weights[2] * covariance


def test_vicreg_equals_its_formula_and_is_symmetric():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(2, 12, 4, generator=g) * 0.5
    loss = VICRegLoss(25.0, 25.0, 1.0)
    assert loss(z).item() == pytest.approx(vicreg_reference(z[0], z[1], (25.0, 25.0, 1.0)).item(), rel=1e-5)
    assert loss(z).item() == pytest.approx(loss(z.flip(0)).item(), rel=1e-6)


@pytest.mark.parametrize("loss_fn", [DebiasedNTXentLoss(), NPairLoss(), BarlowTwinsLoss(), VICRegLoss()],
                         ids=["debiased", "npair", "barlow_twins", "vicreg"])
def test_two_view_losses_decrease_under_sgd(loss_fn):
    g = torch.Generator().manual_seed(6)
    z = torch.randn(2, 32, 8, generator=g, requires_grad=True)
    first, last = loss_before_and_after_sgd(lambda: loss_fn(z), [z], lr=0.05)
    assert last < first


def test_ntxent_builds_its_masks_once_per_batch_shape_and_gives_the_same_loss():
    loss = NTXentLoss(temperature=0.5)
    z = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(0))
    first, again = loss(z), loss(z)
    assert torch.equal(first, again) and len(loss.instance_masks) == 1
    masks = loss.masks(2, 6, None, z.device)
    assert all(a is b for a, b in zip(masks, loss.masks(2, 6, None, z.device)))  # the cached tensors
    assert all(torch.equal(a, b) for a, b in zip(masks, NTXentLoss.masks_of(2, 6, None, z.device)))
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss(z, labels=labels)  # label-aware masks change with every batch: never cached
    assert len(loss.instance_masks) == 1
