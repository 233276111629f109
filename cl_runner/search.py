"""Hyperparameter search with Hydra's Optuna sweeper (the hydra-optuna-sweeper plugin), run as cl-run runs its
grid sweeps: `cl-run -m hydra/sweeper=optuna ...` (`SearchConf`) maximizes `search.objective`,
a validation figure of metrics.json; the test set plays no part in choosing.

The plugin asks Optuna for trials, launches them with the sweep's launcher and tells Optuna their values. On top
of it, `OptunaSearch` keeps the study in the sweep folder (SQLite) and makes running the same command again
continue it, as a grid sweep does: `hydra.sweeper.n_trials` is the study's total, finished trials are kept, and
a trial that a killed or stopped search left running is run again with the same parameters (Optuna's own way of
retrying a trial: it is marked failed and its parameters are enqueued); its job folder then resumes from its
checkpoint. A trial whose job fails is recorded as failed, with the job's error, and the search goes on.

Optuna itself is imported where a search runs (it takes seconds to import), not by every cl-run."""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from hydra.core.config_store import ConfigStore
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper.config import (CmaEsSamplerConfig, MOTPESamplerConfig, NSGAIISamplerConfig,
                                                       OptunaSweeperConf, RandomSamplerConfig, TPESamplerConfig)
from omegaconf import DictConfig, OmegaConf

from cl_runner import atomic, run_folder
from cl_runner.errors import UserError, first_line

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)
STUDY_FILE = "search.db"  # the study's SQLite file in the sweep folder
# what a search may maximize: the validation split's figures (metrics.json `val`: the standard protocol's probes,
# fitted on the training images and scored on the held-out ones; and RankMe of the held-out images' embeddings,
# which needs no label: Garrido et al. 2023 choose hyperparameters by it)
OBJECTIVES = ("val.linear_top1", "val.linear_top3", "val.linear_top5", "val.knn_top1", "val.cosine_knn_top1",
              "val.rankme")
INTERRUPTED = "interrupted"  # user attribute of a trial left running by a stopped search: its rerun's number
BASE_CONFIG = "base_config"  # user attribute of the study: the config its trials start from (`check_same_base`)
SAMPLER_SEED = 0  # the samplers' default seed (hydra.sweeper.sampler.seed); the plugin's is None, a fresh draw
SEEDED_SAMPLERS = {"tpe": TPESamplerConfig, "random": RandomSamplerConfig, "cmaes": CmaEsSamplerConfig,
                   "nsgaii": NSGAIISamplerConfig, "motpe": MOTPESamplerConfig}


@dataclass
class SearchConf(OptunaSweeperConf):
    """`hydra/sweeper=optuna`: the plugin's settings (any of them can be set as hydra.sweeper.KEY=VALUE: sampler
    tpe | random | cmaes | grid, sampler.seed, ...) with cl-run's defaults, the samplers seeded. The search space
    goes in hydra.sweeper.params or on the command line, in Hydra's syntax: interval(a,b) for floats,
    tag(log,interval(a,b)) on a log scale, range(a,b) for integers, choice(x,y,z)."""

    _target_: str = "hydra_plugins.cl_runner_search.OptunaSearch"
    direction: Any = "maximize"  # search.objective: an accuracy
    storage: Optional[Any] = f"sqlite:///${{hydra.sweep.dir}}/{STUDY_FILE}"  # the study lives in the sweep folder
    study_name: Optional[str] = "search"
    n_trials: int = 20  # the study's total: run again, the search runs only the trials still missing
    n_jobs: Any = "${local_sweep_jobs:}"  # trials launched together (the local launcher's jobs at once)
    max_failure_rate: float = 1.0  # a failed trial is recorded as failed, and the search goes on


def store_configs() -> None:
    """Make `hydra/sweeper=optuna` select `SearchConf`, and the samplers seeded. The plugin stores its own configs
    under those names when Hydra scans its plugins (once per process, re-running the plugins' modules), so this
    runs after the scan (hydra_plugins.cl_runner_search.register)."""
    store = ConfigStore.instance()
    store.store(group="hydra/sweeper", name="optuna", node=SearchConf, provider="cl_runner")
    for name, sampler in SEEDED_SAMPLERS.items():  # a search run again from scratch asks for the same trials
        store.store(group="hydra/sweeper/sampler", name=name, node=sampler(seed=SAMPLER_SEED), provider="cl_runner")


class TrialFailed(Exception):
    """A trial's job ended without its objective (its error is in its folder's status.json and errors.log)."""


def import_optuna():
    """optuna, imported where a search runs, without SQLAlchemy's warning about its 2.0 API, which optuna 2.10
    predates (pyproject pins sqlalchemy<2)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Deprecated API features detected")
        import optuna
    return optuna


def objective_value(metrics: dict, objective: str) -> float:
    """The figure `objective` (e.g. `val.cosine_knn_top1`) of a job's metrics, as the search maximizes it."""
    if "error" in metrics:
        raise TrialFailed(metrics["error"])
    part, _, name = objective.partition(".")
    value = metrics.get(part, {}).get(name)
    if not isinstance(value, (int, float)):
        raise TrialFailed(f"the run's metrics.json has no {objective}")
    return float(value)


class TrialObjective:
    """A trial's task function: the job as cl-run runs it (`task`), returning its `search.objective`."""

    def __init__(self, task):
        self.task = task

    def __call__(self, cfg: DictConfig) -> float:
        return objective_value(self.task(cfg), cfg.search.objective)


