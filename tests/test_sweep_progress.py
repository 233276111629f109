"""The sweep's one progress view: how many jobs a sweep makes, how its folder's jobs stand, and the view itself in
a real parallel sweep."""
from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest
from omegaconf import OmegaConf

from cl_runner.sweep_progress import job_states, sweep_size
from conftest import DATA_ROOT, run_cli


def sweep_config(task: list[str], params: dict | None = None):
    return OmegaConf.create({"hydra": {"overrides": {"task": task}, "sweeper": {"params": params}}})


def test_a_sweep_has_the_product_of_its_swept_values_in_jobs():
    assert sweep_size(sweep_config(["seed=0,1,2", "epochs=1"])) == 3
    assert sweep_size(sweep_config(["seed=0,1"], {"loss": "triplet,cosine_embedding", "aug": "none,guo,simclr"})) == 12
    assert sweep_size(sweep_config(["seed=range(5)", "loss=triplet,ntxent"])) == 10
    assert sweep_size(sweep_config(["epochs=1"])) == 1
    assert sweep_size(sweep_config(["loss=glob(*)"])) is None  # needs the config's options: not counted
    search = sweep_config(["loss.temperature=interval(0.1,1.0)"])
    search.hydra.sweeper.n_trials = 7
    assert sweep_size(search) == 7  # an Optuna search: its trials


def test_the_jobs_of_a_sweep_folder_are_counted_by_their_status(tmp_path):
    for name, status in [("a", {"status": "completed"}), ("b", {"status": "failed"}),
                         ("c", {"status": "running", "pid": os.getppid()}),  # a live process
                         ("d", {"status": "running", "pid": 2**22 + 12345}),  # a dead process: not running
                         ("e", {"status": "interrupted"})]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "status.json").write_text(json.dumps(status))
    assert job_states(tmp_path) == {"done": 1, "running": 1, "failed": 1}


def on_a_terminal(args: list[str], cwd) -> tuple[int, str]:
    """`python -m cl_runner ARGS` with its stderr on a pseudo-terminal, as a user's shell gives it: the exit code
    and everything it drew there."""
    main, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 24 rows of 120 columns
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    process = subprocess.Popen([sys.executable, "-m", "cl_runner", *args], cwd=cwd, stdout=subprocess.DEVNULL,
                               stderr=terminal, env={**env, "CL_DATA_ROOT": str(DATA_ROOT)})
    os.close(terminal)
    drawn = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the process closed its end
            break
        if not chunk:
            break
        drawn += chunk
    os.close(main)
    return process.wait(timeout=600), drawn.decode(errors="replace")


@pytest.mark.slow
def test_parallel_jobs_show_one_sweep_view_instead_of_their_own_bars(tmp_path):
    code, drawn = on_a_terminal(["-m", "dataset=digits", "epochs=1", "batch_size=64", "eval.tsne_points=60",
                                 "seed=0,1,2", "hydra.launcher.n_jobs=2", "hydra.sweep.dir=s"], tmp_path)
    assert code == 0, drawn[-2000:]
    screens = drawn.replace("\r", "\n")
    assert "sweep: 100%" in screens and "3/3" in screens and "job" in screens
    assert "step/s" not in screens and "steps/s" not in screens  # no job drew its own bar


@pytest.mark.slow
def test_without_a_terminal_nothing_is_drawn(tmp_path):
    result = run_cli(["-m", "dataset=digits", "epochs=1", "batch_size=64", "eval.tsne_points=0",
                      "eval.protocols=[paper]", "eval.baseline=false", "seed=0,1", "hydra.launcher.n_jobs=2",
                      "hydra.sweep.dir=s"], tmp_path, launcher=None)
    assert result.returncode == 0 and "sweep:" not in result.stderr and "step/s" not in result.stderr
