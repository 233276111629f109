"""The contract every evaluation protocol keeps, as every loss keeps `losses.base.Loss`'s.

A protocol is named in `eval.protocols`; its own settings, where it has any, are `eval.<name>` (e.g.
`eval.finetune.epochs`). It takes one encoder under evaluation (`Encoded`: the trained one, or the baseline's
initialization) and what every protocol may read (`Context`: the data's splits, the labels it may train on, the
run's seed and device, where to checkpoint), and returns its figures for `metrics.json`: accuracies as floats
(the baseline and gain are taken over those), the number of images they were scored on, and whatever else it
reports (a confusion matrix). It scores the test set once, at the end: nothing is chosen on it.
"""
from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from cl_runner import atomic
from cl_runner.data.datasets import ImageSet, Splits
from cl_runner.evaluation.probes import Probes
from cl_runner.interruption import Interrupted
from cl_runner.runtime import Compute


@dataclass
class Encoded:
    """One encoder under evaluation and its embeddings of clean images (eval.features'): the test set's, the probe
    set's (None where no protocol fits on them) and the validation split's (None: no validation split). `tag`
    names it in checkpoints: "trained", or "baseline" for the encoder as initialized."""

    tag: str
    encoder: nn.Module
    test: np.ndarray
    probe: np.ndarray | None = None
    val: np.ndarray | None = None


class Progress:
    """Where the protocols that train keep their checkpoints (`folder`, inside the run's; None: nowhere, as in
    scripts and tests) and how they learn of a stop (`stop_signal()`: a signal number, or None to go on). A
    protocol saves at the end of each of its epochs and, on resume, continues after its last saved one."""

    def __init__(self, folder: Path | None = None, stop_signal: Callable[[], int | None] = lambda: None):
        self.folder, self.stop_signal = folder, stop_signal

    def path(self, protocol: str, tag: str) -> Path | None:
        return None if self.folder is None else self.folder / f"{protocol}_{tag}.pt"

    def restore(self, protocol: str, tag: str) -> dict | None:
        """The last saved state of `protocol`'s training of the `tag` encoder, or None (none saved)."""
        path = self.path(protocol, tag)
        if path is None or not path.exists():
            return None
        return torch.load(path, map_location="cpu", weights_only=True)  # nothing in the file can run

    def save(self, protocol: str, tag: str, state: dict) -> None:
        path = self.path(protocol, tag)
        if path is not None:
            path.parent.mkdir(exist_ok=True)
            atomic.write_torch(path, state)

    def stop_if_signalled(self, protocol: str, tag: str) -> None:
        """Raise `Interrupted` (pointing at the protocol's last checkpoint) when a stop was asked for."""
        signum = self.stop_signal()
        if signum is not None:
            path = self.path(protocol, tag)
            raise Interrupted(signum, str(path) if path is not None and path.exists() else "none yet")

    def clear(self) -> None:
        """Remove the protocols' checkpoints once the run's figures are written (they served only a resume)."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class Context:
    """What every protocol may read: the `settings` (the config's `eval`), the data's splits, the run's seed and
    compute, `labelled` (indices into the probe set: the images whose labels the protocols train or fit on,
    `eval.label_fraction` of them) and the checkpoints' `progress`."""

    settings: DictConfig
    data: Splits
    seed: int
    compute: Compute
    labelled: torch.Tensor
    progress: Progress = field(default_factory=Progress)

    @property
    def device(self) -> torch.device:
        return self.compute.device

    @property
    def num_classes(self) -> int:
        return len(self.data.test.classes)

    @property
    def probes(self) -> Probes:
        s = self.settings
        return Probes(s.solver, self.device, s.knn_k, s.cosine_knn_k, s.cosine_knn_temperature)

    def labelled_probe(self) -> ImageSet:
        """The probe set's labelled share (its images and labels), on the probe set's device."""
        probe = self.data.probe
        index = self.labelled.to(probe.images.device)
        return ImageSet(probe.images.index_select(0, index), probe.labels.index_select(0, index), probe.classes)


class Protocol(ABC):
    """One way of scoring an encoder (see the module's docstring). `summary`: the figures the run's last log line
    shows; `uses_probe_embeddings`: it fits on the probe set's embeddings (the evaluation then computes them)."""

    name: ClassVar[str]
    summary: ClassVar[tuple[tuple[str, str], ...]]  # the figures of the run's log line: (key, label)
    uses_probe_embeddings: ClassVar[bool] = False

    @classmethod
    def from_settings(cls, settings: DictConfig) -> "Protocol":
        """The protocol as `settings` (the config's `eval`) configures it."""
        return cls()

    @abstractmethod
    def evaluate(self, encoded: Encoded, context: Context) -> dict:
        """The figures of `encoded` under this protocol."""
