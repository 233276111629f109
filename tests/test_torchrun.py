"""One run over two processes through torchrun (gloo on this CPU), as a user starts it: one run folder with every
promised file, the same folder whatever each process's clock, a stop on SIGTERM at one step with one checkpoint
that resumes to the uninterrupted run's figures, and a killed process ending the run with one clear line. These
start torchrun's processes and are marked slow; what one process decides alone is checked in this one."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import DATA_ROOT, finish, run_cli, run_main, spawn
from test_resume import comparable, stopped_at, wait_for, wait_pending

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cl_runner"]
RUN = ["dataset=digits", "loss=ntxent", "aug=simclr", "epochs=3", "batch_size=128", "eval.tsne_points=50",
       "log_every=2", "precision=fp32"]  # an in-batch loss: the embeddings are gathered every step


def torchrun(args: list[str], cwd: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "CL_DATA_ROOT": str(DATA_ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return spawn([*TORCHRUN, *args], cwd, env, **popen)


def ranks(process: subprocess.Popen) -> list[int]:
    """The pids of torchrun's two cl-run processes (children of its own that run `-m cl_runner`)."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    while True:
        pids = [int(pid) for pid in children.read_text().split() if b"cl_runner" in command_line(int(pid))]
        if len(pids) == 2:
            return pids
        time.sleep(0.05)


def command_line(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # ended meanwhile
        return b""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, dict]:
    """A whole 2-process run in the default run folder (outputs/runs/DATE/TIME)."""
    cwd = tmp_path_factory.mktemp("two_processes")
    process = torchrun(RUN, cwd)
    stderr = finish(process)
    assert process.returncode == 0, stderr[-3000:]
    folders = list((cwd / "outputs" / "runs").glob("*/*"))
    assert len(folders) == 1, folders  # both processes named the same folder: rank 0's start time
    return folders[0], json.loads((folders[0] / "metrics.json").read_text())


