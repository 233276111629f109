"""What `cl-run resume=` reads from a run folder: only tensors and plain values, so a hostile checkpoint runs
nothing; a damaged one is refused in one line. How checkpoints are written: from a snapshot, in the background
while training goes on, equal to what a save on the training thread wrote, and no error of a write lost."""
from __future__ import annotations

import errno
import io
import json
import os
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from cl_runner import checkpoint
from cl_runner.checkpoint import Checkpointer, LoopPosition, load_payload
from cl_runner.data.datasets import read_digits
from cl_runner.data.pairing import MultiViewSampler
from cl_runner.errors import UserError
from cl_runner.losses import MoCoLoss
from cl_runner.models import Encoder, PamiCNN
from cl_runner.optim import LARS, parameter_groups, warmup_cosine_schedule
from cl_runner.parts import TrainingParts
from cl_runner.randomness import TrainingStreams
from cl_runner.runtime import make_grad_scaler
from cl_runner.train import LoopSettings, pretrain
from conftest import Planted, TINY, preset, run_main


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


STEPS_PER_EPOCH = 4  # 256 digits in batches of 64


def digits_training(run_dir: Path) -> TrainingParts:
    """MoCo (the loss's own state: a momentum encoder, a queue) with LARS (momentum buffers) and warm-up + cosine
    (a schedule's state) on 256 digits, checkpointing into `run_dir`."""
    run_dir.mkdir(exist_ok=True)
    torch.manual_seed(0)
    streams = TrainingStreams.from_seed(0)
    sampler = MultiViewSampler()
    sampler.setup(read_digits("train").head(256), preset("none"), streams)
    encoder = Encoder(PamiCNN(1), projector=[16, 8])
    loss_fn = MoCoLoss(queue_size=192)
    loss_fn.setup(encoder, batch_size=64)
    optimizer = LARS(parameter_groups(nn.ModuleList([encoder, loss_fn]), 1e-6), lr=0.3, weight_decay=1e-6)
    schedule = warmup_cosine_schedule(optimizer, steps_per_epoch=STEPS_PER_EPOCH, epochs=2, batch_size=64,
                                      warmup_epochs=1)
    scaler = make_grad_scaler(torch.device("cpu"), "fp32")
    return TrainingParts(encoder, loss_fn, sampler, optimizer, scaler, streams, schedule,
                         Checkpointer(run_dir, {"encoder": encoder, "loss": loss_fn, "optimizer": optimizer,
                                                "scaler": scaler, "schedule": schedule}, streams))


class SlowWrites:
    """Checkpoint writes that begin (serialization included) only once training has done another step; the last
    one, after which no step comes, a moment later. `step` is pretrain's stop_signal (asked after every step): it
    counts the steps. `finished`: the steps done when each write was whole."""

    def __init__(self, monkeypatch, total_steps: int):
        self.steps, self.total_steps, self.finished = 0, total_steps, []
        self.moved_on = threading.Condition()
        real_write = Checkpointer._write

        def write(checkpointer: Checkpointer, payload: dict) -> None:
            with self.moved_on:
                began = self.steps
                assert began == self.total_steps or self.moved_on.wait_for(lambda: self.steps > began, timeout=60), \
                    "training stood still while its checkpoint was written"
            time.sleep(0.3)
            real_write(checkpointer, payload)
            self.finished.append(self.steps)

        monkeypatch.setattr(Checkpointer, "_write", write)

    def step(self) -> None:
        with self.moved_on:
            self.steps += 1
            self.moved_on.notify_all()


class Killed(Exception):
    """The process ended without a word (SIGKILL, a lost machine): no checkpoint of its own."""


def assert_same(written, expected, where: str = "payload") -> None:
    """Two loaded checkpoints hold the same: tensor for tensor (dtype, shape, values), value for value."""
    assert type(written) is type(expected), where
    if isinstance(expected, torch.Tensor):
        assert written.dtype == expected.dtype and torch.equal(written, expected), where
    elif isinstance(expected, dict):
        assert list(written) == list(expected), where
        assert getattr(written, "_metadata", None) == getattr(expected, "_metadata", None), where
        for key in expected:
            assert_same(written[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(written) == len(expected), where
        for i, (a, b) in enumerate(zip(written, expected)):
            assert_same(a, b, f"{where}[{i}]")
    else:
        assert written == expected, where


def test_a_checkpoint_written_in_the_background_equals_what_a_save_on_the_training_thread_wrote(tmp_path, monkeypatch):
    """Each save also serializes the live state at once, as the synchronous save did; the background write of
    the snapshot, serialized only after training changed the originals, holds the same."""
    expected = []
    real_save = Checkpointer.save

    def save(checkpointer: Checkpointer, state: LoopPosition, wait: bool = False) -> str:
        buffer = io.BytesIO()
        torch.save(checkpointer.payload(state), buffer)
        expected.append(tmp_path / f"expected{len(expected)}.pt")
        expected[-1].write_bytes(buffer.getvalue())
        return real_save(checkpointer, state, wait)

    monkeypatch.setattr(Checkpointer, "save", save)
    slow = SlowWrites(monkeypatch, total_steps=2 * STEPS_PER_EPOCH)
    pretrain(digits_training(tmp_path), LoopPosition(), LoopSettings(epochs=2, batch_size=64), None, slow.step)
    assert slow.finished[0] > STEPS_PER_EPOCH  # epoch 1's was serialized while epoch 2 ran
    assert_same(load_payload(tmp_path / "checkpoint.previous.pt"), load_payload(expected[0]))
    assert_same(load_payload(tmp_path / "checkpoint.pt"), load_payload(expected[1]))


def test_training_goes_on_while_a_checkpoint_is_written_and_pretrain_returns_once_the_last_is_whole(
        tmp_path, monkeypatch):
    slow = SlowWrites(monkeypatch, total_steps=2 * STEPS_PER_EPOCH)
    parts = digits_training(tmp_path)
    record = pretrain(parts, LoopPosition(), LoopSettings(epochs=2, batch_size=64), None, slow.step)
    assert slow.finished[0] > STEPS_PER_EPOCH and len(slow.finished) == 2  # the last one too, before the return
    assert parts.checkpointer.writing is None
    last = load_payload(tmp_path / "checkpoint.pt")
    assert last["position"]["epoch"] == 2 and last["stats"]["steps"] == record.steps == 2 * STEPS_PER_EPOCH
    assert load_payload(tmp_path / "checkpoint.previous.pt")["position"]["epoch"] == 1


def full_disk(monkeypatch) -> None:
    """Checkpoint files cannot be written, as on a full disk (what open() and write() raise then); others can."""
    real_write = checkpoint.atomic.write_bytes

    def write_bytes(path: Path, data: bytes, previous: Path | None = None) -> None:
        if path.name == checkpoint.CHECKPOINT_FILE:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path.with_name(f".{path.name}.tmp")))
        real_write(path, data, previous)

    monkeypatch.setattr(checkpoint.atomic, "write_bytes", write_bytes)