def check_objective(cfg: DictConfig) -> None:
    """A search maximizes a validation figure, so that nothing is tuned on the test set."""
    objective = cfg.search.objective
    if objective not in OBJECTIVES:
        raise UserError(f"search.objective={objective}: a search maximizes a validation figure, one of "
                        f"{', '.join(OBJECTIVES)} (never a test figure)")
    if not cfg.dataset.get("val_fraction"):
        raise UserError(f"search.objective={objective} needs a validation split: set dataset.val_fraction "
                        "(e.g. 0.1)")


def finished(study: optuna.Study) -> int:
    """Trials that count towards `n_trials`: completed or failed, not those a stopped search left behind."""
    from optuna.trial import TrialState

    return sum(t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and INTERRUPTED not in t.user_attrs)
               for t in study.get_trials(deepcopy=False))


def completed(study: optuna.Study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def requeue_interrupted(study: optuna.Study) -> int:
    """Run again the trials a killed or stopped search left running: each is marked failed, with the number of
    the trial that reruns its parameters, and its parameters are enqueued (asked first). Returns how many."""
    from optuna.exceptions import ExperimentalWarning
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        with warnings.catch_warnings():  # experimental since optuna 1.2, and what optuna's own retries use
            warnings.simplefilter("ignore", ExperimentalWarning)
            study.enqueue_trial(trial.params)
        rerun = len(study.get_trials(deepcopy=False)) - 1
        study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, rerun)
        study.tell(trial.number, state=TrialState.FAIL)
    return len(stale)


def check_same_base(study: optuna.Study, config: DictConfig, sweep_dir: Path) -> None:
    """A study continues only from the config its trials started from (the composed config without Hydra's part:
    the command line's fixed overrides and the objective, not the searched values); run with another (other
    epochs, another objective), it would rank trials that cannot be compared, so that is refused in one line.
    The search space may change (widened around a best value at its edge, say)."""
    base = OmegaConf.to_container(config, resolve=False)
    base.pop("hydra", None)
    saved = study.user_attrs.get(BASE_CONFIG)
    if saved is None:
        study.set_user_attr(BASE_CONFIG, base)
        return
    differing = run_folder.differences(saved, base)
    if differing:
        raise UserError(f"{sweep_dir} holds a search of another config ({', '.join(differing[:3])}"
                        f"{', ...' if len(differing) > 3 else ''}); give this search another hydra.sweep.dir")


def reseed(plugin, trials_so_far: int) -> None:
    """A continued search's sampler draws from its seed plus the trials the study holds: with the seed alone it
    would ask again for the first run's trials (the random start-up trials of TPE, say). A new study keeps the
    seed as given, so the same command in a new folder asks for the same trials."""
    sampler = plugin.config.hydra.sweeper.sampler
    if trials_so_far and sampler.get("seed") is not None:
        plugin.sampler = instantiate(sampler, seed=sampler.seed + trials_so_far)


def route_optuna_logs() -> None:
    """Optuna's log lines through Hydra's logging (the console and the sweep's log, in one format); its database
    migrations' (alembic's) only when they warn."""
    optuna = import_optuna()
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    logging.getLogger("alembic").setLevel(logging.WARNING)


def run_search(plugin, sweep: Callable[[], None]) -> None:
    """Continue the study in the sweep folder with the plugin (`OptunaSweeperImpl`, set up): check the objective,
    hold the folder, run again the trials a stopped search left running, then `sweep` (the plugin's own) for
    the trials still missing of `n_trials`."""
    optuna = import_optuna()
    check_objective(plugin.config)
    sweep_dir = Path(plugin.config.hydra.sweep.dir)
    run_folder.check_writable(sweep_dir)
    if not run_folder.hold(sweep_dir):
        raise UserError(f"{sweep_dir} is being searched by another cl-run process; wait for it or give this "
                        "search another hydra.sweep.dir")
    try:  # the sweep's config, as Hydra's own sweeper writes it (the report reads the search's settings there)
        atomic.write_bytes(sweep_dir / "multirun.yaml", OmegaConf.to_yaml(plugin.config).encode())
        try:
            study = optuna.create_study(study_name=plugin.study_name, storage=plugin.storage,
                                        directions=plugin._get_directions(), load_if_exists=True)
        except Exception as err:  # noqa: BLE001 - a damaged or foreign file: said in one line
            raise UserError(f"cannot open the search's study ({plugin.storage}): {first_line(err)}") from err
        check_same_base(study, plugin.config, sweep_dir)
        resumed = requeue_interrupted(study)
        done = finished(study)
        reseed(plugin, len(study.trials))
        total, plugin.n_trials = plugin.n_trials, max(plugin.n_trials - done, 0)
        log.info("search %s: %d of %d trials finished earlier, %d to run (%d interrupted, run again)",
                 sweep_dir, done, total, plugin.n_trials, resumed)
        if plugin.n_trials == 0:
            return
        try:
            sweep()
        except ValueError:  # the plugin's closing summary finds no best trial when every trial failed
            if finished(study) == done or completed(study):
                raise
            log.error("search %s: no trial completed", sweep_dir)
        except RuntimeError as err:  # the grid sampler's stop at the grid's end, which the plugin lets escape
            if "Study.stop" not in str(err):  # when the grid's last trial failed (its state is stored first)
                raise
    finally:
        run_folder.release(sweep_dir)
