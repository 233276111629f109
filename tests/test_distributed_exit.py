"""How a process of a distributed run ends. The process group's gloo worker threads outlive
destroy_process_group once a DistributedDataParallel model was built (torch 2.14), so they still run while the
interpreter finalizes; one that takes the GIL then is ended by Python with pthread_exit, and that unwinding
through torch's noexcept code aborts the process ("terminate called without an active exception", SIGABRT):
what ended a resumed two-process run in CI once. `distributed.end_process` ends the process before any
finalization. Two plain processes over a FileStore make the abort happen on cue: rank 1 ends with a collective
in flight whose completion runs a Python callback on gloo's thread (as the last release of a tensor Python made
does), and rank 0 completes that collective only once rank 1's interpreter is finalizing."""
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

PROCESS = '''
import sys, threading, time
import torch
import torch.distributed as dist
from cl_runner import distributed

rank, store_path, ending = int(sys.argv[1]), sys.argv[2], sys.argv[3]
store = dist.FileStore(store_path, 2)
dist.init_process_group("gloo", store=store, rank=rank, world_size=2)
parts = [torch.empty(8) for _ in range(2)]
if rank == 0:
    store.wait(["finalizing"])
    dist.all_gather(parts, torch.zeros(8))
    store.set("completed", "1")
    threading.Event().wait()  # until the test ends this process, once rank 1 has ended


class Finalizing:
    """Goes when the interpreter clears this module, during its finalization: says so, waits for the collective
    to complete, then gives the GIL away (sleeping) for gloo's thread to take, for up to 10 s."""

    def __init__(self):
        self.store, self.sleep = store, time.sleep

    def __del__(self):
        self.store.set("finalizing", "1")
        self.store.wait(["completed"])
        for _ in range(200):
            self.sleep(0.05)


work = dist.all_gather(parts, torch.ones(8), async_op=True)
work.get_future().then(id)  # runs on gloo's thread, with the GIL, when the gather completes (a built-in:
                            # a lambda would keep this module, and so `finalizing`, alive)
if ending == "end_process":
    distributed.end_process(0)
finalizing = Finalizing()
'''


def end_rank_1(tmp_path: Path, ending: str) -> subprocess.CompletedProcess:
    script = tmp_path / "process.py"
    script.write_text(PROCESS)
    args = [str(tmp_path / "store"), ending]
    rank0 = subprocess.Popen([sys.executable, str(script), "0", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        return subprocess.run([sys.executable, str(script), "1", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
    finally:
        rank0.kill()
        rank0.wait()


@pytest.mark.slow
@pytest.mark.skipif(sys.version_info >= (3, 14), reason="Python 3.14 hangs such a thread instead of ending it")
def test_a_gloo_thread_taking_the_gil_while_python_finalizes_aborts_the_process(tmp_path):
    ended = end_rank_1(tmp_path, "finalize")
    assert ended.returncode == -6 and "terminate called without an active exception" in ended.stderr, ended.stderr


@pytest.mark.slow
def test_end_process_ends_with_its_code_before_python_finalizes(tmp_path):
    ended = end_rank_1(tmp_path, "end_process")
    assert ended.returncode == 0 and "terminate" not in ended.stderr, ended.stderr
