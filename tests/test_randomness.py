"""One random stream per purpose: runs of one seed share their draws (common random numbers), and the baseline
each run reports is its own encoder as initialized."""
import json

import pytest
import torch
from hydra import compose, initialize_config_dir

from cl_runner import evaluation, experiment, parts
from cl_runner.data.datasets import Digits
from cl_runner.randomness import TrainingStreams, stream_seed
from conftest import REPO

SMALL = ["dataset=digits", "batch_size=32", "device=cpu"]


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=[*SMALL, *overrides])


def first_batch(*overrides: str, tmp_path):
    """The encoder as built, and the first step's tuple ids and batch, of a run with these overrides."""
    cfg = composed(*overrides)
    train = Digits().read("train").head(256)
    built = parts.build_training(cfg, train, torch.device("cpu"), "fp32", tmp_path)
    ids = torch.randperm(built.sampler.tuples_per_epoch(), generator=built.streams.order)[:cfg.batch_size]
    return built.encoder, ids, built.sampler.batch(ids, built.streams)


def test_streams_are_distinct_per_purpose_and_fixed_per_seed():
    seeds = {stream_seed(0, p) for p in ("init", "order", "negatives", "augment", "evaluation")}
    assert len(seeds) == 5 and all(0 <= s < 2**63 for s in seeds)
    assert stream_seed(0, "order") == stream_seed(0, "order") != stream_seed(1, "order")
    a, b = TrainingStreams.from_seed(3), TrainingStreams.from_seed(3)
    assert torch.equal(torch.rand(4, generator=a.augment), torch.rand(4, generator=b.augment))


def test_runs_that_differ_in_the_loss_share_weights_tuples_negatives_and_views(tmp_path):
    encoder_a, ids_a, batch_a = first_batch("loss=cosine_embedding", "aug=simclr", tmp_path=tmp_path / "a")
    encoder_b, ids_b, batch_b = first_batch("loss=contrastive", "aug=simclr", tmp_path=tmp_path / "b")
    for (name, a), b in zip(encoder_a.state_dict().items(), encoder_b.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(ids_a, ids_b)
    assert torch.equal(batch_a.images, batch_b.images)  # the same negatives and the same augmentation draws
    assert torch.equal(batch_a.target, batch_b.target)


def test_runs_that_differ_in_the_augmentation_share_order_and_negatives(tmp_path):
    encoder_a, ids_a, batch_a = first_batch("loss=triplet", "aug=none", tmp_path=tmp_path / "a")
    encoder_b, ids_b, batch_b = first_batch("loss=triplet", "aug=guo", tmp_path=tmp_path / "b")
    assert all(torch.equal(a, b) for a, b in zip(encoder_a.state_dict().values(), encoder_b.state_dict().values()))
    assert torch.equal(ids_a, ids_b)
    anchors_a, positives_a, negatives_a = batch_a.images.view(3, 32, 1, 28, 28)
    anchors_b, positives_b, negatives_b = batch_b.images.view(3, 32, 1, 28, 28)
    assert torch.equal(anchors_a, anchors_b) and torch.equal(negatives_a, negatives_b)
    assert not torch.equal(positives_a, positives_b)  # the augmentation is what differs


def test_another_seed_draws_other_weights_and_tuples(tmp_path):
    encoder_a, ids_a, _ = first_batch("seed=0", tmp_path=tmp_path / "a")
    encoder_b, ids_b, _ = first_batch("seed=1", tmp_path=tmp_path / "b")
    assert not torch.equal(ids_a, ids_b)
    assert not all(torch.equal(a, b) for a, b in zip(encoder_a.state_dict().values(),
                                                     encoder_b.state_dict().values()))


@pytest.mark.parametrize("loss", ["cosine_embedding", "triplet"])
def test_the_baseline_equals_an_untrained_run_of_the_same_seed(tmp_path, loss):
    common = [f"loss={loss}", "aug=guo", "dataset.train_subset=300", "eval.tsne_points=0", "seed=4"]
    trained = experiment.run(composed(*common, "epochs=1"), tmp_path / "trained", {}, common)
    untrained = experiment.run(composed(*common, "epochs=0"), tmp_path / "untrained", {}, common)
    assert trained["baseline"] == untrained["baseline"] == evaluation.scores_only(untrained)
    for protocol in ("paper", "standard"):
        assert trained[protocol] != untrained[protocol]  # it did train
        for name, gain in trained["gain"][protocol].items():
            assert gain == trained[protocol][name] - untrained[protocol][name]
        assert set(untrained["gain"][protocol].values()) == {0.0}
    saved = json.loads((tmp_path / "trained" / "metrics.json").read_text())
    assert saved["baseline"] == trained["baseline"] and saved["seed"] == 4
