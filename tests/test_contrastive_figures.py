"""SimCLR's Table 5 diagnostics (the contrastive accuracy and the entropy of the contrastive distribution), from
their definitions, for every loss that scores in-batch candidates, and as a run logs them."""
from __future__ import annotations

import json
import math

import pytest
import torch
from scipy.stats import entropy as scipy_entropy
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cl_runner.losses import (DebiasedNTXentLoss, InBatchMarginLoss, MoCoLoss, NPairLoss, NTLogisticLoss,
                              NTXentLoss, SupConLoss)
from cl_runner.losses.base import contrastive_figures
from conftest import run_cli

INF = float("inf")


class Projection(torch.nn.Linear):
    output_dim = 4


def test_figures_on_a_hand_computed_case():
    logits = torch.tensor([[2.0, 1.0, -INF], [0.0, 3.0, 1.0], [5.0, 0.0, 0.0]])
    positives = torch.tensor([[False, True, False], [False, True, False], [False, False, False]])
    figures = contrastive_figures(logits, positives)
    assert figures["contrastive_accuracy"].item() == 0.5  # row 0 ranks its negative first; row 2 has no positive
    expected = [scipy_entropy(torch.softmax(row[row > -INF], 0).numpy()) for row in logits]
    assert figures["contrastive_entropy"].item() == pytest.approx(sum(expected) / 3, rel=1e-6)
    assert "contrastive_entropy" not in contrastive_figures(logits, positives, entropy=False)


def test_ntxent_figures_at_their_limits():
    views = torch.eye(6)[:, :6].repeat(2, 1, 1)  # two identical views of six orthogonal embeddings
    sharp = NTXentLoss(temperature=0.01)
    sharp(views)
    assert sharp.figures["contrastive_accuracy"].item() == 1.0
    assert sharp.figures["contrastive_entropy"].item() < 1e-6  # all mass on the positive
    flat = NTXentLoss(temperature=1e6)
    flat(torch.randn(2, 6, 4))
    assert flat.figures["contrastive_entropy"].item() == pytest.approx(math.log(11), rel=1e-5)  # 2N - 1 candidates


def reference_figures(z: torch.Tensor, temperature: float) -> tuple[float, float]:
    """Anchor by anchor: the other view ranked first among the 2N - 1 others, and the softmax's entropy."""
    flat = torch.nn.functional.normalize(torch.cat([z[0], z[1]]), dim=1)
    n, hits, entropies = len(flat), 0, []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        scores = torch.stack([flat[i] @ flat[j] for j in others]) / temperature
        hits += others[int(scores.argmax())] == (i + n // 2) % n
        entropies.append(scipy_entropy(torch.softmax(scores.double(), 0).numpy()))
    return hits / n, sum(entropies) / n


@pytest.mark.parametrize("loss_fn", [NTXentLoss(0.5), NTLogisticLoss(0.5), DebiasedNTXentLoss(0.5, 0.1),
                                     SupConLoss(0.5), InBatchMarginLoss(0.5)], ids=lambda f: type(f).__name__)
def test_in_batch_losses_report_the_figures_of_their_candidates(loss_fn):
    z = torch.randn(2, 7, 5, generator=torch.Generator().manual_seed(3))
    labels = torch.arange(7)  # one class per image: SupCon's positives are the other views, as NT-Xent's
    loss_fn(z, None, labels)
    accuracy, entropy = reference_figures(z, 0.5)
    assert loss_fn.figures["contrastive_accuracy"].item() == pytest.approx(accuracy)
    if isinstance(loss_fn, InBatchMarginLoss):  # no temperature, no distribution over the candidates
        assert set(loss_fn.figures) == {"contrastive_accuracy"}
    else:
        assert loss_fn.figures["contrastive_entropy"].item() == pytest.approx(entropy, rel=1e-5)


def test_npair_and_moco_rank_the_positive_among_their_own_candidates():
    anchors = torch.eye(4)
    npair = NPairLoss(l2_reg=0.0)
    npair(torch.stack([anchors, anchors.roll(1, dims=0)]))  # every positive is another anchor's match
    assert npair.figures["contrastive_accuracy"].item() == 0.0
    npair(torch.stack([anchors, anchors]))
    assert npair.figures["contrastive_accuracy"].item() == 1.0
    moco = MoCoLoss(temperature=0.2, queue_size=8)
    moco.setup(Projection(4, 4), batch_size=4)
    moco(torch.stack([anchors, anchors]), torch.stack([anchors, anchors]))
    assert moco.figures["contrastive_accuracy"].item() == 1.0  # a key equal to its query beats the random queue
    assert 0 < moco.figures["contrastive_entropy"].item() < math.log(9)


@pytest.mark.slow
def test_a_run_logs_the_figures_per_epoch_to_metrics_and_tensorboard(tmp_path):
    result = run_cli(["dataset=digits", "loss=ntxent", "aug=simclr", "epochs=2", "batch_size=128",
                      "eval.protocols=[paper]", "eval.tsne_points=0", "hydra.run.dir=run"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads((tmp_path / "run" / "metrics.json").read_text())["train"]["epoch_figures"]
    assert set(figures) == {"contrastive_accuracy", "contrastive_entropy"}
    assert all(0 <= a <= 1 for a in figures["contrastive_accuracy"]) and len(figures["contrastive_accuracy"]) == 2
    assert all(0 < h < math.log(2 * 128 - 1) for h in figures["contrastive_entropy"])
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    logged = [e.value for e in events.Scalars("train/contrastive_accuracy")]
    assert logged == pytest.approx(figures["contrastive_accuracy"], rel=1e-6)
    assert "contrastive_accuracy" in (tmp_path / "run" / "cl_run.log").read_text()
