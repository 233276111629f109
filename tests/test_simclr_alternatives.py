"""SimCLR's alternatives to NT-Xent (Chen et al. 2020, Table 2; Table 4 compares them): NT-Logistic and the
in-batch margin triplet loss, against references written anchor by anchor from Table 2."""
import math

import pytest
import torch

from cl_runner.losses import InBatchMarginLoss, NTLogisticLoss
from cl_runner.losses.simclr_alternatives import semi_hard
from conftest import loss_before_and_after_sgd


def pairs(z):
    """Each anchor's normalized embedding, its positive's and its negatives', as Table 2 names them: u, v+, v-."""
    flat = torch.cat([z[0], z[1]])
    flat = flat / flat.norm(dim=1, keepdim=True)
    n = z.shape[1]
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        yield flat[i], flat[positive], [flat[k] for k in range(2 * n) if k not in (i, positive)]


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def semi_hard_of(u, v_plus, v_minus, margin=2.0):
    """FaceNet's semi-hard negatives (eq. 4), in similarities: u . v+ - margin < u . v- < u . v+."""
    return [v for v in v_minus if float(u @ v_plus) - margin < float(u @ v) < float(u @ v_plus)]


def nt_logistic_reference(z, temperature, mining=False):
    total, anchors = 0.0, 0
    for u, v_plus, v_minus in pairs(z):
        v_minus = semi_hard_of(u, v_plus, v_minus) if mining else v_minus
        if not v_minus:  # no semi-hard negative: the positive term alone
            total += -math.log(sigmoid(float(u @ v_plus) / temperature))
            anchors += 1
            continue
        negatives = sum(-math.log(sigmoid(-float(u @ v) / temperature)) for v in v_minus) / len(v_minus)
        total += -math.log(sigmoid(float(u @ v_plus) / temperature)) + negatives
        anchors += 1
    return total / anchors


def margin_reference(z, margin, mining=False):
    total, anchors = 0.0, 0
    for u, v_plus, v_minus in pairs(z):
        v_minus = semi_hard_of(u, v_plus, v_minus, margin) if mining else v_minus
        if not v_minus:  # an anchor without semi-hard negatives: a term of 0
            anchors += 1
            continue
        total += sum(max(float(u @ v) - float(u @ v_plus) + margin, 0.0) for v in v_minus) / len(v_minus)
        anchors += 1
    return total / anchors


def test_hand_computed_cases():
    # two tuples, views equal, the tuples orthogonal: s+ = 1, each anchor's two negatives s- = 0
    z = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[3.0, 0.0], [0.0, 1.0]]])
    expected = -math.log(sigmoid(1.0)) - math.log(sigmoid(0.0))
    assert NTLogisticLoss(temperature=1.0)(z).item() == pytest.approx(expected, rel=1e-6)
    assert InBatchMarginLoss(margin=0.5)(z).item() == pytest.approx(0.0, abs=1e-7)  # 0 - 1 + 0.5 < 0
    assert InBatchMarginLoss(margin=1.5)(z).item() == pytest.approx(0.5, rel=1e-6)  # 0 - 1 + 1.5


def test_both_equal_table_2_anchor_by_anchor():
    z = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert NTLogisticLoss(temperature=0.2)(z).item() == pytest.approx(nt_logistic_reference(z, 0.2), rel=1e-9)
    assert InBatchMarginLoss(margin=0.8)(z).item() == pytest.approx(margin_reference(z, 0.8), rel=1e-9)
    for loss in (NTLogisticLoss(), InBatchMarginLoss()):  # symmetric in the views
        assert loss(z.flip(0)).item() == pytest.approx(loss(z).item(), rel=1e-9)


def test_semi_hard_mining_keeps_the_negatives_farther_than_the_positive_within_the_margin():
    # one anchor's similarities: its positive 0.6; negatives at 0.9 (hard), 0.5 and 0.2 (semi-hard at margin 0.5),
    # -0.5 (easy: outside the margin)
    angles = torch.tensor([0.0, math.acos(0.6), -math.acos(0.9), math.acos(0.5) + 2 * math.pi, -math.acos(0.2),
                           math.acos(-0.5)])
    flat = torch.stack([angles.cos(), angles.sin()], dim=1).double()
    similarity = flat @ flat.T
    negatives = torch.zeros(6, 6, dtype=torch.bool)
    negatives[0, 2:] = True
    mined = semi_hard(similarity, similarity[:, 1:2], negatives, margin=0.5)
    assert mined[0].tolist() == [False, False, False, True, True, False] and not mined[1:].any()
    assert semi_hard(similarity, similarity[:, 1:2], negatives)[0].tolist() == [False] * 3 + [True] * 3


def test_with_semi_hard_mining_both_equal_table_2_on_the_mined_negatives():
    for seed in range(3):
        z = torch.randn(2, 6, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        mined = NTLogisticLoss(temperature=0.3, mining="semi_hard")(z).item()
        assert mined == pytest.approx(nt_logistic_reference(z, 0.3, mining=True), rel=1e-9)
        assert mined != pytest.approx(NTLogisticLoss(temperature=0.3)(z).item(), rel=1e-3)
        mined = InBatchMarginLoss(margin=0.4, mining="semi_hard")(z).item()
        assert mined == pytest.approx(margin_reference(z, 0.4, mining=True), rel=1e-9)
    assert NTLogisticLoss(mining="semi_hard")(torch.ones(2, 3, 2)).isfinite()  # no semi-hard negative at all


@pytest.mark.parametrize("loss_fn", [NTLogisticLoss(), InBatchMarginLoss(), NTLogisticLoss(mining="semi_hard"),
                                     InBatchMarginLoss(mining="semi_hard")],
                         ids=["nt_logistic", "margin", "nt_logistic_sh", "margin_sh"])
def test_they_decrease_under_sgd(loss_fn):
    z = torch.randn(2, 32, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
    first, last = loss_before_and_after_sgd(lambda: loss_fn(z), [z], lr=0.5)
    assert last < first


def test_impossible_settings_are_refused_in_one_line():
    with pytest.raises(ValueError, match="loss.temperature must be > 0, got 0"):
        NTLogisticLoss(temperature=0)
    with pytest.raises(ValueError, match=r"loss.margin must lie in \(0, 2\]"):
        InBatchMarginLoss(margin=3)
    with pytest.raises(ValueError, match="loss.mining must be one of none, semi_hard, got 'hard'"):
        InBatchMarginLoss(mining="hard")
    assert NTLogisticLoss.pairings == InBatchMarginLoss.pairings == ("multiview",)
    assert NTLogisticLoss.two_views and InBatchMarginLoss.two_views
