"""loss=supervised: SimCLR's supervised baseline (Table 1, Figure 7), cross-entropy through a linear classifier on
the backbone, checked against its formula, in training and in a whole run."""
from __future__ import annotations

import json
import math

import pytest
import torch

from cl_runner.batch import BatchShare, TupleBatch
from cl_runner.errors import ConfigError
from cl_runner.losses import SupervisedLoss
from cl_runner.models import Encoder, PamiCNN
from conftest import loss_before_and_after_sgd, run_cli


def supervised_loss(classes: int = 3) -> tuple[SupervisedLoss, Encoder]:
    torch.manual_seed(0)
    encoder = Encoder(PamiCNN(1), projector=[16, 8])
    loss_fn = SupervisedLoss()
    loss_fn.classes = classes
    loss_fn.setup(encoder, batch_size=4)
    return loss_fn, encoder


def test_the_loss_is_the_classifiers_cross_entropy_over_every_view():
    loss_fn, _ = supervised_loss()
    features = torch.randn(2, 4, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 2, 1, 2])
    weight, bias = loss_fn.classifier.weight, loss_fn.classifier.bias
    expected = 0.0
    for view in range(2):
        for i in range(4):
            scores = weight @ features[view, i] + bias
            expected += -(scores[labels[i]] - torch.logsumexp(scores, 0)).item()
    assert loss_fn(features, None, labels).item() == pytest.approx(expected / 8, rel=1e-5)


def test_the_classifier_sits_on_the_backbone_and_the_head_stays_as_initialized():
    loss_fn, encoder = supervised_loss()
    assert loss_fn.classifier.in_features == PamiCNN.embedding_dim and loss_fn.classifier.out_features == 3
    assert not any(p.requires_grad for p in encoder.projector.parameters())
    head = [p.clone() for p in encoder.projector.parameters()]
    backbone = [p.clone() for p in encoder.backbone.parameters()]
    images = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    batch = TupleBatch(images, views=2, labels=torch.tensor([0, 1, 2, 0]))

    def encode(module, x):
        return module(x).view(2, 4, -1)

    trained = [p for p in (*encoder.parameters(), *loss_fn.parameters()) if p.requires_grad]
    first, last = loss_before_and_after_sgd(lambda: loss_fn.training_loss(encoder, batch, BatchShare.split(4),
                                                                          encode), trained, lr=0.1)
    assert last < first
    assert all(torch.equal(a, b) for a, b in zip(head, encoder.projector.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(backbone, encoder.backbone.parameters()))


def test_impossible_settings_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="loss=supervised needs training data of 2 classes or more, got 0"):
        supervised_loss(classes=0)
    loss_fn, _ = supervised_loss()
    with pytest.raises(ConfigError, match="needs class labels: set pairing.negatives=label_aware"):
        loss_fn(torch.randn(2, 4, 32))
    assert SupervisedLoss.needs_labels and SupervisedLoss.pairings == ("multiview",)


@pytest.mark.slow
def test_a_supervised_run_trains_on_the_labels_and_is_probed_as_any_method(tmp_path):
    args = ["dataset=digits", "loss=supervised", "aug=simclr", "epochs=3", "batch_size=128", "eval.tsne_points=0",
            "eval.protocols=[paper,standard]", "hydra.run.dir=run"]
    result = run_cli(args, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["scenario"]["loss"] == "supervised" and metrics["scenario"]["pairing"] == "multiview"
    losses = metrics["train"]["epoch_losses"]
    assert losses[-1] < losses[0] < math.log(10) * 1.5  # cross-entropy over 10 classes, falling
    assert metrics["gain"]["standard"]["linear_top1"] > 0  # the labels taught the backbone something
    refused = run_cli([*args[:-1], "pairing.negatives=random", "hydra.run.dir=refused"], tmp_path)
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines()[-1].endswith("it needs pairing.negatives=label_aware")
