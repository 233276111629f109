"""Hyperparameter search with Hydra's Optuna sweeper (cl_runner/search.py, report/study.py): what a trial returns,
the study continued when run again (finished trials kept, interrupted ones run again with their parameters,
failed ones recorded while the search goes on), and the search's report. The searches run cl-run's own function
here, one trial after another; the search killed mid-trial is a real process (slow)."""
from __future__ import annotations

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from cl_runner import search
from cl_runner.report import main as report_main
from cl_runner.report.study import FRESH_SEEDS
from conftest import DATA_ROOT, run_cli, run_main

SEARCH = ["-m", "hydra/sweeper=optuna", "dataset=digits", "dataset.val_fraction=0.2", "loss=ntxent", "epochs=1",
          "batch_size=64", "eval.tsne_points=0", "log_every=5", "loss.temperature=tag(log,interval(0.1,1.0))",
          "optimizer.lr=interval(0.01,0.1)"]


def study_of(sweep: Path) -> optuna.Study:
    return optuna.load_study(study_name="search", storage=f"sqlite:///{sweep / search.STUDY_FILE}")


def job_folders(sweep: Path) -> list[Path]:
    return sorted(p.parent for p in sweep.glob("*/status.json"))


def files_of(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file() and p.name != ".lock"}


def trials_csv(sweep: Path) -> list[dict]:
    with open(sweep / "trials.csv") as fh:
        return list(csv.DictReader(fh))


def test_a_trial_returns_its_validation_figure_and_fails_without_it():
    metrics = {"val": {"cosine_knn_top1": 0.75, "linear_top1": 0.5}, "standard": {"cosine_knn_top1": 0.9}}
    assert search.objective_value(metrics, "val.cosine_knn_top1") == 0.75
    with pytest.raises(search.TrialFailed, match="no val.knn_top1"):
        search.objective_value(metrics, "val.knn_top1")
    with pytest.raises(search.TrialFailed, match="^out of memory$"):  # the job's own error, as it recorded it
        search.objective_value({"error": "out of memory"}, "val.cosine_knn_top1")


def test_a_stopped_searchs_running_trials_are_failed_and_enqueued_with_their_parameters(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="search",
                                direction="maximize")
    asked = [study.ask() for _ in range(4)]
    params = [{"x": t.suggest_float("x", 0.0, 1.0), "n": t.suggest_int("n", 1, 9)} for t in asked]
    study.tell(asked[0], 0.5)
    study.tell(asked[1], state=TrialState.FAIL)  # a job that failed: it counts, and is not run again
    assert search.finished(study) == 2

    assert search.requeue_interrupted(study) == 2  # trials 2 and 3 were running when the search was killed
    trials = study.get_trials()
    assert [t.state for t in trials[2:4]] == [TrialState.FAIL, TrialState.FAIL]
    assert [t.user_attrs[search.INTERRUPTED] for t in trials[2:4]] == [4, 5]  # the trials that run them again
    assert search.finished(study) == 2  # an interrupted trial does not count towards n_trials
    again = [study.ask() for _ in range(2)]
    assert [t.number for t in again] == [4, 5]
    assert [{"x": t.suggest_float("x", 0.0, 1.0), "n": t.suggest_int("n", 1, 9)} for t in again] == params[2:4]
    assert search.requeue_interrupted(study) == 2  # killed again: run again again
    assert search.finished(study) == 2


def test_a_search_refuses_a_test_figure_and_needs_a_validation_split(tmp_path, capfd):
    code, _, err = run_main([*SEARCH, "search.objective=standard.linear_top1", "hydra.sweep.dir=s"], tmp_path, capfd)
    assert code == 2 and err.strip().splitlines()[-1] == (
        "cl-run: error: search.objective=standard.linear_top1: a search maximizes a validation figure, one of "
        "val.linear_top1, val.linear_top3, val.linear_top5, val.knn_top1, val.cosine_knn_top1, val.rankme (never a "
        "test figure)")
    code, _, err = run_main([*SEARCH, "dataset.val_fraction=0", "hydra.sweep.dir=s"], tmp_path, capfd)
    assert code == 2 and err.strip().splitlines()[-1].startswith(
        "cl-run: error: search.objective=val.cosine_knn_top1 needs a validation split: set dataset.val_fraction")
    assert not job_folders(tmp_path / "s")


