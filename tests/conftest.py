"""Shared test fixtures: the real data sets beside the project (../shared/data) and a `cl-run` launcher."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
    if launcher and "-m" in args and not any(a.startswith("hydra/launcher=") for a in args):
        args = [*args, f"hydra/launcher={launcher}"]
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env.update({"CL_DATA_ROOT": str(DATA_ROOT), **(env or {})})
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def run_main(args: list[str], cwd: Path, monkeypatch, capfd) -> tuple[int, str, str]:
    """`cl-run ARGS` in this process (cl_runner.cli.main, the console script's function): the exit code, stdout
    and stderr, without the seconds a new interpreter spends importing torch."""
    from cl_runner import cli

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["cl-run", *args])
    monkeypatch.setenv("CL_DATA_ROOT", str(DATA_ROOT))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)  # main sets it: restored after the test
    try:
        cli.main()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
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
