"""A run whose encoder collapses (every embedding equal) still completes: metrics.json with a collapse flag,
t-SNE skipped with a logged reason, the report's note."""
import json

import numpy as np
from hydra import compose, initialize_config_dir

from cl_runner import experiment, report
from cl_runner.evaluation import scores
from conftest import REPO


def test_a_collapsed_encoder_s_run_completes_with_its_metrics_and_a_flag(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(scores, "embed", lambda encoder, images, features, **_: np.full(
        (len(images), 32), 0.5, np.float32))
    overrides = ["dataset=digits", "epochs=1", "batch_size=128", "dataset.train_subset=256", "eval.tsne_points=100"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    run_dir = tmp_path / "sweep" / "job"
    experiment.run(cfg, run_dir, {"dataset": "digits", "aug": "guo", "loss": "triplet"}, overrides)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["diagnostics"]["collapsed"] and metrics["baseline"]["diagnostics"]["collapsed"]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert not (run_dir / "tsne.csv").exists() and "t-SNE skipped: every test embedding is the same" in caplog.text
    text = report.build_report(tmp_path / "sweep").read_text()
    assert "collapsed in 1 of 1 runs (every embedding equal)" in text
