"""Sweeps through Hydra's launcher plugins, in real subprocesses (marked slow): joblib's local parallel jobs and
submitit's local executor (the same code path as SLURM), including a job interrupted by submitit's own warning
signal, requeued, and resumed to the metrics of an uninterrupted run."""
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import DATA_ROOT, finish, run_cli, spawn

SWEEP = ["-m", "dataset=digits", "epochs=1", "batch_size=64", "eval.tsne_points=0", "eval.protocols=[paper]",
         "loss=cosine_embedding,triplet"]


def completed_jobs(sweep: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]


def test_the_default_launcher_runs_one_job_per_core_as_memory_allows_on_a_cpu_only_machine(monkeypatch):
    from hydra import compose, initialize_config_dir

    from cl_runner import runtime
    from cl_runner.cli import config_dir

    with initialize_config_dir(config_dir(), version_base="1.3"):
        launcher = compose("config", return_hydra_config=True).hydra.launcher
    assert "JoblibLauncher" in launcher._target_
    if torch.cuda.is_available():
        return
    assert launcher.n_jobs == runtime.local_sweep_jobs() and runtime.job_threads(launcher) == 1
    monkeypatch.setattr(runtime, "available_cores", lambda: 16)
    monkeypatch.setattr(runtime, "host_memory_available", lambda: 24 * 2**30)
    assert runtime.local_sweep_jobs() == 6  # 16 cores, but memory for 6 jobs
    monkeypatch.setattr(runtime, "host_memory_available", lambda: 2**30)
    assert runtime.local_sweep_jobs() == 1
    monkeypatch.setattr(runtime, "host_memory_available", lambda: None)
    assert runtime.local_sweep_jobs() == 16


@pytest.mark.slow
def test_a_joblib_sweep_runs_its_jobs_in_parallel_processes_sharing_the_cores(tmp_path):
    result = run_cli([*SWEEP, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweep.dir=s"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = completed_jobs(tmp_path / "s")
    cores = len(os.sched_getaffinity(0))
    assert len(jobs) == 2 and {j["environment"]["threads"] for j in jobs} == {max(1, cores // 2)}
    assert "| triplet − cosine_embedding |" in (tmp_path / "s" / "results.md").read_text()


@pytest.mark.slow
def test_a_submitit_local_sweep_completes_with_its_report(tmp_path):
    result = run_cli([*SWEEP, "hydra/launcher=submitit_local", "hydra.sweep.dir=s"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(completed_jobs(tmp_path / "s")) == 2 and (tmp_path / "s" / "results.md").is_file()


@pytest.mark.slow
def test_a_submitit_job_warned_by_its_cluster_is_requeued_and_resumes_to_equal_metrics(tmp_path):
    args = ["-m", "hydra/launcher=submitit_local", "dataset=digits", "loss=triplet", "epochs=4", "batch_size=32",
            "eval.tsne_points=0", "eval.protocols=[paper]"]
    assert run_cli([*args, "hydra.sweep.dir=reference"], tmp_path).returncode == 0
    process = spawn([sys.executable, "-m", "cl_runner", *args, "hydra.sweep.dir=s"], tmp_path,
                    {**os.environ, "CL_DATA_ROOT": str(DATA_ROOT)})
    deadline = time.monotonic() + 300
    while not list((tmp_path / "s").glob("*/checkpoint.pt")):  # the job has finished its first epoch
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    (status,) = list((tmp_path / "s").glob("*/status.json"))
    os.kill(json.loads(status.read_text())["pid"], signal.SIGUSR2)  # SLURM's warning, to the job's process
    stderr = finish(process, timeout=600)
    assert process.returncode == 0, stderr[-2000:]
    (job,) = [p.parent for p in (tmp_path / "s").glob("*/status.json")]
    log = (job / "cl_run.log").read_text()
    assert "interrupted earlier, resuming from its checkpoint" in log and "resuming from" in log
    assert json.loads((job / "status.json").read_text())["status"] == "completed"
    (reference,) = completed_jobs(tmp_path / "reference")
    (resumed,) = completed_jobs(tmp_path / "s")
    for key in ("paper", "baseline", "gain"):
        assert resumed[key] == reference[key], key
    assert resumed["train"]["epoch_losses"] == reference["train"]["epoch_losses"]


@pytest.mark.slow
def test_a_job_that_crashes_from_a_bug_is_recorded_failed_and_the_others_go_on(tmp_path):
    crashing = "loss._target_=cl_runner.losses.TripletMarginLoss,crashing_loss.CrashingLoss"
    result = run_cli(["-m", "dataset=digits", "epochs=1", "batch_size=64", "eval.tsne_points=0", "loss=triplet",
                      crashing, "hydra.sweep.dir=s"], tmp_path, launcher=None,  # the default: joblib workers
                     env={"PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent),
                                                                      os.environ.get("PYTHONPATH")]))})
    errors = [line for line in result.stderr.splitlines() if line.startswith("cl-run: error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-2000:]
    assert re.match(r"cl-run: error: job \S*loss\._target_=crashing_loss\.CrashingLoss\S*: crashed with "
                    r"RuntimeError: a bug in a loss \(traceback in ", errors[0]), errors[0]
    statuses = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "s").glob("*/status.json")}
    (crashed,) = [name for name, s in statuses.items() if s["status"] == "failed"]
    assert sum(s["status"] == "completed" for s in statuses.values()) == 1
    log = (tmp_path / "s" / crashed / "cl_run.log").read_text()
    assert "Traceback" in log and "RuntimeError: a bug in a loss" in log
    assert ",failed" in (tmp_path / "s" / "results.csv").read_text()
