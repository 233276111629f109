"""Nothing lost: checkpoints, resume after SIGKILL or SIGTERM, the NaN guard."""
import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from cl_runner import checkpoint, experiment
from cl_runner.evaluation import scores
from cl_runner.checkpoint import Checkpointer, LoopPosition, TrainingRecord, load_payload
from cl_runner.data.datasets import read_digits
from cl_runner.data.pairing import MultiViewSampler, TripletSampler
from cl_runner.losses import Loss, MoCoLoss, TripletMarginLoss
from cl_runner.models import Encoder, PamiCNN
from cl_runner.randomness import TrainingStreams
from cl_runner.interruption import Interrupted, SignalStop
from cl_runner.parts import TrainingParts
from cl_runner.runtime import make_grad_scaler
from cl_runner.train import Diverged, LoopSettings, pretrain
from conftest import DATA_ROOT, REPO, finish, preset, run_cli, run_main, spawn, stderr_of

RUN = ["dataset=digits", "epochs=3", "batch_size=128", "loss=triplet", "aug=simclr", "eval.tsne_points=50",
       "log_every=1", "optimizer=lars", "schedule=warmup_cosine",
       "schedule.warmup_epochs=1"]  # optimizer and schedule state too
VOLATILE = ("timing", "environment")  # wall-clock figures differ between any two runs


