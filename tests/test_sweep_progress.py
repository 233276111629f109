"""The sweep's one progress view: how many jobs a sweep makes, how its folder's jobs stand, and the view itself in
a real parallel sweep."""
from __future__ import annotations

import json
import os

import pytest
from omegaconf import OmegaConf

from cl_runner.sweep_progress import job_states, sweep_size
from conftest import run_cli


def sweep_config(task: list[str], params: dict | None = None):
    return OmegaConf.create({"hydra": {"overrides": {"task": task}, "sweeper": {"params": params}}})


def test_a_sweep_has_the_product_of_its_swept_values_in_jobs():
    assert sweep_size(sweep_config(["seed=0,1,2", "epochs=1"])) == 3
    assert sweep_size(sweep_config(["seed=0,1"], {"loss": "triplet,cosine_embedding", "aug": "none,guo,simclr"})) == 12
    assert sweep_size(sweep_config(["seed=range(5)", "loss=triplet,ntxent"])) == 10
    assert sweep_size(sweep_config(["epochs=1"])) == 1
    assert sweep_size(sweep_config(["loss=glob(*)"])) is None  # needs the config's options: not counted


def test_the_jobs_of_a_sweep_folder_are_counted_by_their_status(tmp_path):
    for name, status in [("a", {"status": "completed"}), ("b", {"status": "failed"}),
                         ("c", {"status": "running", "pid": os.getppid()}),  # a live process
                         ("d", {"status": "running", "pid": 2**22 + 12345}),  # a dead process: not running
                         ("e", {"status": "interrupted"})]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "status.json").write_text(json.dumps(status))
    assert job_states(tmp_path) == {"done": 1, "running": 1, "failed": 1}


@pytest.mark.slow
def test_parallel_jobs_show_one_sweep_view_instead_of_their_own_bars(tmp_path):
    result = run_cli(["-m", "dataset=digits", "epochs=1", "batch_size=64", "eval.tsne_points=60", "seed=0,1,2",
                      "hydra.launcher.n_jobs=2", "hydra.sweep.dir=s"], tmp_path, launcher=None)
    assert result.returncode == 0, result.stderr[-2000:]
    screens = result.stderr.replace("\r", "\n")
    assert "sweep: 100%" in screens and "3/3" in screens and "job" in screens
    assert "step/s" not in screens and "steps/s" not in screens  # no job drew its own bar
