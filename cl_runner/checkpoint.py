"""Checkpoints: everything needed to continue a run exactly, written atomically into the run's folder, in the
background while training goes on."""
from __future__ import annotations

import copy
import logging
import pickle
import random
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol
from pathlib import Path

import numpy as np
import torch

from cl_runner import atomic
from cl_runner.errors import UserError, first_line
from cl_runner.randomness import TrainingStreams

log = logging.getLogger(__name__)
CHECKPOINT_FILE = "checkpoint.pt"
PREVIOUS_FILE = "checkpoint.previous.pt"  # the checkpoint before the last: resume falls back to it
CHECKPOINT_KEYS = {"encoder", "loss", "optimizer", "scaler", "schedule", "rng", "position", "stats"}


@dataclass
class TrainingRecord:
    """What pretraining measured: wall time, work done, and the mean loss of every epoch, with the loss's own
    diagnostics (`Loss.figures`, e.g. the contrastive accuracy) averaged over each epoch, by name."""

    seconds: float = 0.0
    steps: int = 0
    tuples: int = 0
    images: int = 0
    epoch_losses: list[float] = field(default_factory=list)
    epoch_figures: dict[str, list[float]] = field(default_factory=dict)

    @property
    def tuples_per_second(self) -> float:
        return self.tuples / self.seconds if self.seconds else 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


@dataclass
class LoopPosition:
    """Where the training loop stands, enough to continue it exactly: epochs completed, steps done in the current
    epoch, that epoch's tuple order, its running sums of the loss and of the loss's figures, and the record of the
    training so far."""

    record: TrainingRecord = field(default_factory=TrainingRecord)
    epoch: int = 0
    step_in_epoch: int = 0
    order: torch.Tensor | None = None
    epoch_loss_sum: float = 0.0
    epoch_figure_sums: dict[str, float] = field(default_factory=dict)


class Stateful(Protocol):
    """What a checkpoint holds a part of the run by: a model, a loss, an optimizer, a schedule, a grad scaler."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> object: ...


class Checkpointer:
    """Saves and restores the run's parts (`states`, by their keys in the file: the model, the loss's own state
    such as a momentum encoder or a queue, optimizer, learning-rate schedule, grad scaler, the online monitor's
    head; None for one the run has not), every RNG (python, numpy, torch, CUDA, the training `streams`) and the
    position in training, as one file replaced atomically. In a distributed run every process holds the same
    state, so rank 0 alone writes (`writes`) and every process restores from that one file.

    A save copies the state on the training thread (`snapshot`: to the host, so that training can go on changing
    the originals) and serializes and writes that copy in a background thread while training goes on; one write at
    a time, each save waiting for the one before. `wait()` waits for the write in flight and raises its error (a
    full disk, a read-only folder), as does the next save; leaving a `with checkpointer:` block waits too, so that
    no write outlives training."""

    def __init__(self, run_dir: Path, states: dict[str, Stateful | None], streams: TrainingStreams,
                 writes: bool = True):
        self.path, self.previous, self.writes = run_dir / CHECKPOINT_FILE, run_dir / PREVIOUS_FILE, writes
        self.states, self.streams = states, streams
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self.writing: Future | None = None

    def describe(self) -> str:
        """The last checkpoint (once the one being written is whole), or that there is none."""
        self.wait()
        return str(self.path) if self.path.exists() else "none written yet"

    def payload(self, state: LoopPosition) -> dict:
        """What a checkpoint holds, as the bound objects give it now: their own tensors, not copies."""
        return {
            **{key: None if part is None else part.state_dict() for key, part in self.states.items()},
            "rng": {"python": random.getstate(), "numpy": numpy_state(), "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    "streams": self.streams.state_dict()},
            "position": {"epoch": state.epoch, "step_in_epoch": state.step_in_epoch,
                         "order": None if state.order is None else state.order.cpu(),
                         "epoch_loss_sum": state.epoch_loss_sum, "epoch_figure_sums": state.epoch_figure_sums},
            "stats": vars(state.record),
        }

    def save(self, state: LoopPosition, wait: bool = False) -> str:
        """Checkpoint the state as it is now, written in the background (with `wait`, whole on return); returns
        the file's path. The error of the write before, if it failed, is raised here."""
        if not self.writes:
            return str(self.path)
        self.wait()
        self.writing = self.writer.submit(self._write, snapshot(self.payload(state)))
        if wait:
            self.wait()
        return str(self.path)

    def wait(self) -> None:
        """Until the checkpoint being written is whole; its write's error, if any, is raised here."""
        writing, self.writing = self.writing, None
        if writing is not None:
            writing.result()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, kind, error, trace) -> None:
        """Training ends: the checkpoint being written is waited for. Its write's error is raised, unless training
        is already ending with an error of its own, which is kept (the write's is logged)."""
        if kind is None:
            self.wait()
            return
        try:
            self.wait()
        except Exception as failed:
            log.error("the last checkpoint was not written: %s", first_line(failed))

    def _write(self, payload: dict) -> None:
        atomic.write_torch(self.path, payload, previous=self.previous)

    def restore(self) -> LoopPosition:
        """Load the checkpoint into the bound objects; returns the position to continue from. Only tensors and
        plain values are read (torch's weights_only unpickler): a file holding anything else is refused in one
        line, and nothing in it runs. A damaged one (cut short by a full disk, a copy stopped half way) falls
        back to the checkpoint before it, which the log says; without one it is refused in one line."""
        try:
            payload = load_payload(self.path)
        except DamagedCheckpoint as damaged:
            if not self.previous.exists():
                raise
            log.warning("%s; resuming from the checkpoint before it, %s", damaged, self.previous)
            payload = load_payload(self.previous)
        for key, part in self.states.items():
            if part is not None:
                part.load_state_dict(payload.get(key))  # None: a part the run that wrote the file did not have
        rng = payload["rng"]
        random.setstate(rng["python"])
        set_numpy_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"]:
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.streams.load_state_dict(rng["streams"])
        position = payload["position"]
        order = position["order"]
        return LoopPosition(record=TrainingRecord(**payload["stats"]), epoch=position["epoch"],
                            step_in_epoch=position["step_in_epoch"],
                            order=None if order is None else order.to(self.streams.order.device),
                            epoch_loss_sum=position["epoch_loss_sum"],
                            epoch_figure_sums=position.get("epoch_figure_sums", {}))  # none before they existed


