"""One progress view for a sweep whose jobs run at once in worker processes (the default joblib launcher): jobs
done, running and failed, with an ETA, read from the jobs' status.json files while the sweep's own process waits
on its launcher. It is drawn on a terminal only (a log file or a pipe gets the jobs' log lines alone), and the
jobs' own progress bars stay off (two at once interleave on one terminal line)."""
from __future__ import annotations

import math
import threading
import sys
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from tqdm import tqdm

from cl_runner import run_folder
from cl_runner.runtime import runs_in_worker


def sweep_size(config: DictConfig) -> int | None:
    """How many jobs the sweep's overrides and `hydra.sweeper.params` make (Hydra's basic sweeper's product of
    their values), a search's `n_trials`, or None where they cannot be counted here (a sweep over a glob of a
    group's options)."""
    if "n_trials" in config.hydra.sweeper:
        return config.hydra.sweeper.n_trials
    params = [f"{key}={value}" for key, value in (config.hydra.sweeper.get("params") or {}).items()]
    try:
        overrides = OverridesParser.create().parse_overrides([*params, *config.hydra.overrides.task])
        return math.prod(len(list(o.sweep_string_iterator())) if o.is_sweep_override() else 1 for o in overrides)
    except Exception:  # noqa: BLE001 - counting is a courtesy; the sweep itself reports real errors
        return None


DRAWING: list["SweepProgressCallback"] = []  # the views drawing now, which close_views() ends


def close_views() -> None:
    """End any sweep view with its last state and a line break, before cl-run prints its own last lines."""
    for view in list(DRAWING):
        view.close()


def job_states(sweep_dir: Path) -> dict[str, int]:
    """Counts of the sweep folder's jobs by their status.json: done, running (a live process), failed."""
    counts = {"done": 0, "running": 0, "failed": 0}
    for status_file in sweep_dir.glob(f"*/{run_folder.STATUS_FILE}"):
        status = run_folder.read_status(status_file.parent) or {}
        state = status.get("status")
        if state == "completed":
            counts["done"] += 1
        elif state == "failed":
            counts["failed"] += 1
        elif state == "running" and run_folder.alive(status.get("pid")):
            counts["running"] += 1
    return counts


class SweepProgressCallback(Callback):
    """Draws the sweep's progress every `interval` seconds while its jobs run in worker processes."""

    def __init__(self, interval: float = 2.0):
        self.interval = interval
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None

    def __getstate__(self) -> dict:  # the launcher hands its callbacks to each worker: the thread stays here
        return {"interval": self.interval}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        if not (runs_in_worker(config.hydra.launcher) and sys.stderr.isatty()):
            return
        self.thread = threading.Thread(target=self.draw, args=(Path(config.hydra.sweep.dir), sweep_size(config)),
                                       name="sweep-progress", daemon=True)
        DRAWING.append(self)
        self.thread.start()

    def draw(self, sweep_dir: Path, total: int | None) -> None:
        with tqdm(total=total, unit="job", desc="sweep", dynamic_ncols=True) as bar:
            while True:
                stopping = self.stopped.wait(self.interval)
                counts = job_states(sweep_dir)
                finished = counts["done"] + counts["failed"]
                bar.update(min(finished, total or finished) - bar.n)
                bar.set_postfix(running=counts["running"], failed=counts["failed"], refresh=True)
                if stopping:
                    return

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        self.close()

    def close(self) -> None:
        if self.thread is not None:
            self.stopped.set()
            self.thread.join()
            self.thread = None
            DRAWING.remove(self)