@pytest.mark.slow
def test_a_two_process_run_writes_one_run_folder_with_every_promised_file(uninterrupted):
    run_dir, metrics = uninterrupted
    for name in ("config.yaml", "overrides.yaml", "status.json", "metrics.json", "cl_run.log", "checkpoint.pt",
                 "encoder.pt", "tsne.csv", "tsne.png", "confusion_matrix.png"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    log = (run_dir / "cl_run.log").read_text()
    assert "2 processes" in log and "[rank 1]" not in log  # rank 0's log only
    train = metrics["train"]  # counted per global batch of 128 tuples, not per process's 64
    assert train["steps"] == 3 * math.ceil(train["tuples"] / 3 / 128) and len(train["epoch_losses"]) == 3


@pytest.mark.slow
def test_sigterm_stops_both_processes_at_one_step_and_the_resumed_run_equals_the_uninterrupted_one(
        tmp_path, uninterrupted):
    _, reference = uninterrupted
    process = torchrun([*RUN, "hydra.run.dir=run"], tmp_path)
    with stopped_at(tmp_path / "run" / "checkpoint.pt", process, lambda: ranks(process)) as held:
        assert not (tmp_path / "run" / "metrics.json").exists()  # training or evaluating: the signal stops it
        process.send_signal(signal.SIGTERM)  # to torchrun, which passes it on to both processes
        for pid in held:
            wait_pending(pid, signal.SIGTERM)
    stderr = finish(process)
    assert process.returncode != 0
    ours = [line for line in stderr.splitlines() if line.startswith("cl-run:")]
    assert len(ours) == 1 and "continue with: cl-run resume=" in ours[0], stderr[-3000:]
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "interrupted"
    resumed = torchrun(["resume=run"], tmp_path)
    stderr = finish(resumed)
    assert resumed.returncode == 0, stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert comparable(metrics) == comparable(reference)  # two processes again: the same sums, bit for bit


@pytest.mark.slow
def test_a_killed_process_ends_the_run_with_one_clear_line_within_a_minute(tmp_path):
    process = torchrun([*RUN, "epochs=20", "hydra.run.dir=run"], tmp_path, start_new_session=True)
    wait_for(tmp_path / "run" / "checkpoint.pt", process)
    rank0 = json.loads((tmp_path / "run" / "status.json").read_text())["pid"]
    (rank1,) = [pid for pid in ranks(process) if pid != rank0]
    killed = time.monotonic()
    os.kill(rank1, signal.SIGKILL)
    stderr = finish(process, timeout=120)
    assert time.monotonic() - killed < 60
    assert process.returncode != 0
    ours = [line for line in stderr.splitlines() if line.startswith("cl-run:")]
    assert len(ours) == 1, stderr[-3000:]
    assert "another process of this 2-process run ended" in ours[0] and "resume=" in ours[0]
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "failed"


@pytest.mark.slow
@pytest.mark.parametrize("args, line", [
    (["batch_size=127"], "batch_size=127 does not split evenly over 2 processes: use a multiple of 2 "
                         "(e.g. 126 or 128)"),
    (["los=triplet"], "Could not override 'los'"),  # found by every process while Hydra composes
], ids=["uneven_batch", "typo"])
def test_a_mistake_is_reported_once_by_rank_0(tmp_path, args, line):
    process = torchrun([*RUN, *args, "hydra.run.dir=run"], tmp_path)
    stderr = finish(process)
    assert process.returncode != 0
    ours = [line for line in stderr.splitlines() if line.startswith("cl-run:")]
    assert len(ours) == 1 and ours[0].startswith(f"cl-run: error: {line}"), stderr[-3000:]


@pytest.mark.slow
def test_a_submitit_job_of_two_tasks_is_the_same_two_process_run(tmp_path, uninterrupted):
    """Hydra's submitit launcher with tasks_per_node=2 (locally here; on SLURM one task per GPU) runs the job as
    one run of two processes: the same figures as torchrun's, in the sweep's job folder."""
    _, reference = uninterrupted
    result = run_cli(["-m", *RUN, "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2",
                      "hydra.launcher.cpus_per_task=1", "hydra.sweep.dir=s"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (job,) = (tmp_path / "s").glob("*seed=0")
    assert "2 processes" in (job / "cl_run.log").read_text()
    assert comparable(json.loads((job / "metrics.json").read_text())) == comparable(reference)


@pytest.mark.slow
def test_ctrl_c_in_the_terminal_stops_both_processes_with_one_checkpoint(tmp_path):
    """A terminal's Ctrl-C (SIGINT to the foreground process group) reaches torchrun, which passes it on to the
    processes (each in a session of its own): they agree on a step, and the run stops there with its checkpoint."""
    process = torchrun([*RUN, "epochs=20", "hydra.run.dir=run"], tmp_path, start_new_session=True)
    wait_for(tmp_path / "run" / "checkpoint.pt", process)
    os.killpg(process.pid, signal.SIGINT)  # what the terminal does: the whole foreground process group
    stderr = finish(process, timeout=120)
    ours = [line for line in stderr.splitlines() if line.startswith("cl-run:")]
    assert len(ours) == 1 and "stopped by signal 2" in ours[0] and "resume=" in ours[0], stderr[-3000:]
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "interrupted"


@pytest.mark.parametrize("rank, lines", [(0, 1), (1, 0)])
def test_a_sweep_under_torchrun_is_refused_before_joining_in_one_line_by_rank_0(tmp_path, capfd, rank, lines):
    """What torchrun tells each process (RANK, WORLD_SIZE, LOCAL_RANK), in this process: a sweep is refused before
    the process joins the others (there are none here to join), rank 0 says why and every rank exits with 2."""
    env = {"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)}
    code, out, err = run_main(["-m", *RUN, "hydra.sweep.dir=s"], tmp_path, capfd, env=env, launcher=None)
    ours = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(ours) == lines and "Traceback" not in out + err, err[-3000:]
    if lines:
        assert ours[0].startswith("cl-run: error: a sweep (-m) cannot run under torchrun: sweep with cl-run -m")
    assert not list((tmp_path / "s").iterdir())  # created empty before Hydra (cl-run checks it can write there)