@pytest.mark.slow
def test_a_second_search_in_the_same_folder_is_refused_while_the_first_runs(tmp_path, capfd):
    (tmp_path / "s").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'w'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()",
                               str(tmp_path / "s" / ".lock")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)  # holds the lock until the test ends it, however long that takes
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = run_main([*SEARCH, "hydra.sweep.dir=s"], tmp_path, capfd)
    finally:
        holder.kill()
        holder.wait()
    assert code == 2 and err.strip().splitlines()[-1] == (
        "cl-run: error: s is being searched by another cl-run process; wait for it or give this search another "
        "hydra.sweep.dir")


def test_a_search_runs_its_trials_reports_them_and_continues_to_a_larger_total(tmp_path, capfd):
    quick = [*SEARCH, "epochs=0", "eval.baseline=false", "hydra.sweep.dir=s"]  # trials of untrained encoders
    code, out, err = run_main([*quick, "hydra.sweeper.n_trials=2"], tmp_path, capfd)
    assert code == 0, err[-3000:]
    sweep = tmp_path / "s"
    trials = study_of(sweep).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    folders = job_folders(sweep)
    assert len(folders) == 2
    for trial in trials:  # each trial's value is its job's validation figure
        folder = next(f for f in folders if f"loss.temperature={trial.params['loss.temperature']}," in f.name)
        metrics = json.loads((folder / "metrics.json").read_text())
        assert trial.value == metrics["val"]["cosine_knn_top1"]
        assert {f"val.{name}" for name in metrics["val"] if name not in ("scored_images", "confusion_matrix")} == \
            set(search.OBJECTIVES)

    report = (sweep / "results.md").read_text()
    best = max(trials, key=lambda t: t.value)
    assert f"## Best setting: trial {best.number}" in report
    assert "measured once at the end of its run and seen only after the choice" in report
    assert [(r["trial"], r["state"], r["val.cosine_knn_top1"]) for r in trials_csv(sweep)] == \
        [(str(t.number), "completed", f"{t.value:.4f}") for t in trials]
    assert (sweep / "search.png").stat().st_size > 10_000

    kept = {f.name: files_of(f) for f in folders}
    code, out, err = run_main([*quick, "hydra.sweeper.n_trials=2"], tmp_path, capfd)
    assert code == 0 and "2 of 2 trials finished earlier, 0 to run" in out + err
    assert len(study_of(sweep).get_trials()) == 2
    code, out, err = run_main([*quick, "hydra.sweeper.n_trials=3"], tmp_path, capfd)
    assert code == 0 and "2 of 3 trials finished earlier, 1 to run" in out + err
    grown = study_of(sweep).get_trials()
    assert [t.state for t in grown] == [TrialState.COMPLETE] * 3
    assert grown[2].params not in [t.params for t in trials]  # a new draw, not the first run's first trial again
    assert len(job_folders(sweep)) == 3
    assert {f.name: files_of(f) for f in job_folders(sweep) if f.name in kept} == kept  # untouched
    assert len(trials_csv(sweep)) == 3

    # the report's command measures the best setting on fresh seeds with a grid sweep (two seeds here, for time)
    command = next(line.strip() for line in (sweep / "results.md").read_text().splitlines()
                   if line.strip().startswith("cl-run -m "))
    seeds = ",".join(str(s) for s in range(1, FRESH_SEEDS + 1))
    assert f"seed={seeds}" in command and "hydra.sweep.dir=s-best" in command
    code, out, err = run_main(shlex.split(command.replace(f"seed={seeds}", "seed=1,2"))[1:], tmp_path, capfd)
    assert code == 0, err[-3000:]
    remeasured = [json.loads((f / "metrics.json").read_text()) for f in job_folders(tmp_path / "s-best")]
    assert sorted(m["seed"] for m in remeasured) == [1, 2]
    best = max(study_of(sweep).get_trials(), key=lambda t: t.value)
    config = (job_folders(tmp_path / "s-best")[0] / "config.yaml").read_text()
    assert f"temperature: {best.params['loss.temperature']}" in config


