"""One job folder, one process: the folder's lock is the kernel's (flock), released when its holder dies."""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cl_runner import run_folder
from conftest import DATA_ROOT, run_cli

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_a_folder_held_by_a_live_process_is_refused_and_free_once_it_is_killed(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / run_folder.LOCK_FILE)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert not run_folder.hold(tmp_path)
        assert not run_folder.hold(tmp_path, wait=0.5)  # waits, then gives up
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert run_folder.hold(tmp_path) and run_folder.hold(tmp_path)  # free now; taking it twice is fine
    finally:
        holder.kill()
        run_folder.release(tmp_path)
    second = subprocess.run([sys.executable, "-c", "import sys; from cl_runner import run_folder; "
                             "print(run_folder.hold(__import__('pathlib').Path(sys.argv[1])))", str(tmp_path)],
                            capture_output=True, text=True)
    assert second.stdout.strip() == "True"  # released: another process takes it


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_workers_of_a_killed_sweep_checkpoint_exit_and_the_rerun_resumes_at_once(tmp_path, signum):
    args = ["-m", "dataset=digits", "loss=triplet", "aug=none", "epochs=4", "batch_size=64", "eval.tsne_points=0",
            "eval.protocols=[paper]", "seed=0,1,2,3", "hydra.launcher.n_jobs=2", "hydra.sweep.dir=s"]
    sweep = subprocess.Popen([sys.executable, "-m", "cl_runner", *args], cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env={**os.environ, "CL_DATA_ROOT": str(DATA_ROOT)})

    def states() -> dict:
        return job_states(tmp_path / "s")

    deadline = time.monotonic() + 300
    while True:  # a worker is in its second job, past that job's first checkpoint
        now = states()
        done_by = {s["pid"] for s in now.values() if s["status"] == "completed"}
        second = [p for p, s in now.items() if s["status"] == "running" and s["pid"] in done_by
                  and os.path.exists(os.path.join(os.path.dirname(p), "checkpoint.pt"))]
        if second:
            break
        assert sweep.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    workers = {s["pid"] for s in now.values()}
    sweep.send_signal(signum)  # the sweep's own process only (kill, timeout, a scheduler): its workers are orphaned
    sweep.wait()
    deadline = time.monotonic() + 60
    while any(alive(pid) for pid in workers):
        assert time.monotonic() < deadline, "the killed sweep's workers are still alive"
        time.sleep(0.2)
    assert {s["status"] for s in states().values()} <= {"completed", "interrupted"}

    again = run_cli(args, tmp_path, launcher=None)
    assert again.returncode == 0, again.stderr[-2000:]
    assert {s["status"] for s in states().values()} == {"completed"} and len(states()) == 4


def job_states(sweep_dir: Path) -> dict:
    """Each job folder's status.json, by path (one being replaced is left out)."""
    found = {}
    for path in glob.glob(str(sweep_dir / "*" / "status.json")):
        try:
            found[path] = json.loads(open(path).read())
        except ValueError:  # being replaced
            pass
    return found


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, or a process gone between two reads of /proc, does not)."""
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


@pytest.mark.slow
def test_an_idle_worker_of_a_killed_sweep_exits_too(tmp_path):
    """A worker whose job ended before its sweep was killed waits for no next job (joblib's idle timeout is 300 s)."""
    args = ["-m", "dataset=digits", "loss=triplet", "aug=none", "epochs=1,30", "batch_size=64", "eval.tsne_points=0",
            "eval.protocols=[paper]", "hydra.launcher.n_jobs=2", "hydra.sweep.dir=s"]
    sweep = subprocess.Popen([sys.executable, "-m", "cl_runner", *args], cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env={**os.environ, "CL_DATA_ROOT": str(DATA_ROOT)})
    deadline = time.monotonic() + 300
    while True:  # the short job is done, its worker idle; the long one runs
        now = job_states(tmp_path / "s")
        if sorted(s["status"] for s in now.values()) == ["completed", "running"]:
            break
        assert sweep.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    workers = {s["pid"] for s in now.values()}
    assert len(workers) == 2
    sweep.kill()
    sweep.wait()
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in workers):
        assert time.monotonic() < deadline, "the killed sweep's workers are still alive"
        time.sleep(0.2)
    assert {s["status"] for s in job_states(tmp_path / "s").values()} <= {"completed", "interrupted"}
