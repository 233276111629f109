"""A run that runs out of device memory ends in one line, keeping its checkpoint; in a sweep it ends alone.
The GPU's out-of-memory error is raised on the CPU from a stand-in training step (torch.OutOfMemoryError)."""
from __future__ import annotations

import json

import pytest
import torch

from cl_runner import train
from conftest import TINY, run_main


@pytest.fixture
def out_of_memory_at(monkeypatch):
    """Make train_step raise CUDA's out-of-memory error from the given step on, for batches of `tuples` tuples."""
    real_step = train.train_step

    def arm(step: int, tuples: int | None = None):
        calls = []

        def step_or_fail(objective, optimizer, scaler, batch, compute, **kwargs):
            calls.append(1)
            if len(calls) >= step and (tuples is None or len(batch.images) // batch.views == tuples):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)")
            return real_step(objective, optimizer, scaler, batch, compute, **kwargs)

        monkeypatch.setattr(train, "train_step", step_or_fail)
    return arm


def test_out_of_memory_ends_the_run_in_one_line_and_keeps_its_checkpoint(tmp_path, capfd, out_of_memory_at):
    out_of_memory_at(step=30)  # digits: 24 steps an epoch at batch 64, so epoch 1's checkpoint exists
    code, _, err = run_main([*TINY, "epochs=2", "hydra.run.dir=run"], tmp_path, capfd)
    lines = [line for line in err.splitlines() if line.startswith("cl-run:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err
    assert "ran out of memory with batch_size=64 (CUDA out of memory. Tried to allocate 2.00 GiB" in lines[0]
    assert "batch_size (e.g. 32)" in lines[0] and f"the last checkpoint stays in {tmp_path / 'run'}" in lines[0]
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert saved["position"]["epoch"] == 1
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "failed"


def test_in_a_sweep_the_job_out_of_memory_fails_alone(tmp_path, capfd, out_of_memory_at):
    out_of_memory_at(step=1, tuples=64)
    code, _, err = run_main(["-m", *TINY, "eval.protocols=[paper]", "batch_size=64,32", "hydra.sweep.dir=s"],
                            tmp_path, capfd)
    assert code == 2 and "ran out of memory with batch_size=64" in err
    states = {p.parent.name: json.loads(p.read_text())["status"] for p in (tmp_path / "s").glob("*/status.json")}
    assert sorted(states.values()) == ["completed", "failed"], states
    assert [state for name, state in states.items() if "batch_size=32" in name] == ["completed"]
