"""The protocols that train on labels (linear_aug, finetune) on tiny real data: what they change and what they
leave alone (MoCo's sanity check: a frozen encoder's weights do not move), the class-balanced, seeded and nested
label fractions, and a resume in the middle of a protocol's training."""
from __future__ import annotations

import json
import re
import signal

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from cl_runner import evaluation, experiment
from cl_runner.data.datasets import Splits, read_digits
from cl_runner.evaluation import classifier_training
from cl_runner.evaluation.classifier_training import Finetune, LinearAug, Recipe, batches
from cl_runner.evaluation.label_fraction import labelled_subset
from cl_runner.evaluation.protocol import Encoded, Progress
from cl_runner.evaluation.scores import evaluate_encoded, evaluation_context
from cl_runner.interruption import Interrupted, SignalStop
from cl_runner.models import Encoder, PamiCNN
from cl_runner.runtime import Compute
from conftest import REPO, TINY, main_here, run_main

RECIPE = ["eval.linear_aug.epochs=3", "eval.linear_aug.batch_size=64", "eval.finetune.epochs=2",
          "eval.finetune.batch_size=64"]


def eval_settings(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=[*RECIPE, *overrides]).eval


@pytest.fixture(scope="module")
def digits() -> Splits:
    train, test = read_digits("train"), read_digits("test")
    return Splits(train, test, train)


def encoded(data: Splits, seed: int = 0) -> Encoded:
    torch.manual_seed(seed)
    encoder = Encoder(PamiCNN(1), projector=[16, 8])
    return Encoded("trained", encoder, evaluation.embed(encoder, data.test.images),
                   evaluation.embed(encoder, data.probe.images))


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_linear_aug_trains_its_head_and_leaves_the_frozen_encoder_as_it_was(digits):
    settings = eval_settings()
    model = encoded(digits)
    before = state(model.encoder)
    model.encoder.train(True)
    figures = LinearAug.from_settings(settings).evaluate(model, evaluation_context(settings, digits, 0, Compute()))
    after = model.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm statistics alike
    assert model.encoder.training  # its mode given back
    assert len(figures["epoch_losses"]) == 3 and figures["epoch_losses"][-1] < figures["epoch_losses"][0]
    assert figures["scored_images"] == len(digits.test) and figures["labelled_images"] == len(digits.probe)
    assert {"linear_top1", "linear_top3", "linear_top5", "confusion_matrix"} <= figures.keys()
    assert np.array(figures["confusion_matrix"]).sum() == len(digits.test)


def test_finetune_changes_its_copy_of_the_encoder_and_not_the_original(digits):
    settings = eval_settings()
    model = encoded(digits)
    before = state(model.encoder)
    context = evaluation_context(settings, digits, 0, Compute())
    tuned, losses = Finetune.from_settings(settings).tune(model, context)
    assert all(torch.equal(before[k], v) for k, v in model.encoder.state_dict().items())
    changed = [k for k, v in tuned["encoder"].state_dict().items() if not torch.equal(before[k], v)]
    assert any("weight" in k for k in changed) and len(losses) == 2
    figures = Finetune.from_settings(settings).evaluate(model, context)
    assert {"top1", "top3", "top5", "scored_images", "labelled_images"} <= figures.keys()
    assert 0.0 <= figures["top1"] <= figures["top3"] <= figures["top5"] <= 1.0


