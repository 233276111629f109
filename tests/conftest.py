"""Shared test fixtures: the real data sets beside the project (../shared/data) and a `cl-run` launcher."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import traceback
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("CL_DATA_ROOT", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (DATA_ROOT / "MNIST" / "raw").is_dir():
        pytest.skip(f"real data sets not found under {DATA_ROOT} (set CL_DATA_ROOT)")
    return DATA_ROOT


@pytest.fixture(scope="session", autouse=True)
def image_cache(tmp_path_factory) -> Path:
    """Image folders decoded by the tests (and their cl-run subprocesses) cache their pixels here, not in ~/.cache."""
    folder = tmp_path_factory.mktemp("image_cache")
    os.environ["CL_CACHE_DIR"] = str(folder)
    return folder


def run_cli(args: list[str], cwd: Path, env: dict | None = None, module: str = "cl_runner",
            timeout: int = 600, launcher: str | None = "basic") -> subprocess.CompletedProcess:
    """Run `python -m cl_runner ARGS` (the same entry point as `cl-run`) in `cwd`. A multirun uses `launcher`
    unless ARGS choose one: the sequential basic launcher by default, which saves each small test sweep the
    seconds two joblib workers spend importing torch (the launcher tests and `launcher=None` use the default)."""
    args = with_launcher(args, launcher)
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env.update({"CL_DATA_ROOT": str(DATA_ROOT), **(env or {})})
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def spawn(command: list[str], cwd: Path, env: dict | None = None, **popen) -> subprocess.Popen:
    """A process started as `run_cli` would, whose stderr goes to a file (`finish` reads it), not to a pipe: a
    pipe that nobody reads while the test waits on the process fills and blocks it (torchrun, say, blocked on a
    log line while it should pass a signal on)."""
    with tempfile.NamedTemporaryFile("w", prefix="cl-run-stderr-", suffix=".log", delete=False) as log:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True,
                                   **popen)
    process.stderr_log = Path(log.name)
    return process


def stderr_of(process: subprocess.Popen) -> str:
    """What a `spawn`ed process wrote on stderr so far."""
    return process.stderr_log.read_text()


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
    """Wait for a `spawn`ed process to end; its stderr."""
    process.wait(timeout=timeout)
    return stderr_of(process)


def with_launcher(args: list[str], launcher: str | None) -> list[str]:
    """ARGS with `hydra/launcher=LAUNCHER` added when they are a multirun that chooses no launcher."""
    if launcher and ("-m" in args or "--multirun" in args) and not any(a.startswith("hydra/launcher=") for a in args):
        return [*args, f"hydra/launcher={launcher}"]
    return args


KEPT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR2)


@contextmanager
def process_state_kept():
    """Put back what a `cl-run` job changes in its process, so that the next test in this one starts as a new
    process would: torch's thread count, the signal handlers, the root logger's handlers (Hydra points them at the
    run's cl_run.log) and level, and Hydra's global state. The run's start time (its default run folder's name)
    is the time it starts, as in a new process, not when cl_runner.cli was first imported."""
    from hydra.core.global_hydra import GlobalHydra

    from cl_runner import cli

    threads = torch.get_num_threads()
    handlers = {s: signal.getsignal(s) for s in KEPT_SIGNALS}
    root = logging.getLogger()
    root_handlers, root_level = list(root.handlers), root.level
    cli.register_start(datetime.now())
    try:
        yield
    finally:
        GlobalHydra.instance().clear()
        for handler in root.handlers:
            if handler not in root_handlers:
                handler.close()
        root.handlers[:] = root_handlers
        root.setLevel(root_level)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        torch.set_num_threads(threads)


def main_here(args: list[str], cwd: Path, env: dict | None = None, launcher: str | None = "basic") -> int:
    """`cl-run ARGS` in this process (cl_runner.cli.main, the console script's function) in `cwd`: its exit code,
    as the process would have it (0, the code it exits with, or 1 and the traceback on stderr for an uncaught
    exception). A multirun uses `launcher` unless ARGS choose one, as in `run_cli`. Its output goes where this
    process's goes (`run_main` captures it)."""
    from cl_runner import cli

    with pytest.MonkeyPatch.context() as patch, process_state_kept():
        patch.chdir(cwd)
        patch.setattr(sys, "argv", ["cl-run", *with_launcher(args, launcher)])
        patch.setenv("CL_DATA_ROOT", str(DATA_ROOT))
        patch.setenv("HYDRA_FULL_ERROR", "0")  # main sets it: recorded here so that it is restored after the run
        patch.delenv("HYDRA_FULL_ERROR")
        for name, value in (env or {}).items():
            patch.setenv(name, value)
        try:
            cli.main()
            return 0
        except SystemExit as stop:
            return 0 if stop.code is None else stop.code if isinstance(stop.code, int) else 1
        except Exception:  # what the interpreter does with it
            traceback.print_exc()
            return 1


def run_main(args: list[str], cwd: Path, capfd, env: dict | None = None,
             launcher: str | None = "basic") -> tuple[int, str, str]:
    """`cl-run ARGS` in this process (`main_here`): the exit code, stdout and stderr, without the seconds a new
    interpreter spends importing torch."""
    capfd.readouterr()  # this run's output only
    code = main_here(args, cwd, env, launcher)
    out, err = capfd.readouterr()
    return code, out, err


def loss_before_and_after_sgd(loss, params: list[torch.Tensor], lr: float, steps: int = 20) -> tuple[float, float]:
    """The value of `loss()` before and after `steps` plain SGD steps on `params` (solo-learn's loss test)."""
    optimizer = torch.optim.SGD(params, lr=lr)
    first = loss().item()
    for _ in range(steps):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    return first, loss().item()


TINY = ["dataset=digits", "epochs=1", "batch_size=64", "eval.tsne_points=60", "log_every=2"]


class Planted:
    """Unpickling it would call Path.touch on `marker`: a file that runs code when read (a hostile checkpoint or
    data file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def preset(name: str, *overrides: str):
    """The augmentation `aug=name` (with `aug.` overrides) as cl-run composes and builds it."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("config", overrides=[f"aug={name}", *overrides])
    try:
        return instantiate(cfg.aug)
    except InstantiationException as err:  # the composition's own refusal, as cl-run prints it
        raise err.__cause__ from err
