"""The settings of the plugins that run a sweep, checked before its first job as `config.validate` checks cl-run's
own: Hydra's launcher (joblib's worker processes here, submitit's jobs on SLURM or locally) and the Optuna
sweeper of `hydra/sweeper=optuna`, its search space included. Each problem is one sentence naming the key
(`hydra.launcher.n_jobs=0 is not allowed: ...`); a library would otherwise end in a traceback, or run nothing
and exit 0."""
from __future__ import annotations

import shutil
from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf

from cl_runner.config import Rule, check_rules, is_int, is_number
from cl_runner.errors import UserError

JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
SUBMITIT = "hydra_plugins.hydra_submitit_launcher.submitit_launcher."  # SlurmLauncher, LocalLauncher
SLURM = SUBMITIT + "SlurmLauncher"
SEARCH = "hydra_plugins.cl_runner_search.OptunaSearch"


def _optional(ok: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda v: v is None or ok(v)


def _name(value) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _at_least(low: int) -> Callable[[object], bool]:
    return lambda v: is_int(v) and v >= low


# joblib: n_jobs; negative counts from the cores as joblib does (-1: one job per core, -2: all cores but one)
JOBLIB_RULES: list[Rule] = [
    ("n_jobs", lambda v: is_int(v) and v != 0,
     "an integer >= 1 (jobs at once), or negative to count from the cores (-1: one per core)"),
]
# submitit, on SLURM (conf/hydra/launcher/slurm.yaml and the README's keys) and locally (submitit_local)
SUBMITIT_RULES: list[Rule] = [
    ("timeout_min", _at_least(1), "an integer >= 1 (minutes)"),
    ("nodes", _at_least(1), "an integer >= 1"),
    ("tasks_per_node", _at_least(1), "an integer >= 1 (processes per job: one per GPU)"),
    ("cpus_per_task", _optional(_at_least(1)), "null or an integer >= 1"),
    ("gpus_per_node", _optional(_at_least(0)), "null or an integer >= 0"),
    ("mem_gb", _optional(lambda v: is_number(v) and v > 0), "null or a number > 0 (GB)"),
    ("array_parallelism", _at_least(1), "an integer >= 1 (jobs of the sweep running at once)"),
    ("signal_delay_s", _at_least(0), "an integer >= 0 (seconds)"),
    ("max_num_timeout", _at_least(0), "an integer >= 0 (requeues allowed)"),
    ("partition", _optional(_name), "null (the cluster's default) or a partition's name"),
    ("qos", _optional(_name), "null or a QOS name"),
    ("account", _optional(_name), "null or an account's name"),
    ("constraint", _optional(_name), "null or a SLURM constraint"),
    ("setup", _optional(lambda v: isinstance(v, list) and all(isinstance(line, str) for line in v)),
     "null or a list of shell lines"),
    ("additional_parameters", lambda v: isinstance(v, dict), "a mapping of sbatch options to values"),
]
SEARCH_RULES: list[Rule] = [
    ("n_trials", _at_least(1), "an integer >= 1 (the study's total: run again, only the missing trials run)"),
    ("n_jobs", _at_least(1), "an integer >= 1 (trials launched together)"),
    ("direction", lambda v: v == "maximize",
     "maximize: search.objective is a validation accuracy, the higher the better"),
    ("storage", _optional(lambda v: isinstance(v, str) and "://" in v),
     "null (a study in memory, not continued) or a database URL such as sqlite:///PATH/search.db"),
    ("study_name", _name, "a study's name"),
    ("max_failure_rate", lambda v: is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    ("sampler.seed", _optional(_at_least(0)), "null (a fresh draw) or an integer >= 0"),
]


def check(config: DictConfig) -> None:
    """Raise UserError for the first problem of the sweep's launcher or sweeper settings (`config`: the whole
    composed config, Hydra's part included)."""
    launcher, sweeper = config.hydra.launcher, config.hydra.sweeper
    target = str(launcher.get("_target_", ""))
    if target == JOBLIB:
        check_rules(launcher, JOBLIB_RULES, "hydra.launcher.", present_only=True)
    elif target.startswith(SUBMITIT):
        check_rules(launcher, SUBMITIT_RULES, "hydra.launcher.", present_only=True)  # SLURM's keys or local's
        if target == SLURM and shutil.which("srun") is None:
            raise UserError("hydra/launcher=slurm submits the sweep's jobs to SLURM, whose srun is not on this "
                            "machine's PATH: run the sweep from the cluster's login node, or here with "
                            "hydra/launcher=local (or submitit_local)")
    if sweeper.get("_target_") == SEARCH:
        check_rules(sweeper, SEARCH_RULES, "hydra.sweeper.", present_only=True)
        check_search_space(sweeper, list(config.hydra.overrides.task))


def check_search_space(sweeper: DictConfig, arguments: list[str]) -> None:
    """Each searched key (hydra.sweeper.params, then the command line) as the plugin reads it into an Optuna
    distribution (bounds in order, a log scale above 0, a non-empty choice; discrete for the grid sampler), with
    the plugin's and Optuna's own checks; at least one key must be searched."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override

    from cl_runner.search import import_optuna

    distributions = import_optuna().distributions
    discrete = (distributions.CategoricalDistribution, distributions.IntUniformDistribution,
                distributions.DiscreteUniformDistribution)
    grid = str(sweeper.sampler.get("_target_", "")).endswith("GridSampler")
    params = OmegaConf.to_container(sweeper.params) if sweeper.get("params") else {}
    searched = 0
    parser = OverridesParser.create()
    for text in [f"{key}={value}" for key, value in params.items()] + arguments:
        try:
            override = parser.parse_override(text)
        except HydraException:
            continue  # a malformed override: Hydra itself refuses it, in one line, before any sweep
        if not override.is_sweep_override():
            continue
        try:
            distribution = create_optuna_distribution_from_override(override)
        except (ValueError, TypeError, AssertionError, RuntimeError) as err:  # RuntimeError: a sweep kind it lacks
            raise UserError(f"{text} cannot be searched: {str(err) or type(err).__name__} (the search space takes "
                            "interval(a,b) with a < b, tag(log,interval(a,b)) with 0 < a < b, range(a,b) or "
                            "choice(x,y,...))") from err
        if grid and not isinstance(distribution, discrete):
            raise UserError(f"{text}: hydra/sweeper/sampler=grid searches a grid, which an interval has not: use "
                            "range(a,b,step) or choice(x,y,...) for that key, or another sampler")
        searched += 1
    if not searched:
        raise UserError("a search (hydra/sweeper=optuna) needs a space to search: give hydra.sweeper.params, or a "
                        "key with interval(a,b), range(a,b) or choice(x,y) on the command line")