@pytest.mark.parametrize("epochs", [1, 2], ids=["at the end of training", "at the next save"])
def test_a_failed_background_write_is_raised_not_lost(tmp_path, monkeypatch, epochs):
    full_disk(monkeypatch)
    state = LoopPosition()
    with pytest.raises(OSError) as failed:
        pretrain(digits_training(tmp_path), state, LoopSettings(epochs=epochs, batch_size=64), None)
    assert failed.value.errno == errno.ENOSPC and state.record.steps == epochs * STEPS_PER_EPOCH
    assert not (tmp_path / "checkpoint.pt").exists()


def test_training_that_fails_itself_keeps_its_error_and_logs_the_failed_write(tmp_path, monkeypatch, caplog):
    full_disk(monkeypatch)
    steps = iter(range(1, 100))

    def killed_in_epoch_two() -> None:
        if next(steps) == STEPS_PER_EPOCH + 2:
            raise Killed

    with pytest.raises(Killed):
        pretrain(digits_training(tmp_path), LoopPosition(), LoopSettings(epochs=2, batch_size=64), None,
                 killed_in_epoch_two)
    assert "the last checkpoint was not written: [Errno 28] No space left on device" in caplog.text


def test_a_failed_background_write_ends_cl_run_with_the_one_line_of_a_full_disk(tmp_path, monkeypatch, capfd):
    full_disk(monkeypatch)
    code, _, err = run_main([*TINY, "hydra.run.dir=run"], tmp_path, capfd)
    lines = [line for line in err.splitlines() if line.startswith("cl-run:")]
    assert code == 2 and "Traceback" not in err, err[-2000:]
    assert lines == [f"cl-run: error: [Errno 28] No space left on device: '{tmp_path / 'run' / '.checkpoint.pt.tmp'}'"]
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "failed" and "No space left on device" in status["error"]


def test_resuming_from_a_checkpoint_written_in_the_background_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    settings = LoopSettings(epochs=2, batch_size=64)
    reference = digits_training(tmp_path / "reference")
    expected = pretrain(reference, LoopPosition(), settings, None)
    slow = SlowWrites(monkeypatch, total_steps=2 * STEPS_PER_EPOCH)

    def step_then_killed() -> None:  # killed in epoch 2, while epoch 1's checkpoint is written
        slow.step()
        if slow.steps == STEPS_PER_EPOCH + 2:
            raise Killed

    with pytest.raises(Killed):
        pretrain(digits_training(tmp_path / "run"), LoopPosition(), settings, None, step_then_killed)
    monkeypatch.undo()
    resumed = digits_training(tmp_path / "run")
    state = resumed.checkpointer.restore()
    assert (state.epoch, state.step_in_epoch) == (1, 0)
    record = pretrain(resumed, state, settings, None)
    assert record.epoch_losses == expected.epoch_losses and record.steps == expected.steps
    for part in ("encoder", "loss_fn", "optimizer", "schedule"):
        assert_same(getattr(resumed, part).state_dict(), getattr(reference, part).state_dict(), part)


def test_replacing_a_checkpoint_leaves_one_at_its_name_at_every_step(tmp_path, monkeypatch):
    """A process killed while a checkpoint replaces the one before: here its last rename fails, as if killed
    just before it. The last checkpoint is still at its name, and kept as the previous one too."""
    from cl_runner import atomic

    path, previous = tmp_path / "checkpoint.pt", tmp_path / "checkpoint.previous.pt"
    atomic.write_bytes(path, b"first", previous=previous)
    replace = os.replace

    def killed_before_the_last_rename(source, target):
        if Path(target) == path:
            raise KeyboardInterrupt
        replace(source, target)

    monkeypatch.setattr(os, "replace", killed_before_the_last_rename)
    with pytest.raises(KeyboardInterrupt):
        atomic.write_bytes(path, b"second", previous=previous)
    assert path.read_bytes() == b"first" and previous.read_bytes() == b"first"


def test_a_file_created_whole_is_never_seen_empty_and_never_created_twice(tmp_path):
    from cl_runner import atomic

    status = tmp_path / "status.json"
    atomic.create_bytes(status, b'{"status": "running"}')
    with pytest.raises(FileExistsError):
        atomic.create_bytes(status, b'{"status": "other"}')
    assert status.read_bytes() == b'{"status": "running"}' and sorted(tmp_path.iterdir()) == [status]