class DamagedCheckpoint(UserError):
    """A checkpoint file that cannot be read (cut short, empty, not a checkpoint)."""


def load_payload(path: Path) -> dict:
    """A checkpoint's contents, read by torch's weights_only unpickler (tensors, containers, numbers, strings:
    nothing in the file can run). Anything else, a damaged file or another kind of file: a UserError, one line."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UserError(f"{path} holds objects other than tensors and plain values (a checkpoint of a cl-run before "
                        f"2026-11-29 holds numpy arrays; any other may hold code): refused, and nothing in it was "
                        f"run ({first_line(err)})") from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise DamagedCheckpoint(f"{path} cannot be read: it is damaged or not a checkpoint ({first_line(err)}); "
                                "restore it from a copy, or start the run again in a new folder") from err
    if not isinstance(payload, dict) or not CHECKPOINT_KEYS <= payload.keys():
        lacking = f" (it lacks {sorted(CHECKPOINT_KEYS - set(payload))})" if isinstance(payload, dict) else ""
        raise DamagedCheckpoint(f"{path} is not a cl-run checkpoint{lacking}")
    return payload


def snapshot(value):
    """`value` (a checkpoint's payload) with every tensor copied to the host and every dict, list and tuple
    rebuilt (a dict keeps its type and attributes: a state_dict's `_metadata`), so that training can change the
    originals while the copy is written. A GPU's tensors go to pinned memory without blocking, then one wait."""
    gpus: set[torch.device] = set()

    def copied(value):
        if isinstance(value, torch.Tensor):
            value = value.detach()
            if value.is_cuda:
                gpus.add(value.device)
                return torch.empty_like(value, device="cpu", pin_memory=True).copy_(value, non_blocking=True)
            return value.to("cpu", copy=True)
        if isinstance(value, dict):
            rebuilt = copy.copy(value)
            for key, item in value.items():
                rebuilt[key] = copied(item)
            return rebuilt
        if type(value) in (list, tuple):
            return type(value)(copied(item) for item in value)
        return value

    result = copied(value)
    for gpu in gpus:
        torch.cuda.current_stream(gpu).synchronize()
    return result


def numpy_state() -> dict:
    """numpy's global RNG state as plain values and a tensor (np.random.get_state() holds an array)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def set_numpy_state(state: dict) -> None:
    """Restore what `numpy_state()` saved."""
    np.random.set_state((state["kind"], state["keys"].numpy().astype(np.uint32), state["position"],
                         state["has_gauss"], state["cached_gaussian"]))
