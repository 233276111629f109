"""A sweep run again in its folder: completed jobs are skipped untouched, interrupted ones resume from their
checkpoint, failed ones run again, new values add jobs; a folder holding another config is refused. A sweep
killed or stopped by a signal is a real process (marked slow); the others run `cl-run`'s own function here."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import DATA_ROOT, finish, run_cli, run_main, spawn

SWEEP = ["-m", "dataset=digits", "batch_size=32", "eval.tsne_points=0", "eval.protocols=[paper]", "log_every=5",
         "loss=cosine_embedding,triplet", "aug=none,guo"]
FOLDER = "aug={aug},batch_size=32,dataset=digits,epochs={epochs},eval.protocols=[paper],eval.tsne_points=0," \
         "log_every=5,loss={loss},seed=0"
ORDER = [("none", "cosine_embedding"), ("guo", "cosine_embedding"), ("none", "triplet"), ("guo", "triplet")]


def job(sweep: Path, aug: str, loss: str, epochs: int = 2) -> Path:
    return sweep / FOLDER.format(aug=aug, loss=loss, epochs=epochs)


def table(sweep: Path) -> list[dict]:
    """results.csv without the wall-clock column."""
    with open(sweep / "results.csv") as fh:
        return [{k: v for k, v in row.items() if k != "train_s"} for row in csv.DictReader(fh)]


def files_of(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file()}


@pytest.mark.slow
def test_a_killed_sweep_run_again_skips_done_jobs_resumes_the_interrupted_one_and_runs_the_rest(tmp_path):
    args = [*SWEEP, "epochs=2", "hydra/launcher=basic", "hydra.sweep.dir=sweep"]  # one job after another
    assert run_cli([*args[:-1], "hydra.sweep.dir=reference"], tmp_path).returncode == 0
    process = subprocess.Popen([sys.executable, "-m", "cl_runner", *args], cwd=tmp_path,
                               env={**os.environ, "CL_DATA_ROOT": str(DATA_ROOT)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    third = job(tmp_path / "sweep", *ORDER[2])
    deadline = time.monotonic() + 300
    while not (third / "checkpoint.pt").exists():  # job 3 has finished its first epoch
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert json.loads((third / "status.json").read_text())["status"] == "running"  # killed mid-run
    done = {aug_loss: files_of(job(tmp_path / "sweep", *aug_loss)) for aug_loss in ORDER[:2]}

    again = run_cli(args, tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    for aug_loss, files in done.items():  # not retrained: every file as it was
        assert files_of(job(tmp_path / "sweep", *aug_loss)) == files
    log = again.stdout + again.stderr
    assert log.count("completed earlier with this config, its metrics reused") == 2
    assert log.count("interrupted earlier, resuming from its checkpoint") == 1
    assert "resuming from" in (third / "cl_run.log").read_text()
    assert table(tmp_path / "sweep") == [{**row, "job": row["job"]} for row in table(tmp_path / "reference")]
    assert "to resume or extend this sweep, run: cl-run -m" in log and "hydra.sweep.dir=sweep" in log


def test_a_grown_sweep_runs_only_its_new_jobs(tmp_path, capfd):
    grid = [a if not a.startswith("loss=") else "loss=triplet" for a in SWEEP]  # aug=none,guo
    code, _, _ = run_main([*grid[:-1], "aug=none", "epochs=1", "hydra.sweep.dir=s"], tmp_path, capfd)
    assert code == 0
    before = files_of(job(tmp_path / "s", "none", "triplet", epochs=1))
    code, out, err = run_main([*grid, "epochs=1", "seed=0,1", "hydra.sweep.dir=s"], tmp_path, capfd)
    assert code == 0, err[-2000:]
    log = out + err
    assert log.count("its metrics reused") == 1 and log.count(": running") == 3  # a new aug value, a new seed
    assert files_of(job(tmp_path / "s", "none", "triplet", epochs=1)) == before
    rows = table(tmp_path / "s")
    assert len(rows) == 4 and {r["seed"] for r in rows} == {"0", "1"} and {r["aug"] for r in rows} == {"none", "guo"}
    assert {r["status"] for r in rows} == {"completed"}


def test_a_job_that_failed_before_its_first_checkpoint_runs_again(tmp_path, capfd):
    args = [*SWEEP[:-2], "loss=triplet", "aug=none", "epochs=1", "hydra.sweep.dir=s"]
    assert run_main(args, tmp_path, capfd)[0] == 0
    folder = job(tmp_path / "s", "none", "triplet", epochs=1)
    status = json.loads((folder / "status.json").read_text())
    (folder / "status.json").write_text(json.dumps({**status, "status": "failed", "error": "a crash"}))
    for name in ("metrics.json", "checkpoint.pt"):
        (folder / name).unlink()
    code, out, _ = run_main(args, tmp_path, capfd)
    assert code == 0 and "stopped earlier before its first checkpoint, running again" in out
    assert json.loads((folder / "status.json").read_text())["status"] == "completed"
    assert (folder / "metrics.json").is_file()


def test_a_folder_holding_another_config_is_never_overwritten(tmp_path, capfd):
    args = [*SWEEP[:-2], "loss=triplet", "aug=none", "epochs=1", "hydra.sweep.dir=s"]
    assert run_main(args, tmp_path, capfd)[0] == 0
    folder = job(tmp_path / "s", "none", "triplet", epochs=1)
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    saved["optimizer"]["lr"] = 0.5  # as if the experiment's YAML had changed since
    (folder / "config.yaml").write_text(yaml.safe_dump(saved))
    before = files_of(folder)
    code, _, err = run_main(args, tmp_path, capfd)
    lines = [line for line in err.splitlines() if line.startswith("cl-run: error:")]
    assert code == 2 and len(lines) == 1
    assert "holds a run of another config (optimizer.lr=0.5 there, 0.05 here); give this sweep another " \
           "hydra.sweep.dir" in lines[0]
    assert files_of(folder) == before


@pytest.mark.slow
def test_a_killed_parallel_sweep_stops_its_workers_with_checkpoints_and_resumes_them(tmp_path):
    args = [*SWEEP[:-1], "aug=none", "epochs=4", "hydra.launcher.n_jobs=2", "hydra.sweep.dir=s"]
    process = subprocess.Popen([sys.executable, "-m", "cl_runner", *args], cwd=tmp_path,
                               env={**os.environ, "CL_DATA_ROOT": str(DATA_ROOT)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    jobs = [job(tmp_path / "s", "none", loss, epochs=4) for loss in ("cosine_embedding", "triplet")]
    deadline = time.monotonic() + 300
    while not all((j / "checkpoint.pt").exists() for j in jobs):  # both workers are past their first epoch
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # the sweep's process only: its joblib workers are orphaned
    process.wait()
    deadline = time.monotonic() + 60
    while {json.loads((j / "status.json").read_text())["status"] for j in jobs} != {"interrupted"}:
        assert time.monotonic() < deadline, "orphaned workers did not stop"
        time.sleep(0.1)
    assert {json.loads((j / "status.json").read_text())["signal"] for j in jobs} == {signal.SIGHUP}

    again = run_cli(args, tmp_path, launcher=None)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (again.stdout + again.stderr).count("interrupted earlier, resuming from its checkpoint") == 2
    assert {r["status"] for r in table(tmp_path / "s")} == {"completed"}


@pytest.mark.slow
def test_ctrl_c_on_a_parallel_sweep_checkpoints_its_jobs_in_one_line_and_the_rerun_resumes_them(tmp_path):
    args = [*SWEEP[:-1], "aug=none", "epochs=6", "hydra.launcher.n_jobs=2", "hydra.sweep.dir=s"]
    process = spawn([sys.executable, "-m", "cl_runner", *args], tmp_path,
                    {**os.environ, "CL_DATA_ROOT": str(DATA_ROOT)}, start_new_session=True)
    jobs = [job(tmp_path / "s", "none", loss, epochs=6) for loss in ("cosine_embedding", "triplet")]
    deadline = time.monotonic() + 300
    while not all((j / "checkpoint.pt").exists() for j in jobs):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    stderr = finish(process, timeout=120)
    lines = [line for line in stderr.splitlines() if line.startswith("cl-run:")]
    assert process.returncode == 128 + signal.SIGINT and "Traceback" not in stderr, stderr[-2000:]
    assert lines == ["cl-run: stopped by signal 2; the sweep's running jobs wrote their checkpoints: run the same "
                     "command again to resume it"], stderr[-2000:]
    # the first job to stop ends joblib's pool: a slower one may be ended before it says so (its last checkpoint
    # stays, and its folder's pid is gone), so "running" is possible too; either way the rerun resumes it
    assert {json.loads((j / "status.json").read_text())["status"] for j in jobs} <= {"interrupted", "running"}
    again = run_cli(args, tmp_path, launcher=None)
    assert again.returncode == 0 and (again.stdout + again.stderr).count("resuming from its checkpoint") == 2
