"""Batch-hard (Hermans et al. 2017) and semi-hard (FaceNet) mining for the study's triplet pairing, against
references written triplet by triplet from their definitions."""
from __future__ import annotations

import pytest
import torch

from cl_runner.errors import ConfigError
from cl_runner.losses import TripletMarginLoss
from conftest import loss_before_and_after_sgd


def roles(z, labels):
    """Every embedding of the batch with what it is to anchor i: 'p' (a positive), 'n' (a negative) or None."""
    b = len(labels)
    pool = [(z[0][j], ("a", j)) for j in range(b)] + [(z[1][j], ("p", j)) for j in range(b)] + \
           [(z[2][j], ("n", j)) for j in range(b)]
    for i in range(b):
        found = []
        for e, (kind, j) in pool:
            if kind == "n":
                role = "n" if j == i else None  # another triplet's negative: its class is unknown
            elif kind == "a" and j == i:
                role = None  # the anchor itself
            else:
                role = "p" if labels[j] == labels[i] else "n"
            found.append((e, role))
        yield z[0][i], found


def batch_hard_reference(z, labels, margin):
    total = 0.0
    for anchor, pool in roles(z, labels):
        hardest_p = max(float((anchor - e).norm()) for e, r in pool if r == "p")
        hardest_n = min(float((anchor - e).norm()) for e, r in pool if r == "n")
        total += max(hardest_p - hardest_n + margin, 0.0)
    return total / len(labels)


def semi_hard_reference(z, labels, margin):
    total, pairs = 0.0, 0
    for anchor, pool in roles(z, labels):
        negatives = [float((anchor - e).norm()) for e, r in pool if r == "n"]
        for e, r in pool:
            if r != "p":
                continue
            d_ap = float((anchor - e).norm())
            farther = [d for d in negatives if d > d_ap]
            d_an = min(farther) if farther else max(negatives)
            total += max(d_ap - d_an + margin, 0.0)
            pairs += 1
    return total / pairs


def test_a_hand_computed_batch():
    # two triplets of class 0 and 1 on a line: anchors at 0 and 10, positives at 1 and 12, negatives at 3 and 9
    z = torch.tensor([[[0.0], [10.0]], [[1.0], [12.0]], [[3.0], [9.0]]])
    labels = torch.tensor([0, 1])
    # anchor 0: positives {1}; negatives {3 (own), 10, 12}: hardest 1 - 3 + 1 = -1 -> 0;
    # anchor 10: positives {12}; negatives {9 (own), 0, 1}: 2 - 1 + 1 = 2
    assert TripletMarginLoss(margin=1.0, mining="batch_hard")(z, None, labels).item() == pytest.approx(1.0)
    # semi-hard: anchor 0 -> the nearest negative beyond 1 is 3: 0; anchor 10 -> none beyond 2 but 9 at 1, 0 at 10,
    # 1 at 9: the nearest beyond 2 is 9 (at distance 9): 2 - 9 + 1 < 0
    assert TripletMarginLoss(margin=1.0, mining="semi_hard")(z, None, labels).item() == pytest.approx(0.0)


@pytest.mark.parametrize("seed", range(3))
def test_both_equal_their_definitions_triplet_by_triplet(seed):
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(3, 7, 4, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (7,), generator=generator)
    hard = TripletMarginLoss(margin=0.5, mining="batch_hard")(z, None, labels).item()
    assert hard == pytest.approx(batch_hard_reference(z, labels, 0.5), rel=1e-9)
    semi = TripletMarginLoss(margin=0.5, mining="semi_hard")(z, None, labels).item()
    assert semi == pytest.approx(semi_hard_reference(z, labels, 0.5), rel=1e-9)
    assert semi != pytest.approx(hard)


@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard"])
def test_mined_losses_have_finite_gradients_and_decrease_under_sgd(mining):
    generator = torch.Generator().manual_seed(4)
    z = torch.randn(3, 16, 8, generator=generator, requires_grad=True)
    labels = torch.randint(0, 4, (16,), generator=generator)
    loss_fn = TripletMarginLoss(margin=1.0, mining=mining)
    loss_fn(z, None, labels).backward()
    assert torch.isfinite(z.grad).all()  # no NaN from the zero distance of an anchor to itself
    first, last = loss_before_and_after_sgd(lambda: loss_fn(z, None, labels), [z], lr=0.2)
    assert last < first


def test_mining_is_refused_without_labels_or_by_an_unknown_name():
    assert TripletMarginLoss(mining="batch_hard").in_batch and not TripletMarginLoss().in_batch
    with pytest.raises(ConfigError, match="needs the anchors' classes: set pairing.negatives=label_aware"):
        TripletMarginLoss(mining="semi_hard")(torch.randn(3, 4, 2))
    with pytest.raises(ConfigError, match="loss.mining must be one of none, batch_hard, semi_hard, got 'hardest'"):
        TripletMarginLoss(mining="hardest")
