"""What `cl-run resume=` reads from a run folder: only tensors and plain values, so a hostile checkpoint runs
nothing; a damaged one is refused in one line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cl_runner.checkpoint import load_payload
from cl_runner.errors import UserError
from conftest import TINY, Planted, run_main


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory) -> Path:
    """A run folder as a stopped run leaves it (a finished run's, marked interrupted): config, checkpoint."""
    from conftest import main_here

    cwd = tmp_path_factory.mktemp("interrupted")
    assert main_here([*TINY, "hydra.run.dir=run"], cwd) == 0
    run_dir = cwd / "run"
    status = json.loads((run_dir / "status.json").read_text())
    (run_dir / "status.json").write_text(json.dumps({**status, "status": "interrupted", "signal": 15}))
    return run_dir


def test_a_checkpoint_cl_run_wrote_loads_without_unpickling_any_object(interrupted_run):
    payload = load_payload(interrupted_run / "checkpoint.pt")  # torch's weights_only reader
    assert payload["position"]["epoch"] == 1 and isinstance(payload["rng"]["numpy"]["keys"], torch.Tensor)


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path, interrupted_run, capfd):
    marker = tmp_path / "ran"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("config.yaml", "overrides.yaml", "status.json"):
        (run_dir / name).write_bytes((interrupted_run / name).read_bytes())
    payload = torch.load(interrupted_run / "checkpoint.pt", weights_only=True)
    payload["stats"] = Planted(marker)
    torch.save(payload, run_dir / "checkpoint.pt")
    with pytest.raises(UserError, match="holds objects other than tensors and plain values"):
        load_payload(run_dir / "checkpoint.pt")
    code, _, err = run_main([f"resume={run_dir}"], tmp_path, capfd)
    assert code == 2 and not marker.exists()
    lines = [line for line in err.splitlines() if line.startswith("cl-run:")]
    assert len(lines) == 1 and "checkpoint.pt holds objects other than tensors" in lines[0] and "nothing" in lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("damage", ["truncated", "empty", "not a checkpoint"])
def test_a_damaged_checkpoint_is_refused_in_one_line_naming_the_file(tmp_path, interrupted_run, damage):
    path = tmp_path / "checkpoint.pt"
    whole = (interrupted_run / "checkpoint.pt").read_bytes()
    if damage == "truncated":
        path.write_bytes(whole[:len(whole) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(UserError, match=str(path)) as refused:
        load_payload(path)
    assert "\n" not in str(refused.value)


def test_a_damaged_last_checkpoint_falls_back_to_the_one_before_it(tmp_path, capfd):
    from conftest import main_here

    assert main_here([*TINY, "epochs=2", "hydra.run.dir=run"], tmp_path) == 0
    run_dir = tmp_path / "run"
    previous = torch.load(run_dir / "checkpoint.previous.pt", weights_only=True)
    assert previous["position"]["epoch"] == 1  # the one before the last (epoch 2's)
    whole = (run_dir / "checkpoint.pt").read_bytes()
    (run_dir / "checkpoint.pt").write_bytes(whole[:len(whole) // 3])  # cut short, as by a full disk
    status = json.loads((run_dir / "status.json").read_text())
    (run_dir / "status.json").write_text(json.dumps({**status, "status": "interrupted", "signal": 15}))
    code, _, err = run_main([f"resume={run_dir}"], tmp_path, capfd)
    assert code == 0, err[-2000:]
    log = (run_dir / "cl_run.log").read_text()
    assert "checkpoint.pt cannot be read" in log and "resuming from the checkpoint before it" in log
    assert "resuming from" in log and "at epoch 1" in log
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