def test_label_fractions_are_class_balanced_seeded_and_nested():
    labels = torch.arange(10).repeat_interleave(torch.arange(100, 200, 10))  # 100, 110, ..., 190 of each class
    one = labelled_subset(labels, 0.01, seed=0)
    ten = labelled_subset(labels, 0.1, seed=0)
    assert torch.bincount(labels[one]).tolist() == [1, 1, 1, 1, 1, 2, 2, 2, 2, 2]  # rounded, never below one
    assert torch.bincount(labels[ten]).tolist() == [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
    assert set(one.tolist()) <= set(ten.tolist())  # the 1% subset lies inside the 10% one
    assert torch.equal(ten, labelled_subset(labels, 0.1, seed=0))
    assert not torch.equal(ten, labelled_subset(labels, 0.1, seed=1))
    assert torch.equal(labelled_subset(labels, 1.0, seed=3), torch.arange(len(labels)))


def test_the_standard_protocol_fits_on_the_label_fraction_only(digits):
    settings = eval_settings("eval.label_fraction=0.1")
    model = encoded(digits)
    context = evaluation_context(settings, digits, 0, Compute())
    assert context.labelled_probe().labels.bincount().min() >= 1
    figures = evaluate_encoded(model, context)["standard"]
    assert figures["labelled_images"] == len(context.labelled) < len(digits.probe) // 5


def test_a_last_batch_of_one_image_joins_the_one_before():
    assert [len(b) for b in batches(torch.arange(129), 64)] == [64, 65]
    assert [len(b) for b in batches(torch.arange(130), 64)] == [64, 64, 2]
    assert [len(b) for b in batches(torch.arange(1), 64)] == [1]


class StopAfter:
    """A stop signal (SIGTERM's number) from the `calls`-th check on."""

    def __init__(self, calls: int):
        self.calls = calls

    def __call__(self) -> int | None:
        self.calls -= 1
        return 15 if self.calls < 0 else None


@pytest.mark.parametrize("protocol", [LinearAug, Finetune])
def test_a_stop_during_a_protocols_training_resumes_after_its_last_epoch(digits, tmp_path, protocol):
    settings = eval_settings()
    steps = len(batches(torch.arange(len(digits.probe)), 64))
    reference = protocol.from_settings(settings).evaluate(encoded(digits), evaluation_context(
        settings, digits, 0, Compute()))
    stopped = Progress(tmp_path, StopAfter(steps + 2))  # in the second epoch, after the first one's checkpoint
    with pytest.raises(Interrupted, match=f"checkpoint {tmp_path / protocol.name}_trained.pt"):
        protocol.from_settings(settings).evaluate(encoded(digits), evaluation_context(settings, digits, 0, Compute(),
                                                                                      stopped))
    saved = torch.load(tmp_path / f"{protocol.name}_trained.pt", weights_only=True)
    assert len(saved["losses"]) == 1
    resumed = protocol.from_settings(settings).evaluate(encoded(digits), evaluation_context(
        settings, digits, 0, Compute(), Progress(tmp_path)))
    assert resumed["epoch_losses"][0] == reference["epoch_losses"][0]  # the first epoch was not trained again
    np.testing.assert_allclose(resumed["epoch_losses"], reference["epoch_losses"], rtol=1e-5)
    key = "linear_top1" if protocol is LinearAug else "top1"
    assert resumed[key] == pytest.approx(reference[key], abs=2 / len(digits.test))


def test_a_recipe_has_exactly_the_keys_of_its_config():
    settings = eval_settings()
    for protocol in (LinearAug, Finetune):
        assert isinstance(protocol.from_settings(settings).recipe, Recipe)
        assert set(settings[protocol.name]) == set(Recipe.__dataclass_fields__)


RUN = [*TINY, "eval.tsne_points=0", "eval.protocols=[paper,linear_aug,finetune]", *RECIPE]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("protocols")
    assert main_here([*RUN, "hydra.run.dir=run"], root) == 0
    assert not (root / "run" / "protocols").exists()  # the protocols' checkpoints go once the figures are written
    return json.loads((root / "run" / "metrics.json").read_text())


def test_a_run_scores_the_trained_protocols_with_their_baseline_and_gain(finished):
    for protocol, key in (("linear_aug", "linear_top1"), ("finetune", "top1")):
        assert finished["gain"][protocol][key] == pytest.approx(
            finished[protocol][key] - finished["baseline"][protocol][key])
        assert len(finished[protocol]["epoch_losses"]) == (3 if protocol == "linear_aug" else 2)
    assert "standard" not in finished and "eval/finetune/top1" in evaluation.final_scores(finished)


@pytest.mark.slow
def test_a_signal_during_fine_tuning_stops_the_run_and_resume_continues_the_protocol(tmp_path, finished,
                                                                                     monkeypatch, capfd):
    """SIGTERM in the second epoch of fine-tuning: the run stops with the protocol's first epoch saved;
    `resume=` trains the protocol from there and ends with the uninterrupted run's figures."""
    tuning = []
    real = classifier_training.crop_and_flip
    monkeypatch.setattr(classifier_training, "crop_and_flip", lambda: tuning.append(1) or real())
    steps = len(batches(torch.arange(int(0.8 * 1797)), 64))

    class SignalDuringFineTuning(SignalStop):  # counts the checks made once the trained encoder's tuning began
        def __enter__(self):
            self.previous, self.checks = {}, 0
            return self

        def __call__(self):
            self.checks += len(tuning) >= 2  # linear_aug's training is the first, finetune's the second
            return signal.SIGTERM if self.checks > steps + 2 else None

        def __exit__(self, *exc):
            return None

    monkeypatch.setattr(experiment, "SignalStop", SignalDuringFineTuning)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*RUN, "checkpoint_every=1"])
    run_dir = tmp_path / "run"
    with pytest.raises(Interrupted):
        experiment.run(cfg, run_dir, finished["scenario"], [*RUN, "checkpoint_every=1"])
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    assert len(torch.load(run_dir / "protocols" / "finetune_trained.pt", weights_only=True)["losses"]) == 1
    monkeypatch.undo()
    code, _, err = run_main(["resume=run"], tmp_path, capfd)
    assert code == 0, err[-2000:]
    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert not (run_dir / "protocols").exists()
    for protocol in ("linear_aug", "finetune", "paper"):
        assert resumed[protocol].keys() == finished[protocol].keys()
        for key, value in finished[protocol].items():
            if isinstance(value, float):
                assert resumed[protocol][key] == pytest.approx(value, abs=1e-6), (protocol, key)


@pytest.mark.parametrize("override, message", [
    ("eval.label_fraction=0", r"eval.label_fraction=0 is not allowed: .*a number in \(0, 1\]"),
    ("eval.finetune.momentum=0", "eval.finetune.nesterov=true needs eval.finetune.momentum > 0"),
    ("eval.linear_aug.epochs=0", "eval.linear_aug.epochs=0 is not allowed: .*an integer >= 1"),
    ("eval.protocols=[finetuning]", r"eval.protocols.*drawn from \['paper', 'standard', 'retrieval', 'linear_aug', "
                                    r"'finetune'\]"),
])
def test_bad_protocol_settings_get_one_line(tmp_path, capfd, override, message):
    code, _, err = run_main([*TINY, override], tmp_path, capfd)
    assert code != 0 and re.search(message, err) and "Traceback" not in err, err