def test_a_search_run_again_from_scratch_asks_for_the_same_trials(tmp_path, capfd):
    quick = [*SEARCH, "epochs=0", "eval.baseline=false", "hydra.sweeper.n_trials=1"]
    for sweep in ("a", "b"):
        assert run_main([*quick, f"hydra.sweep.dir={sweep}"], tmp_path, capfd)[0] == 0
    assert study_of(tmp_path / "a").trials[0].params == study_of(tmp_path / "b").trials[0].params  # seeded sampler
    assert run_main([*quick, "hydra.sweeper.sampler.seed=1", "hydra.sweep.dir=c"], tmp_path, capfd)[0] == 0
    assert study_of(tmp_path / "c").trials[0].params != study_of(tmp_path / "a").trials[0].params


def test_a_study_continues_only_from_the_config_its_trials_started_from(tmp_path, capfd):
    quick = [*SEARCH, "eval.baseline=false", "hydra.sweeper.n_trials=1", "hydra.sweep.dir=s"]
    assert run_main([*quick, "epochs=0"], tmp_path, capfd)[0] == 0
    code, _, err = run_main([*quick, "epochs=1"], tmp_path, capfd)  # trials of 1 epoch would be ranked with 0's
    assert code == 2 and err.strip().splitlines()[-1] == (
        "cl-run: error: s holds a search of another config (epochs=0 there, 1 here); give this search another "
        "hydra.sweep.dir")
    assert len(study_of(tmp_path / "s").trials) == 1
    widened = [a.replace("interval(0.01,0.1)", "interval(0.01,0.3)") for a in quick]  # the space may change
    code, _, err = run_main([*widened, "epochs=0", "hydra.sweeper.n_trials=2"], tmp_path, capfd)
    assert code == 0, err[-3000:]
    assert len(study_of(tmp_path / "s").trials) == 2


def test_a_search_over_a_config_groups_options_reports_them(tmp_path, capfd):
    args = [*SEARCH[:-2], "epochs=0", "eval.baseline=false", "aug=choice(guo,simclr)", "hydra.sweeper.n_trials=2",
            "hydra/sweeper/sampler=grid", "hydra.sweep.dir=s"]
    code, _, err = run_main(args, tmp_path, capfd)
    assert code == 0, err[-3000:]
    rows = trials_csv(tmp_path / "s")
    assert sorted(r["aug"] for r in rows) == ["guo", "simclr"] and all(r["job"].startswith("aug=") for r in rows)
    assert (tmp_path / "s" / "search.png").stat().st_size > 10_000  # drawn for a choice of names too


def test_a_failed_trial_is_recorded_with_its_error_and_the_search_goes_on(tmp_path, capfd):
    args = [*SEARCH[:-2], "loss.temperature=choice(0.5,-1.0)", "hydra/sweeper/sampler=grid", "hydra.sweep.dir=s"]
    code, out, err = run_main(args, tmp_path, capfd)
    assert code == 2, err[-3000:]  # a job failed, as in a grid sweep: the others ran, the report was written
    assert "loss.temperature must be > 0, got -1.0" in err.strip().splitlines()[-1]
    trials = {t.params["loss.temperature"]: t for t in study_of(tmp_path / "s").get_trials()}
    assert trials[0.5].state == TrialState.COMPLETE and trials[-1.0].state == TrialState.FAIL
    rows = {r["loss.temperature"]: r for r in trials_csv(tmp_path / "s")}
    assert rows["-1.0"]["state"] == "failed" and "loss.temperature must be > 0, got -1.0" in rows["-1.0"]["note"]
    assert f"## Best setting: trial {trials[0.5].number}" in (tmp_path / "s" / "results.md").read_text()

    for sampler, sweep in (("tpe", "t"), ("grid", "u")):  # every trial failed: said, reported, no traceback
        code, out, err = run_main([*SEARCH[:-2], "loss.temperature=choice(-1.0)", "hydra.sweeper.n_trials=2",
                                   f"hydra/sweeper/sampler={sampler}", f"hydra.sweep.dir={sweep}"], tmp_path, capfd)
        assert code == 2 and "Traceback" not in err, err[-3000:]
        assert "No trial completed" in (tmp_path / sweep / "results.md").read_text()
        assert {t.state for t in study_of(tmp_path / sweep).trials} == {TrialState.FAIL}


