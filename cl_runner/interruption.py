"""How a run stops early and cleanly: SIGINT and SIGTERM (and a cluster's warning signal) are noted, not acted
on, until the loop reaches a step or phase boundary, where it writes a checkpoint and raises `Interrupted`."""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Interrupted(BaseException):
    """Training stopped on a signal after writing a checkpoint (a BaseException: it ends a whole sweep)."""

    def __init__(self, signum: int, checkpoint: str):
        super().__init__(f"stopped by signal {signum}; checkpoint {checkpoint}")
        self.signum, self.checkpoint = signum, checkpoint

    def __reduce__(self):  # rebuilt from its fields when a worker process hands it to the sweep's process
        return Interrupted, (self.signum, self.checkpoint)


class SignalStop:
    """While active, SIGINT and SIGTERM only set a flag, so the loop can finish its step and checkpoint;
    calling the object returns the signal received (or None). A second Ctrl-C stops at once.

    Under a cluster launcher that handles SIGUSR2 itself (submitit: SLURM's warning before a time limit or a
    preemption), SIGUSR2 stops the run the same way, and `hand_on` then passes it to that handler, which requeues
    the job; the requeued job resumes from the checkpoint.

    With `parent` (a pid), the run also stops, as if sent SIGHUP, once that process is gone: a sweep job in a
    local worker process (joblib) ends with its checkpoint when its sweep is killed, instead of running on."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    CLUSTER_SIGNAL = signal.SIGUSR2

    def __init__(self, parent: int | None = None):
        self.parent = parent

    def __enter__(self) -> "SignalStop":
        self.signum = None
        self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        if callable(signal.getsignal(self.CLUSTER_SIGNAL)):  # a Python handler: a launcher's own
            self.previous[self.CLUSTER_SIGNAL] = signal.signal(self.CLUSTER_SIGNAL, self._handle)
        return self

    def hand_on(self, signum: int) -> None:
        """Pass the cluster's warning signal to the launcher's handler (after the run has checkpointed)."""
        handler = self.previous.get(signum)
        if signum == self.CLUSTER_SIGNAL and callable(handler):
            handler(signum, None)

    def _handle(self, signum: int, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def __call__(self) -> int | None:
        if self.signum is None and self.parent is not None and os.getppid() != self.parent:
            self.signum = signal.SIGHUP  # orphaned: the parent died without a word
        return self.signum


def orphaned(parent: int | None) -> bool:
    """Whether this worker process's sweep (`parent`, a pid; None: not a worker) is gone."""
    return parent is not None and os.getppid() != parent


def leave_orphaned_worker() -> None:
    """End a worker whose sweep is gone at once: nobody collects its results or hands it another job."""
    logging.shutdown()
    os._exit(128 + signal.SIGHUP)


_JOB_RUNNING = threading.Event()
_WATCHED: list[int] = []


@contextmanager
def worker_job(parent: int | None) -> Iterator[None]:
    """One sweep job in a local worker process (joblib) of the sweep process `parent` (None: not a worker).

    Killed, a sweep hands out no more jobs, and its idle workers would wait for one until joblib's idle timeout
    (300 s). So the worker ends within a second of its sweep's death when it has no job, and at the end of the job
    it has; during the job, SignalStop(parent) ends the job at its next boundary with a checkpoint."""
    if parent is None:
        yield
        return
    if not _WATCHED:  # one watch per worker process, for all its jobs
        _WATCHED.append(parent)
        threading.Thread(target=_watch, args=(parent,), name="sweep-watch", daemon=True).start()
    _JOB_RUNNING.set()
    try:
        yield
    finally:
        _JOB_RUNNING.clear()
        if orphaned(parent):
            leave_orphaned_worker()


def _watch(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if not _JOB_RUNNING.is_set() and orphaned(parent):
            leave_orphaned_worker()
