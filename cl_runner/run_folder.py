"""The run folder's lifecycle, recorded in status.json: claimed (running), completed, failed or interrupted.
A run writes only into a folder it holds; resuming takes over an interrupted or failed run's folder."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from cl_runner.checkpoint import CHECKPOINT_FILE
from cl_runner.errors import UserError
from cl_runner import atomic

STATUS_FILE = "status.json"


class OthersFolder(UserError):
    """The folder holds another run (or another config's run): nothing may be written into it, not even a log
    line."""


class AlreadyFinished(Exception):
    """`resume=` named a run that completed: nothing to do."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def alive(pid) -> bool:
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


LOCK_FILE = ".lock"
ORPHAN_GRACE = 30.0  # seconds a sweep run again waits for a job's lock: a killed sweep's worker stops within a step
_HELD: dict[Path, int] = {}  # run folders this process holds -> the open lock file's descriptor


def hold(run_dir: Path, wait: float = 0.0) -> bool:
    """Take the run folder's lock (an flock on its .lock file), waiting up to `wait` seconds while another process
    holds it: True when this process holds it now. The kernel releases it when its holder exits, however it ends
    (SIGKILL included), so a folder is never run by two processes at once, and never held by a process that is
    gone."""
    run_dir = run_dir.resolve()
    if run_dir in _HELD:
        return True
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise UserError(f"cannot write into the run folder {run_dir}: {err.strerror}") from err
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _HELD[run_dir] = descriptor
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(descriptor)
                return False
            time.sleep(0.2)


def release(run_dir: Path) -> None:
    """Let go of a folder this process holds (a sweep's worker process goes on to other jobs)."""
    descriptor = _HELD.pop(run_dir.resolve(), None)
    if descriptor is not None:
        os.close(descriptor)


def read_status(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / STATUS_FILE).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return {"status": "unreadable"}


def claim(run_dir: Path, scenario: dict, config: DictConfig, overrides: list[str]) -> None:
    """Mark a new folder as this run's and save its config; refuse a folder another run already holds."""
    status = {"status": "running", "started": _now(), "pid": os.getpid(), "scenario": scenario}
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic.create_bytes(run_dir / STATUS_FILE, json.dumps(status).encode())
        atomic.write_bytes(run_dir / "config.yaml", OmegaConf.to_yaml(config, resolve=True).encode())
        atomic.write_bytes(run_dir / "overrides.yaml", yaml.safe_dump(overrides).encode())
        hold(run_dir)
    except FileExistsError:
        raise OthersFolder(f"{run_dir} already holds another run's results; choose a new hydra.run.dir") from None
    except OSError as err:
        raise UserError(f"cannot write into the run folder {run_dir}: {err.strerror}") from err


def take_over(run_dir: Path) -> dict:
    """Hold an interrupted or failed run's folder again, to resume it; returns its scenario."""
    status = read_status(run_dir) or {}
    if status.get("status") == "completed":
        raise AlreadyFinished(f"run {run_dir} already finished; nothing to resume")
    if not hold(run_dir):
        raise UserError(f"resume={run_dir}: that run is still running (pid {status.get('pid')})")
    if not (run_dir / CHECKPOINT_FILE).exists():
        raise UserError(f"resume={run_dir}: that folder holds no {CHECKPOINT_FILE} to continue from")
    atomic.write_json(run_dir / STATUS_FILE, {**status, "status": "running", "resumed": _now(), "pid": os.getpid()})
    return status.get("scenario", {})


def sweep_job_action(run_dir: Path, config: DictConfig) -> str:
    """What a sweep that runs again does with one job's folder: `new` (nothing there yet), `done` (completed
    with this very config: its metrics are reused, its files untouched), `resume` (interrupted, failed or killed
    after a checkpoint), `restart` (failed or killed before its first checkpoint). A folder that holds another
    config, or a job still running in another process, is refused."""
    status = read_status(run_dir)
    if status is None:
        return "new"
    if not (run_dir / "config.yaml").is_file():  # it failed before holding the folder (a config refused)
        return "restart"
    differing = config_differences(run_dir, config)
    if differing:
        raise OthersFolder(f"{run_dir} holds a run of another config ({', '.join(differing[:3])}"
                           f"{', ...' if len(differing) > 3 else ''}); give this sweep another hydra.sweep.dir")
    if not hold(run_dir, wait=ORPHAN_GRACE):
        raise OthersFolder(f"{run_dir} is being run by another process (pid {status.get('pid')})")
    if status.get("status") == "completed" and (run_dir / "metrics.json").is_file():
        return "done"
    return "resume" if (run_dir / CHECKPOINT_FILE).is_file() else "restart"


def config_differences(run_dir: Path, config: DictConfig) -> list[str]:
    """The keys (dotted) whose resolved values differ between `config` and the config saved in `run_dir`."""
    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return ["its config.yaml is unreadable"]
    return differences(saved, OmegaConf.to_container(config, resolve=True), ignore=("resume",))


def differences(saved: dict, ours: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """`key=THERE there, HERE here` for each dotted key whose value differs between two configs (plain trees)."""
    saved_leaves, our_leaves = _leaves(saved), _leaves(ours)
    return sorted(f"{key}={saved_leaves.get(key)!r} there, {our_leaves.get(key)!r} here"
                  for key in saved_leaves.keys() | our_leaves.keys()
                  if key not in ignore and saved_leaves.get(key) != our_leaves.get(key))


def _leaves(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    flat = {}
    for key, value in tree.items():
        flat.update(_leaves(value, f"{prefix}{key}."))
    return flat


def forget_attempt(run_dir: Path) -> None:
    """Clear a failed or killed attempt that left no checkpoint (status and TensorBoard events; nothing it
    could continue from), so the job starts again from nothing in its own folder."""
    shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
    (run_dir / STATUS_FILE).unlink()


def resumed_config(run_dir: Path, overrides: list[str]) -> DictConfig:
    """The saved config of the run in `run_dir`; command-line overrides that would change it are refused."""
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"resume={run_dir}: not a cl-run run folder (no config.yaml there)")
    saved = OmegaConf.load(run_dir / "config.yaml")
    saved_overrides = set(yaml.safe_load((run_dir / "overrides.yaml").read_text()) or [])
    differing = []
    for override in overrides:
        key, _, value = override.partition("=")
        if key == "resume" or override in saved_overrides:
            continue
        if key not in saved or not OmegaConf.is_config(saved[key]):  # a plain key: compare the values
            if OmegaConf.select(saved, key, default=object()) == yaml.safe_load(value or "null"):
                continue
        differing.append(override)
    if differing:
        raise UserError(f"resume={run_dir} continues that run with its own config, which these overrides would "
                        f"change: {', '.join(differing)}")
    saved.resume = str(run_dir)
    OmegaConf.set_struct(saved, True)
    return saved


SWEEP_ERRORS = "errors.log"


def record_sweep_error(sweep_dir: Path, job: str, message: str) -> None:
    """Add `job: message` to the sweep folder's errors.log (one line, appended in one write, so that jobs in
    other processes cannot interleave theirs); the sweep's end prints the lines and exits with code 2."""
    line = f"job {job}: {message}".replace("\n", " ") + "\n"
    with open(sweep_dir / SWEEP_ERRORS, "a", encoding="utf-8") as fh:
        fh.write(line)


def sweep_errors(sweep_dir: Path) -> list[str]:
    try:
        return (sweep_dir / SWEEP_ERRORS).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []


def forget_sweep_errors(sweep_dir: Path) -> None:
    """A sweep command starts with no errors: those of an earlier command are in its jobs' status.json."""
    (sweep_dir / SWEEP_ERRORS).unlink(missing_ok=True)


BEFORE_TRAINING = {STATUS_FILE, "config.yaml", "overrides.yaml", LOCK_FILE, "cl_run.log"}  # and nothing else


def discard_refused(run_dir: Path) -> bool:
    """Remove the folder of a run refused before its training started (its config, its data or its parts found
    wanting): one that holds only what such a run writes (BEFORE_TRAINING; TensorBoard's folder appears as
    training starts) and no other run's status. A refused command leaves no folder behind; the error is on
    stderr. Returns whether the folder went."""
    status = read_status(run_dir)
    if status is not None and status.get("pid") != os.getpid():
        return False
    try:
        names = {entry.name for entry in run_dir.iterdir()}
    except OSError:
        return False
    if not names <= BEFORE_TRAINING:
        return False
    release(run_dir)
    for name in names:
        (run_dir / name).unlink(missing_ok=True)
    try:
        run_dir.rmdir()
    except OSError:
        return False
    return True


def record_failure(run_dir: Path, message: str, scenario: dict) -> None:
    """Mark the run folder failed, with the error; a folder that belongs to another run is left alone."""
    status = read_status(run_dir)
    try:
        if status is None:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic.write_json(run_dir / STATUS_FILE, {"status": "failed", "error": message, "finished": _now(),
                                                      "scenario": scenario})
        elif status.get("status") == "running" and status.get("pid") == os.getpid():
            atomic.write_json(run_dir / STATUS_FILE, {**status, "status": "failed", "error": message,
                                                      "finished": _now()})
    except OSError:
        pass  # an unwritable folder was the error itself; stderr still says it


def record_interruption(run_dir: Path, signum: int) -> None:
    status = read_status(run_dir) or {}
    atomic.write_json(run_dir / STATUS_FILE, {**status, "status": "interrupted", "signal": signum, "stopped": _now(),
                                              "resume": f"cl-run resume={run_dir}"})


def record_completion(run_dir: Path) -> None:
    status = read_status(run_dir) or {}
    atomic.write_json(run_dir / STATUS_FILE, {**status, "status": "completed", "finished": _now()})


def check_writable(folder: Path) -> None:
    """Create `folder` if needed and check that files can be written there, before Hydra makes it (Hydra's own
    mkdir failing would end in a traceback, and its callbacks' errors only warn); nothing is written into it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the folder {folder}: {err.strerror}") from err
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"cannot write into the folder {folder}: it is read-only or not ours")