def test_a_broken_study_file_is_one_line_for_cl_run_and_cl_report(tmp_path, capfd):
    sweep = tmp_path / "s"
    sweep.mkdir()
    (sweep / search.STUDY_FILE).write_bytes(b"not a database" * 100)
    code, _, err = run_main([*SEARCH, "hydra.sweep.dir=s"], tmp_path, capfd)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(
        "cl-run: error: cannot open the search's study (sqlite:///s/search.db): ")
    with pytest.raises(SystemExit) as stop:
        report_main([str(sweep)])
    err = capfd.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"cl-report: error: cannot read the search's study in {sweep / 'search.db'}")
    assert (sweep / search.STUDY_FILE).read_bytes() == b"not a database" * 100  # left as it was


@pytest.mark.slow
def test_a_search_killed_mid_trial_run_again_resumes_that_trial_and_finishes_the_study(tmp_path):
    """Trials 0 and 1 are launched together (n_jobs 2) and told to Optuna together, so the kill, in trial 1 after
    its first checkpoint, leaves both running in the study although trial 0's job had completed."""
    args = [*SEARCH, "epochs=3", "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2", "hydra/launcher=basic",
            "hydra.sweep.dir=s"]
    sweep = tmp_path / "s"
    process = subprocess.Popen([sys.executable, "-m", "cl_runner", *args], cwd=tmp_path,
                               env={**os.environ, "CL_DATA_ROOT": str(DATA_ROOT)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300

    def statuses() -> dict[Path, str]:
        return {f: json.loads((f / "status.json").read_text()).get("status") for f in job_folders(sweep)}

    def second_trial_checkpointed() -> bool:
        now = statuses()
        return list(now.values()).count("completed") == 1 and any(
            (f / "checkpoint.pt").exists() for f, status in now.items() if status == "running")

    while not second_trial_checkpointed():  # trial 1 has finished its first epoch
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed = study_of(sweep).get_trials()
    assert [t.state for t in killed] == [TrialState.RUNNING] * 2

    def folder_of(trial) -> Path:
        return next(f for f in job_folders(sweep) if f"loss.temperature={trial.params['loss.temperature']}," in f.name)

    assert statuses()[folder_of(killed[0])] == "completed" and statuses()[folder_of(killed[1])] == "running"
    done = files_of(folder_of(killed[0]))

    again = run_cli(args, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert "0 of 3 trials finished earlier, 3 to run (2 interrupted, run again)" in log
    assert log.count("completed earlier with this config, its metrics reused") == 1  # trial 0's job
    assert log.count("interrupted earlier, resuming from its checkpoint") == 1  # trial 1's
    trials = study_of(sweep).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 2 + [TrialState.COMPLETE] * 3
    assert [t.user_attrs[search.INTERRUPTED] for t in trials[:2]] == [2, 3]
    assert [t.params for t in trials[2:4]] == [t.params for t in killed]
    assert trials[4].params not in [t.params for t in killed]  # a new draw
    resumed = folder_of(killed[1])
    assert "resuming from" in (resumed / "cl_run.log").read_text()
    assert len(json.loads((resumed / "metrics.json").read_text())["train"]["epoch_losses"]) == 3
    assert files_of(folder_of(killed[0])) == done  # the completed job: not run again
    assert trials[2].value == json.loads((folder_of(killed[0]) / "metrics.json").read_text())["val"]["cosine_knn_top1"]
    rows = trials_csv(sweep)
    assert [r["state"] for r in rows] == ["interrupted", "interrupted", "completed", "completed", "completed"]
    assert [r["note"] for r in rows[:2]] == ["run again as trial 2", "run again as trial 3"]
