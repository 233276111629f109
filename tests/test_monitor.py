"""Online monitoring (#24): the monitor's curves on the validation split while a run trains, the online head, the
collapse warning and stop, and its state in checkpoints."""
import json
import logging

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cl_runner.data.datasets import ImageSet, read_digits
from cl_runner.models import Encoder, PamiCNN
from cl_runner.monitor import Monitor
from cl_runner.evaluation.probes import Probes
from conftest import run_main


@pytest.mark.slow
def test_the_monitors_curves_rise_while_the_embedded_default_trains(tmp_path, capfd):
    code, _, err = run_main(["epochs=3", "dataset.train_subset=4000", "dataset.val_fraction=0.1",
                             "eval.monitor_every=1", "eval.tsne_points=0", f"hydra.run.dir={tmp_path / 'run'}"],
                            tmp_path, capfd)
    assert code == 0, err[-2000:]
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    curves = {name: [e.value for e in events.Scalars(f"monitor/{name}")]
              for name in ("knn_top1", "head_top1", "rankme", "uniformity", "normalized_std")}
    assert all(len(values) == 3 for values in curves.values())  # one point an epoch
    assert curves["head_top1"][-1] > curves["head_top1"][0] + 0.05  # the online head learns alongside
    assert curves["knn_top1"][-1] > 0.5 and curves["knn_top1"][-1] >= curves["knn_top1"][0] - 0.02
    assert "epoch 3 monitor: rankme" in (tmp_path / "run" / "cl_run.log").read_text()
    assert "val" in json.loads((tmp_path / "run" / "metrics.json").read_text())


def test_a_forced_collapse_warns_once_and_stop_on_collapse_ends_the_run_with_its_checkpoint(tmp_path, capfd):
    """Weight decay 19 at lr 0.05 shrinks every convolution weight by 0.05 a step: within the first epoch the
    study CNN's last convolution gives 0 and its sigmoid 0.5 for every image, one embedding for all (RankMe 1,
    normalized std 0), in any precision and thread count."""
    code, _, err = run_main(["dataset=digits", "epochs=3", "optimizer.weight_decay=19", "dataset.val_fraction=0.2",
                             "eval.monitor_every=1", "train.stop_on_collapse=true", f"hydra.run.dir={tmp_path / 'run'}"],
                            tmp_path, capfd)
    assert code != 0
    assert "cl-run: error: the representation collapsed by epoch 1" in err and "Traceback" not in err
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "failed" and "train.stop_on_collapse" in status["error"]
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    assert (tmp_path / "run" / "cl_run.log").read_text().count("the representation has collapsed") == 1


def test_the_collapse_check_warns_once(caplog):
    digits = read_digits("train").head(64)
    monitor = Monitor(Encoder(PamiCNN(1)), digits, digits, bank=64, probes=Probes())
    spread = {"rankme": 12.0, "normalized_std": 0.1}
    collapsed = {"rankme": 1.0, "normalized_std": 0.001}
    with caplog.at_level(logging.WARNING, logger="cl_runner.monitor"):
        assert not monitor.collapsed(spread)
        assert monitor.collapsed(collapsed) and monitor.collapsed(collapsed)
    assert len([r for r in caplog.records if "collapsed" in r.message]) == 1


def test_the_online_head_learns_from_detached_features_only():
    """The head's step leaves the encoder's gradients untouched: monitoring does not change what trains."""
    digits = read_digits("train").head(128)
    images = torch.from_numpy(np.asarray(digits.images, dtype=np.float32) / 255)
    encoder = Encoder(PamiCNN(1))
    monitor = Monitor(encoder, digits, ImageSet(digits.images, digits.labels, digits.classes), bank=128,
                      probes=Probes())
    before = monitor.head.weight.detach().clone()
    encoder.train()
    encoder(images).sum().backward()  # the training forward: the hook catches the backbone's features
    grads = [p.grad.clone() for p in encoder.parameters()]
    monitor.step(digits.labels)
    assert not torch.equal(before, monitor.head.weight)
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, encoder.parameters()))
    state = monitor.state_dict()
    fresh = Monitor(Encoder(PamiCNN(1)), digits, digits, bank=128, probes=Probes())
    fresh.load_state_dict(state)
    assert torch.equal(fresh.head.weight, monitor.head.weight)


@pytest.mark.parametrize("overrides, message", [
    (["eval.monitor_every=1"], "eval.monitor_every watches the validation split"),
    (["train.stop_on_collapse=true"], "train.stop_on_collapse acts on the monitor's measurements")])
def test_monitoring_without_its_validation_split_is_refused(tmp_path, capfd, overrides, message):
    code, _, err = run_main(overrides, tmp_path, capfd)
    assert code != 0 and message in err and "Traceback" not in err