def comparable(metrics: dict) -> dict:
    kept = {k: v for k, v in metrics.items() if k not in VOLATILE}
    kept["train"] = {k: v for k, v in metrics["train"].items() if k in ("steps", "tuples", "images", "epoch_losses")}
    return kept


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "CL_DATA_ROOT": str(DATA_ROOT)}  # same threads as the reference: same float sums
    return spawn([sys.executable, "-m", "cl_runner", *args], cwd, env)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    """Until `path` exists (a file the run writes atomically), failing with its stderr should `process` end."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, stderr_of(process)
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@contextmanager
def stopped_at(path: Path, process: subprocess.Popen, pids=None) -> Iterator[list[int]]:
    """Once `path` exists, the run's processes (`pids()`; by default `process`) held stopped (SIGSTOP) for the
    block and continued after it, whatever the machine's load: what the block checks and sends meets them where
    they were when `path` appeared, not wherever they got to in the meantime."""
    wait_for(path, process)
    held = pids() if pids else [process.pid]
    for pid in held:
        os.kill(pid, signal.SIGSTOP)
    try:
        for pid in held:  # a stop takes effect once the process is scheduled: until then it still runs
            wait_until(lambda: proc_status(pid)["State"].split()[0] == "T", f"process {pid} never stopped")
        yield held
    finally:
        for pid in held:
            os.kill(pid, signal.SIGCONT)


def wait_pending(pid: int, signum: int) -> None:
    """Until `signum` was sent to the stopped process `pid` and waits there to be handled (/proc's pending
    sets)."""
    bit = 1 << (signum - 1)
    wait_until(lambda: any(int(proc_status(pid)[name], 16) & bit for name in ("SigPnd", "ShdPnd")),
               f"signal {signum} never reached process {pid}")


def proc_status(pid: int) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())


def wait_until(condition, failure: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, failure
        time.sleep(0.01)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    cwd = tmp_path_factory.mktemp("reference")
    assert run_cli([*RUN, "hydra.run.dir=run"], cwd).returncode == 0
    return json.loads((cwd / "run" / "metrics.json").read_text())


@pytest.mark.slow
def test_sigkill_after_the_first_checkpoint_then_resume_equals_an_uninterrupted_run(tmp_path, uninterrupted):
    process = start([*RUN, "hydra.run.dir=run"], tmp_path)
    with stopped_at(tmp_path / "run" / "checkpoint.pt", process):
        assert not (tmp_path / "run" / "metrics.json").exists()  # killed before its end
        process.send_signal(signal.SIGKILL)
    process.wait()
    result = run_cli(["resume=run"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    resumed = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert comparable(resumed) == comparable(uninterrupted)  # bit-identical on CPU: losses, probes, kNN


@pytest.mark.slow
def test_sigterm_finishes_the_step_writes_a_checkpoint_and_says_how_to_resume(tmp_path, uninterrupted):
    process = start([*RUN, "hydra.run.dir=run"], tmp_path)
    with stopped_at(tmp_path / "run" / "checkpoint.pt", process):  # the first epoch is done: the signal lands in
        assert not (tmp_path / "run" / "metrics.json").exists()  # a later one, or in evaluation: it stops there
        process.send_signal(signal.SIGTERM)
    stderr = finish(process, timeout=120)
    assert process.returncode == 143
    assert "continue with: cl-run resume=" in stderr.splitlines()[-1]
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "interrupted" and (tmp_path / "run" / "checkpoint.pt").exists()
    assert run_cli(["resume=run"], tmp_path).returncode == 0
    resumed = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert comparable(resumed) == comparable(uninterrupted)


def test_resume_refuses_a_changed_config_and_says_when_a_run_is_finished(tmp_path, capfd):
    code, _, err = run_main([*RUN, "epochs=1", "hydra.run.dir=run"], tmp_path, capfd)
    assert code == 0, err[-2000:]
    code, _, err = run_main(["resume=run", "optimizer.lr=0.7", "aug=none"], tmp_path, capfd)
    assert code == 2 and "would change: optimizer.lr=0.7, aug=none" in err
    code, _, err = run_main(["resume=run", "batch_size=128", "loss=triplet"], tmp_path, capfd)  # the run's values
    assert code == 0 and "already finished; nothing to resume" in err
    code, _, err = run_main(["resume=nowhere"], tmp_path, capfd)
    assert code == 2 and "not a cl-run run folder" in err


class NaNAtStep(Loss):
    """A triplet loss that turns NaN at a given call, to inject a divergence."""

    pairings = ("triplet",)

    def __init__(self, step: int):
        super().__init__()
        self.calls, self.step = 0, step

    def forward(self, z, target=None, labels=None):
        self.calls += 1
        loss = nn.functional.triplet_margin_loss(*z)
        return loss * float("nan") if self.calls >= self.step else loss


def digit_triplets(run_dir: Path, loss_fn: Loss) -> TrainingParts:
    """Triplets of 256 digits (4 steps an epoch at batch 64) for the study CNN with plain SGD, checkpointed to
    `run_dir`."""
    train = read_digits("train").head(256)
    streams = TrainingStreams.from_seed(0)
    sampler = TripletSampler()
    sampler.setup(train, preset("none"), streams)
    encoder = PamiCNN(1)
    optimizer = torch.optim.SGD(encoder.parameters(), lr=0.1)
    scaler = make_grad_scaler(torch.device("cpu"), "fp32")
    checkpointer = Checkpointer(run_dir, {"encoder": encoder, "loss": loss_fn, "optimizer": optimizer,
                                          "scaler": scaler, "schedule": None}, streams)
    return TrainingParts(encoder, loss_fn, sampler, optimizer, scaler, streams, checkpointer=checkpointer)


def test_a_nan_loss_stops_at_once_and_keeps_the_last_good_checkpoint(tmp_path):
    state = LoopPosition()
    with SummaryWriter(str(tmp_path / "tb")) as writer, pytest.raises(Diverged) as stop:
        pretrain(digit_triplets(tmp_path, NaNAtStep(6)), state, LoopSettings(epochs=3, batch_size=64),
                 writer)  # 4 steps an epoch: the NaN comes in epoch 2
    message = str(stop.value)
    assert "loss became NaN or infinite by step 6" in message and str(tmp_path / "checkpoint.pt") in message
    assert state.record.steps == 5  # the NaN step was not applied
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert saved["position"]["epoch"] == 1 and saved["stats"]["steps"] == 4
    assert all(torch.isfinite(p).all() for p in saved["encoder"].values() if p.is_floating_point())


@pytest.mark.parametrize("disk", ["slow", "full"])
def test_a_signal_ends_training_once_its_checkpoint_is_whole(tmp_path, monkeypatch, disk):
    """The checkpoint of a signal is waited for before `Interrupted` (the run then reports it and exits); one
    that cannot be written ends training with that error instead."""
    real_write = checkpoint.atomic.write_bytes
    written = []

    def write_bytes(path: Path, data: bytes, previous: Path | None = None) -> None:
        time.sleep(0.3)
        if disk == "full" and written:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write(path, data, previous)
        written.append(path)

    monkeypatch.setattr(checkpoint.atomic, "write_bytes", write_bytes)
    steps = iter(range(1, 100))
    with pytest.raises(OSError if disk == "full" else Interrupted) as stop:  # 4 steps an epoch: stopped in epoch 2
        pretrain(digit_triplets(tmp_path, TripletMarginLoss()), LoopPosition(), LoopSettings(epochs=3, batch_size=64),
                 None, lambda: signal.SIGTERM if next(steps) == 6 else None)
    if disk == "full":
        assert stop.value.errno == errno.ENOSPC and len(written) == 1
        return
    saved = load_payload(Path(stop.value.checkpoint))
    assert len(written) == 2 and saved["position"]["epoch"] == 1 and saved["position"]["step_in_epoch"] == 2
    assert saved["stats"]["steps"] == 6


def moco_training(run_dir: Path, stop_at_step: int | None = None) -> tuple[Encoder, MoCoLoss, TrainingRecord]:
    """Two epochs of MoCo on 256 digits, optionally stopped by a signal after `stop_at_step` steps and then
    continued by fresh objects from the checkpoint, as `cl-run resume=` does."""
    def parts():
        torch.manual_seed(0)
        streams = TrainingStreams.from_seed(0)
        sampler = MultiViewSampler()
        sampler.setup(read_digits("train").head(256), preset("none"), streams)
        encoder = Encoder(PamiCNN(1), projector=[16, 8])
        loss_fn = MoCoLoss(queue_size=192)  # not a multiple of the 128 keys a step: the queue wraps mid-step
        loss_fn.setup(encoder, batch_size=64)
        optimizer = torch.optim.SGD(encoder.parameters(), lr=0.1)  # MoCo's own parts take no gradient
        scaler = make_grad_scaler(torch.device("cpu"), "fp32")
        checkpointer = Checkpointer(run_dir, {"encoder": encoder, "loss": loss_fn, "optimizer": optimizer,
                                              "scaler": scaler, "schedule": None}, streams)
        return encoder, loss_fn, sampler, optimizer, scaler, streams, checkpointer

    def train(encoder, loss_fn, sampler, optimizer, scaler, streams, checkpointer, state, stop_signal):
        with SummaryWriter(str(run_dir / "tb")) as writer:
            return pretrain(TrainingParts(encoder, loss_fn, sampler, optimizer, scaler, streams, checkpointer=checkpointer),
                     state, LoopSettings(epochs=2, batch_size=64), writer, stop_signal)

    encoder, loss_fn, sampler, optimizer, scaler, streams, checkpointer = parts()
    steps = iter(range(1, 100))
    stop = (lambda: signal.SIGTERM if next(steps) == stop_at_step else None) if stop_at_step else (lambda: None)
    try:
        record = train(encoder, loss_fn, sampler, optimizer, scaler, streams, checkpointer, LoopPosition(), stop)
    except Interrupted:
        encoder, loss_fn, sampler, optimizer, scaler, streams, checkpointer = parts()
        state = checkpointer.restore()
        record = train(encoder, loss_fn, sampler, optimizer, scaler, streams, checkpointer, state, lambda: None)
    return encoder, loss_fn, record


def test_a_resumed_moco_run_continues_its_momentum_encoder_and_queue_exactly(tmp_path):
    *reference, reference_record = moco_training(tmp_path / "reference")
    *resumed, resumed_record = moco_training(tmp_path / "resumed", stop_at_step=3)  # mid-epoch 1 of 4 steps
    for ours, theirs in zip(reference, resumed):
        for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
            assert torch.equal(a, b), name
    assert resumed_record.epoch_losses == reference_record.epoch_losses
    assert resumed_record.epoch_figures == reference_record.epoch_figures  # the interrupted epoch's sums were kept
    assert set(reference_record.epoch_figures) == {"contrastive_accuracy", "contrastive_entropy"}
    assert all(len(values) == 2 for values in reference_record.epoch_figures.values())


@pytest.mark.slow
def test_a_signal_during_evaluation_ends_the_run_there_and_resume_redoes_the_evaluation(
        tmp_path, uninterrupted, monkeypatch, capfd):
    """SIGTERM while the probes run: the run finishes that phase, writes a checkpoint of the trained encoder
    and records `interrupted`; `resume=` then evaluates and exports exactly as an uninterrupted run."""
    evaluating = []
    real_embed = scores.embed
    monkeypatch.setattr(scores, "embed", lambda *a, **k: evaluating.append(1) or real_embed(*a, **k))

    class SignalDuringEvaluation(SignalStop):  # SIGTERM has arrived once evaluation starts
        def __enter__(self):
            self.previous = {}
            return self

        def __call__(self):
            return signal.SIGTERM if evaluating else None

        def __exit__(self, *exc):
            return None

    monkeypatch.setattr(experiment, "SignalStop", SignalDuringEvaluation)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=RUN)
    run_dir = tmp_path / "run"
    with pytest.raises(Interrupted):
        experiment.run(cfg, run_dir, uninterrupted["scenario"], RUN)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "interrupted" and status["signal"] == signal.SIGTERM
    assert evaluating and not (run_dir / "metrics.json").exists()
    monkeypatch.undo()
    code, _, err = run_main(["resume=run"], tmp_path, capfd)
    assert code == 0, err[-2000:]
    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert comparable(resumed) == comparable(uninterrupted)
