"""Random overrides of every key the config has (wrong types, edge numbers, unknown choices, lists where scalars
go), checked in this process up to the start of training, as cl-run would: compose, validate, build the run's
parts on a small data set. Each must give a run ready to train or a user error (one line), never another
exception. The same for the keys of the sweep's launcher and sweeper (hydra.launcher.*, hydra.sweeper.*): checked
as a sweep checks them, then handed to what the plugins build before their first job. A fixed seed and 40
examples (25 of the plugins' keys) in the fast tier; 400 each under `slow`."""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from cl_runner import sweep_settings
from cl_runner.cli import config_dir, is_user_error
from cl_runner.config import check_data, validate
from cl_runner.data.datasets import Digits, Splits
from cl_runner.parts import build_training
from cl_runner.search import import_optuna
from hydra_plugins.cl_runner_search import register as register_search

GROUPS = ("aug", "pairing", "loss", "encoder", "optimizer", "schedule")
EDGE_VALUES = ("0", "-1", "1", "2", "0.5", "nan", "inf", "-inf", "1e308", "true", "false", "null", "abc", "''",
               "[1,2]", "[]", "{a: 1}", "1024")


def leaf_keys() -> list[str]:
    """Every leaf key of the default config and of each group option, dotted (the data set's excluded: reading
    data is not what this test exercises)."""
    keys = set()
    with initialize_config_dir(config_dir(), version_base="1.3"):
        for group in ("", *GROUPS):
            options = [""] if not group else sorted(p.stem for p in (Path(config_dir()) / group).glob("*.yaml"))
            for option in options:
                cfg = compose("config", overrides=[f"{group}={option}"] if group else [])
                container = OmegaConf.to_container(cfg, resolve=False)
                keys |= {k for k in flatten(container) if not k.startswith(("dataset", "hydra"))}
    GlobalHydra.instance().clear()
    return sorted(keys)


def flatten(tree, prefix: str = "") -> list[str]:
    if not isinstance(tree, dict):
        return [prefix.rstrip(".")]
    return [k for key, value in tree.items() for k in flatten(value, f"{prefix}{key}.")]


KEYS = leaf_keys()
DATA = Digits().load()
SMALL = Splits(DATA.train.head(128), DATA.test.head(60), DATA.train.head(128))
overrides = st.lists(st.one_of(
    st.tuples(st.sampled_from(KEYS), st.sampled_from(EDGE_VALUES)).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.tuples(st.sampled_from(GROUPS), st.sampled_from(("nope", "triplet", "ntxent", "simclr", "lars",
                                                         "resnet18", "warmup_cosine", "multiview")))
    .map(lambda kv: f"{kv[0]}={kv[1]}")), min_size=1, max_size=3)


def up_to_training(args: list[str]) -> None:
    """What cl-run does with these overrides before its first step; a user error is an accepted outcome."""
    try:
        with initialize_config_dir(config_dir(), version_base="1.3"):
            cfg = compose("config", overrides=["batch_size=32", "device=cpu", *args])
        validate(cfg, {})
        check_data(cfg, SMALL, args)
        with tempfile.TemporaryDirectory() as run_dir:
            build_training(cfg, SMALL.train, torch.device("cpu"), "fp32", Path(run_dir))
    except Exception as err:  # noqa: BLE001 - the point: only user errors may come out
        if not is_user_error(err):
            raise AssertionError(f"cl-run {' '.join(args)}: {type(err).__name__}: {err}") from err
    finally:
        GlobalHydra.instance().clear()


PLUGINS = (("hydra/launcher", ("local", "slurm", "submitit_local", "basic")),
           ("hydra/sweeper", ("optuna", "basic")), ("hydra/sweeper/sampler", ("tpe", "random", "grid", "cmaes")))


def plugin_keys() -> list[str]:
    """Every leaf key of the launchers' and the Optuna sweeper's configs, dotted (hydra.launcher.n_jobs, ...)."""
    register_search()
    keys = set()
    with initialize_config_dir(config_dir(), version_base="1.3"):
        for launcher in PLUGINS[0][1]:
            cfg = compose("config", overrides=[f"hydra/launcher={launcher}", "hydra/sweeper=optuna"],
                          return_hydra_config=True)
            for part in ("launcher", "sweeper"):
                container = OmegaConf.to_container(cfg.hydra[part], resolve=False)
                keys |= {f"hydra.{part}.{k}" for k in flatten(container) if not k.endswith("_target_")}
    GlobalHydra.instance().clear()
    return sorted(keys)


PLUGIN_KEYS = plugin_keys()
plugin_overrides = st.tuples(
    st.lists(st.sampled_from(PLUGINS).flatmap(lambda group: st.sampled_from(group[1]).map(
        lambda option: f"{group[0]}={option}")), max_size=2),
    st.lists(st.tuples(st.sampled_from(PLUGIN_KEYS), st.sampled_from(EDGE_VALUES)).map(
        lambda kv: f"{kv[0]}={kv[1]}"), min_size=1, max_size=3)).map(lambda choice: [*choice[0], *choice[1]])


def up_to_the_first_job(args: list[str]) -> None:
    """What a sweep does with these settings before its first job: the checks, then what the plugins build from
    them (joblib's job count, submitit's parameters, Optuna's sampler and study); a user error is an accepted
    outcome, and so is Hydra refusing to compose them."""
    import joblib
    from hydra.utils import instantiate

    try:
        with initialize_config_dir(config_dir(), version_base="1.3"):
            cfg = compose("config", overrides=["optimizer.lr=0.05", *args], return_hydra_config=True)
        sweep_settings.check(cfg)
        launcher, sweeper = cfg.hydra.launcher, cfg.hydra.sweeper
        if launcher._target_ == sweep_settings.JOBLIB:
            joblib.effective_n_jobs(launcher.n_jobs)
        if sweeper._target_ == sweep_settings.SEARCH:
            optuna = import_optuna()
            sampler = instantiate(sweeper.sampler)  # the grid sampler: a partial, given its grid by the sweep
            if not isinstance(sampler, functools.partial):
                optuna.create_study(sampler=sampler, direction=sweeper.direction, study_name=sweeper.study_name)
    except Exception as err:  # noqa: BLE001 - the point: only user errors may come out
        if not is_user_error(err):
            raise AssertionError(f"cl-run -m {' '.join(args)}: {type(err).__name__}: {err}") from err
    finally:
        GlobalHydra.instance().clear()


FAST = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FAST
@given(overrides)
def test_random_overrides_give_a_run_or_one_user_error(args):
    up_to_training(args)


@pytest.mark.slow
@seed(20261129)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(overrides)
def test_many_random_overrides_give_a_run_or_one_user_error(args):
    up_to_training(args)


@settings(FAST, max_examples=25)
@given(plugin_overrides)
def test_random_launcher_and_sweeper_settings_give_a_sweep_or_one_user_error(args):
    up_to_the_first_job(args)


@pytest.mark.slow
@seed(20261203)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plugin_overrides)
def test_many_random_launcher_and_sweeper_settings_give_a_sweep_or_one_user_error(args):
    up_to_the_first_job(args)
