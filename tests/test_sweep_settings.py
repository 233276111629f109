"""The settings of the plugins that run a sweep (cl_runner/sweep_settings.py), checked before the first job: the
joblib and submitit launchers' keys, the Optuna sweeper's and its search space. Each bad one is one line naming
the key, exit code 2, and no job folder; good ones start the sweep as before."""
from __future__ import annotations

import shutil

import pytest

from conftest import run_main

SWEEP = ["-m", "dataset=digits", "epochs=1", "eval.tsne_points=0", "seed=0,1"]
SEARCH = ["-m", "hydra/sweeper=optuna", "dataset=digits", "dataset.val_fraction=0.2", "epochs=1",
          "eval.tsne_points=0"]
SPACE = "optimizer.lr=interval(0.01,0.1)"
REFUSED = [
    ([*SWEEP, "hydra.launcher.n_jobs=0"], "hydra.launcher.n_jobs=0 is not allowed: hydra.launcher.n_jobs must be an "
                                          "integer >= 1 (jobs at once), or negative to count from the cores"),
    ([*SWEEP, "hydra.launcher.n_jobs=abc"], "hydra.launcher.n_jobs=abc: Value 'abc' of type 'str' could not be "
                                            "converted to Integer"),  # the plugin's typed config says it
    ([*SWEEP, "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=0"],
     "hydra.launcher.tasks_per_node must be an integer >= 1"),
    ([*SWEEP, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=0"],
     "hydra.launcher.timeout_min must be an integer >= 1 (minutes)"),
    ([*SWEEP, "hydra/launcher=submitit_local", "hydra.launcher.mem_gb=-4"], "hydra.launcher.mem_gb must be null or a "
                                                                            "number > 0"),
    ([*SWEEP, "hydra/launcher=slurm", "hydra.launcher.array_parallelism=0"],
     "hydra.launcher.array_parallelism must be an integer >= 1"),
    ([*SWEEP, "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=-1"], "hydra.launcher.gpus_per_node must be null "
                                                                          "or an integer >= 0"),
    ([*SWEEP, "hydra/launcher=slurm", "hydra.launcher.signal_delay_s=-1"], "hydra.launcher.signal_delay_s must be"),
    ([*SWEEP, "hydra/launcher=slurm", "hydra.launcher.partition=''"], "hydra.launcher.partition must be null"),
    ([*SWEEP, "hydra/launcher=slurm", "hydra.launcher.setup=echo"], "hydra.launcher.setup=echo: Invalid value "
                                                                    "assigned: str is not a ListConfig, list or tuple"),
    ([*SEARCH, SPACE, "hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0 is not allowed: hydra.sweeper.n_trials "
                                                   "must be an integer >= 1"),
    ([*SEARCH, SPACE, "hydra.sweeper.n_jobs=0"], "hydra.sweeper.n_jobs must be an integer >= 1"),
    ([*SEARCH, SPACE, "hydra.sweeper.direction=minimize"], "hydra.sweeper.direction must be maximize"),
    ([*SEARCH, SPACE, "hydra.sweeper.storage=search.db"], "hydra.sweeper.storage must be null (a study in memory, not "
                                                          "continued) or a database URL such as sqlite:///"),
    ([*SEARCH, SPACE, "hydra.sweeper.study_name=''"], "hydra.sweeper.study_name must be a study's name"),
    ([*SEARCH, SPACE, "hydra.sweeper.max_failure_rate=2"], "hydra.sweeper.max_failure_rate must be a number in [0, 1]"),
    ([*SEARCH, SPACE, "hydra.sweeper.sampler.seed=-1"], "hydra.sweeper.sampler.seed must be null (a fresh draw) or an "
                                                        "integer >= 0"),
    ([*SEARCH, SPACE, "hydra/sweeper/sampler=nope"], "Could not find 'hydra/sweeper/sampler/nope'; choose one of: "
                                                     "cmaes, grid, motpe, nsgaii, random, tpe"),
    ([*SEARCH, "optimizer.lr=interval(0.1,0.01)"], "optimizer.lr=interval(0.1,0.01) cannot be searched: The `low` "
                                                   "value must be smaller than or equal to the `high` value"),
    ([*SEARCH, "optimizer.lr=tag(log,interval(0,0.1))"], "cannot be searched: The `low` value must be larger than 0 "
                                                         "for a log distribution"),
    ([*SEARCH, "epochs=range(3,1)"], "epochs=range(3,1) cannot be searched"),
    ([*SEARCH, SPACE, "hydra/sweeper/sampler=grid"], "optimizer.lr=interval(0.01,0.1): hydra/sweeper/sampler=grid "
                                                     "searches a grid, which an interval has not"),
    ([*SEARCH, "optimizer.lr=0.05"], "a search (hydra/sweeper=optuna) needs a space to search"),
]


@pytest.mark.parametrize("args, message", REFUSED, ids=[" ".join(a[len(SWEEP) - 1:]) if "seed=0,1" in a else
                                                     " ".join(a[len(SEARCH):]) for a, _ in REFUSED])
def test_a_bad_launcher_or_sweeper_setting_is_one_line_before_any_job(tmp_path, capfd, args, message):
    code, out, err = run_main([*args, "hydra.sweep.dir=s"], tmp_path, capfd, launcher=None)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("cl-run: error: ") and message in lines[0], err
    assert "Traceback" not in out + err
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())  # no job started, no study


@pytest.mark.parametrize("launcher", ["local", "basic", "submitit_local", "slurm"])
def test_every_launcher_and_the_search_pass_with_the_settings_cl_run_ships(launcher, monkeypatch):
    """The shipped defaults of each launcher, and of the search with a space, are accepted as they are (SLURM's
    with an srun on the PATH, as on a cluster)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from cl_runner import sweep_settings
    from cl_runner.cli import config_dir
    from hydra_plugins.cl_runner_search import register

    register()
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    try:
        with initialize_config_dir(config_dir(), version_base="1.3"):
            for sweeper in (["hydra/sweeper=basic"], ["experiment=search_ntxent"]):
                sweep_settings.check(compose("config", overrides=[f"hydra/launcher={launcher}", *sweeper],
                                             return_hydra_config=True))
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.skipif(shutil.which("srun") is not None, reason="this machine has SLURM")
def test_the_slurm_launcher_without_slurm_says_so_before_any_job(tmp_path, capfd):
    code, _, err = run_main([*SWEEP, "hydra/launcher=slurm", "hydra.sweep.dir=s"], tmp_path, capfd, launcher=None)
    assert code == 2 and err.strip().splitlines() == [
        "cl-run: error: hydra/launcher=slurm submits the sweep's jobs to SLURM, whose srun is not on this machine's "
        "PATH: run the sweep from the cluster's login node, or here with hydra/launcher=local (or submitit_local)"]


def test_a_search_space_in_an_experiment_of_ones_own_is_checked_too(tmp_path, capfd):
    """hydra.sweeper.params, as an experiment YAML gives it (here one in a folder of the user's own, on Hydra's
    search path), is checked as the command line's space is."""
    (tmp_path / "mine" / "experiment").mkdir(parents=True)
    (tmp_path / "mine" / "experiment" / "reversed.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /hydra/sweeper: optuna\n"
        "hydra:\n  sweeper:\n    params:\n      optimizer.lr: interval(0.5, 0.1)\n")
    args = [*SEARCH, f"hydra.searchpath=[file://{tmp_path / 'mine'}]", "experiment=reversed", "hydra.sweep.dir=s"]
    code, _, err = run_main(args, tmp_path, capfd, launcher=None)
    assert code == 2 and "cl-run: error: optimizer.lr=interval(0.5, 0.1) cannot be searched" in err, err


def test_a_space_the_plugin_can_search_passes_the_checks(tmp_path, capfd):
    """experiment=search_ntxent's space (hydra.sweeper.params) with a key of the command line: one trial runs."""
    args = ["-m", "experiment=search_ntxent", "dataset=digits", "epochs=0", "eval.baseline=false",
            "hydra.sweeper.n_trials=1", "loss.temperature=choice(0.1,0.5)", "hydra/launcher=basic",
            "hydra.sweep.dir=s"]
    code, _, err = run_main(args, tmp_path, capfd, launcher=None)
    assert code == 0, err
    assert len(list((tmp_path / "s").glob("*/metrics.json"))) == 1
