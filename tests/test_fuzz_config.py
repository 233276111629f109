"""Random overrides of every key the config has (wrong types, edge numbers, unknown choices, lists where scalars
go), checked in this process up to the start of training, as cl-run would: compose, validate, build the run's
parts on a small data set. Each must give a run ready to train or a user error (one line), never another
exception. A fixed seed and 40 examples in the fast tier; 400 under `slow`."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from cl_runner.cli import config_dir, is_user_error
from cl_runner.config import check_data, validate
from cl_runner.data.datasets import Digits, Splits
from cl_runner.parts import build_training

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
