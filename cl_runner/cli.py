"""`cl-run`: Hydra composes the config from conf/, `validate` checks it, `experiment.run` does the work.
User mistakes end in one line on stderr and exit code 2; HYDRA_FULL_ERROR=1 shows the full traceback."""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import signal
import sys
import traceback
from datetime import datetime
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.errors import HydraException, InstantiationException
from hydra_plugins.cl_runner_search import register as register_search
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cl_runner import distributed, experiment, run_folder, sweep_progress, sweep_settings
from cl_runner.config import close_keys, validate
from cl_runner.distributed import World
from cl_runner.errors import SweepRefused, UserError, first_line
from cl_runner.interruption import Interrupted, worker_job
from cl_runner.runtime import job_threads, local_sweep_jobs, retain_freed_memory, runs_in_worker

log = logging.getLogger(__name__)
DISK_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT}
SWEEP_ACTIONS = {"new": "running", "done": "completed earlier with this config, its metrics reused",
                 "resume": "interrupted earlier, resuming from its checkpoint",
                 "restart": "stopped earlier before its first checkpoint, running again"}
GROUPS = ("dataset", "aug", "pairing", "loss", "encoder", "optimizer", "schedule", "experiment")
# hydra.run.dir: the resumed run's own folder, else a new one
OmegaConf.register_new_resolver("resume_or", lambda resume, fresh: resume if resume else fresh)


NAME_MAX = 255  # bytes in a file name (Linux's and macOS's file systems)


def job_folder(overrides: str, seed) -> str:
    """A sweep job's folder name: its overrides (the seed excluded) and then its seed, e.g.
    `aug=guo,loss=triplet,seed=1`; a '/' in a value would nest folders and is written as '%2F'. A name longer
    than a file name may be keeps its start and the seed, and puts a hash of the whole name between them, so that
    each job still has its own folder, found again when the sweep runs again (its overrides.yaml has them all)."""
    name = ",".join(filter(None, [str(overrides).replace("/", "%2F"), f"seed={seed}"]))
    if len(name.encode()) <= NAME_MAX:
        return name
    tail = f"~{hashlib.sha256(name.encode()).hexdigest()[:16]},seed={seed}"
    return name.encode()[:NAME_MAX - len(tail.encode())].decode(errors="ignore") + tail


OmegaConf.register_new_resolver("job_folder", job_folder)
OmegaConf.register_new_resolver("local_sweep_jobs", local_sweep_jobs)


def register_start(started: datetime) -> None:
    """`${started:PATTERN}` in the config: when this run started (in a distributed run rank 0's clock, so that all
    its processes name the same run folder)."""
    OmegaConf.register_new_resolver("started", lambda pattern: started.strftime(pattern), use_cache=True,
                                    replace=True)


register_start(datetime.now())


def config_dir() -> str:
    """conf/ ships inside the installed package; in a source checkout it sits beside the package."""
    packaged = Path(__file__).with_name("conf")
    return str(packaged if packaged.is_dir() else Path(__file__).resolve().parents[1] / "conf")


def run_job(cfg: DictConfig, errors: list[str], full_trace: bool = False, world: World = World()) -> dict:
    """One run, or one job of a sweep, from Hydra's composed config. A user error in a run is added to `errors`
    (`main` prints it). A sweep's jobs may run in other processes or on other machines, so a job that fails
    records why in its folder's status.json and in the sweep folder's errors.log, which the sweep's end reads.
    In a distributed run (`world`) rank 0 records and reports; another rank reports only what rank 0 cannot
    know, in one line (its own crash, rank 0 gone). With `full_trace` (HYDRA_FULL_ERROR=1), every error is
    raised, for Hydra to print its traceback."""
    hydra_cfg = HydraConfig.get()
    parent = sweep_process() if runs_in_worker(hydra_cfg.launcher) else None
    with worker_job(parent):
        if hydra_cfg.mode.name == "MULTIRUN" and not world.is_distributed:
            world = distributed.cluster_world()  # a job run as several tasks by a cluster launcher (submitit)
            if world.is_distributed:
                distributed.join(world)
                try:
                    return run_in_world(cfg, errors, full_trace, world, parent)
                finally:
                    distributed.leave()
        return run_in_world(cfg, errors, full_trace, world, parent)


def run_in_world(cfg: DictConfig, errors: list[str], full_trace: bool, world: World, parent: int | None) -> dict:
    """`run_job`'s work, in this process's world; `parent`: the sweep process of a job in a worker process."""
    hydra_cfg = HydraConfig.get()
    retain_freed_memory()  # again: a launcher may run the job in a process of its own
    if not world.is_main:  # rank 0 alone writes the job's log
        for handler in [h for h in logging.root.handlers if isinstance(h, logging.FileHandler)]:
            logging.root.removeHandler(handler)
    in_sweep = hydra_cfg.mode.name == "MULTIRUN"
    threads = job_threads(hydra_cfg.launcher) if in_sweep else None  # a run: all cores
    if threads:
        torch.set_num_threads(threads)
    choices = {g: hydra_cfg.runtime.choices[g] for g in GROUPS if hydra_cfg.runtime.choices.get(g)}
    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    try:
        with distributed.together(world):  # the same checks in every process; rank 0 says what failed
            if cfg.resume:
                if hydra_cfg.mode.name != "RUN":
                    raise UserError("resume= continues one run; it cannot be part of a multirun (-m)")
                cfg = run_folder.resumed_config(Path(cfg.resume), overrides)
            validate(cfg, choices, world.size)
            action = run_folder.sweep_job_action(run_dir, cfg) if in_sweep and world.is_main else None
        action = distributed.broadcast(action, world)
        if action is not None:
            if action == "done":
                if world.is_main:  # on the console only: the job's own log stays as it was
                    print(f"cl-run: sweep job {run_dir.name}: {SWEEP_ACTIONS[action]}", file=sys.stderr)
                return json.loads((run_dir / "metrics.json").read_text())
            log.info("sweep job %s: %s", run_dir.name, SWEEP_ACTIONS[action])
            if action == "resume":
                cfg.resume = str(run_dir)
            elif action == "restart" and world.is_main:
                run_folder.forget_attempt(run_dir)
        return experiment.run(cfg, run_dir, choices, overrides, parent, world)
    except run_folder.AlreadyFinished as done:
        if world.is_main:
            print(f"cl-run: {done}", file=sys.stderr)
        return {}
    except Exception as err:
        message = one_line(err)
        if not world.is_main:  # rank 0 records the run's failure and says why, traceback included for a bug
            if full_trace:
                raise
            if not isinstance(err, distributed.RankFailed):
                line = f"rank {world.rank}: {message if is_user_error(err) else crash_line(err)}"
                if in_sweep:  # a task of a cluster job: its launcher keeps the output
                    log.error(line)
                else:
                    errors.append(line)
            return {"error": message}
        if in_sweep and not is_user_error(err):  # a bug: its traceback goes into the job's own log
            log.exception("this job crashed (a bug in cl-run or in the code it runs): %s", message)
            message = f"{crash_line(err)} (traceback in {run_dir / 'cl_run.log'})"
        refused = not in_sweep and is_user_error(err) and run_folder.discard_refused(run_dir)
        if not refused:  # a sweep's job keeps its folder: the report and a rerun read its status
            run_folder.record_failure(run_dir, message, choices)
        if full_trace or not (in_sweep or is_user_error(err)):
            raise
        if in_sweep:  # an error ends this job, not the sweep
            if not isinstance(err, run_folder.OthersFolder):  # not even a log line in another run's folder
                log.error(message)
            try:
                run_folder.record_sweep_error(Path(hydra_cfg.sweep.dir), run_dir.name, message)
            except OSError:  # an unwritable sweep folder: Hydra raises the job's error after the others ran
                raise err from None
        else:
            errors.append(message)
        return {"error": message}
    finally:
        run_folder.release(run_dir)  # a worker process goes on to other jobs


class SweepSettingsCheck(Callback):
    """The sweep's launcher and sweeper settings are checked before its first job (cl_runner.sweep_settings)."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        try:
            sweep_settings.check(config)
        except UserError as err:
            raise SweepRefused(str(err)) from err


class WorkerSignals(Callback):
    """A sweep whose jobs run in worker processes (joblib) leaves Ctrl-C to them: they are in its process group,
    so each finishes its step and writes its checkpoint, and joblib hands the first `Interrupted` back to this
    process (which ignores SIGINT, instead of tearing the pool down mid-step) and ends the other workers; one
    ended before it recorded its stop resumes from its last checkpoint all the same."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        if runs_in_worker(config.hydra.launcher):
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            os.environ[SWEEP_PROCESS] = str(os.getpid())  # before joblib starts its workers, which inherit it


SWEEP_PROCESS = "CL_SWEEP_PID"


def sweep_process() -> int:
    """The pid of the sweep whose worker process runs this job: a worker whose sweep died before the job started
    is already another process's child, so its parent at the job's start would not do. A job that joblib runs in
    the sweep's own process (one job at a time) watches that process's parent, as a run watches none."""
    sweep = int(os.environ.get(SWEEP_PROCESS, os.getppid()))
    return os.getppid() if sweep == os.getpid() else sweep


def crash_line(err: BaseException) -> str:
    return f"crashed with {type(err).__name__}: {one_line(err)}"


def one_line(err: BaseException) -> str:
    """The first line of an error's message, with the options Hydra lists for an unknown group option."""
    options = getattr(err, "options", None)
    first = first_line(err)
    if isinstance(err, InstantiationException) and isinstance(err.__cause__, UserError):
        first = str(err.__cause__)
    elif isinstance(err, InstantiationException) and isinstance(err.__cause__, (TypeError, ValueError)):
        first = f"{first.rstrip(':')}: {one_line(err.__cause__)} (a setting of that option has the wrong type?)"
    elif isinstance(err.__cause__, OmegaConfBaseException):  # e.g. "Could not override 'x'." + why
        first = f"{first.rstrip('.')}: {one_line(err.__cause__)}"
        typo = re.match(r"Could not override '([^']+)'", first)
        if typo and "is not in struct" in first:
            close = close_keys(typo.group(1), Path(config_dir()))
            first += f"; did you mean {' or '.join(close)}?" if close else " (cl-run --cfg job lists every key)"
    if options:
        first += f"; choose one of: {', '.join(options)}"
    return first


def is_user_error(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno in DISK_ERRORS:  # a full or read-only disk, no permission
        return True
    if isinstance(err, InstantiationException):  # a class refusing its settings, or choking on their types
        return isinstance(err.__cause__, (UserError, TypeError, ValueError))
    return isinstance(err, (UserError, HydraException, OmegaConfBaseException))


def check_output_folders(args: list[str]) -> None:
    """The run or sweep folder named on the command line can be written (checked before Hydra creates it)."""
    for arg in args:
        key, _, value = arg.partition("=")
        if key in ("hydra.run.dir", "hydra.sweep.dir") and value and "${" not in value:
            run_folder.check_writable(Path(value))


def join_run(world: World) -> None:
    """This process's part in a distributed run (torchrun): join the others, share rank 0's start time (the run
    folder's name), and leave the run folder's log to rank 0."""
    if "-m" in sys.argv or "--multirun" in sys.argv:
        raise UserError("a sweep (-m) cannot run under torchrun: sweep with cl-run -m and give each job several "
                        "processes through its launcher (hydra/launcher=slurm with tasks_per_node), or run one "
                        "distributed run at a time")
    try:
        distributed.join(world)
    except (RuntimeError, ValueError) as err:
        raise UserError(f"cannot join the distributed run ({world}): {one_line(err)}") from err
    register_start(distributed.broadcast(datetime.now(), world))
    if not world.is_main:
        sys.argv.append("hydra/job_logging=other_ranks")


def main() -> None:
    world = World.from_env()
    if not world.is_distributed:
        run_command(world)
        return
    code = 1  # a bug: its traceback is printed as Python would
    try:
        run_command(world)
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else int(done.code is not None)
    except BaseException:  # noqa: BLE001 - printed, then the process ends with 1 as an uncaught error would
        traceback.print_exc()
    if not distributed.active():  # refused before joining the others: no thread of torch's to outlive
        sys.exit(code)
    distributed.leave()
    distributed.end_process(code)


def run_command(world: World) -> None:
    """cl-run's command line in this process (of `world`): compose, run, and say in one line what went wrong."""
    full_trace = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let Hydra's errors reach us; we print them in one line
    retain_freed_memory()
    errors: list[str] = []

    @hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
    def cl_run(cfg: DictConfig) -> dict:
        return run_job(cfg, errors, full_trace, world)

    try:
        check_output_folders(sys.argv[1:])
        register_search()
        if world.is_distributed:
            join_run(world)
        cl_run()
    except Interrupted as stop:
        if not world.is_main:
            sys.exit(128 + stop.signum)
        sweep_progress.close_views()
        if "-m" in sys.argv or "--multirun" in sys.argv:
            print(f"cl-run: stopped by signal {stop.signum}; the sweep's running jobs wrote their checkpoints: run "
                  "the same command again to resume it", file=sys.stderr)
        else:
            print(f"cl-run: stopped by signal {stop.signum} after writing {stop.checkpoint}; continue with: "
                  f"cl-run resume={Path(stop.checkpoint).parent}", file=sys.stderr)
        sys.exit(128 + stop.signum)
    except SweepRefused as refused:
        errors.append(str(refused))
    except KeyboardInterrupt:  # a second Ctrl-C: no checkpoint waited for
        sweep_progress.close_views()
        print("cl-run: stopped at once by a second Ctrl-C (the last checkpoint stays)", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    except Exception as err:
        if full_trace or not is_user_error(err):
            raise
        # a mistake in the command line, which every process of a distributed run finds: rank 0 says it, and the
        # others end once it has (torchrun stops the processes still running as soon as one ends with an error)
        if world.is_main:
            print_errors([*errors, one_line(err)])
        distributed.wait_for_the_others()
        sys.exit(2)
    print_errors(errors)
    if errors:
        sys.exit(2)


def print_errors(errors: list[str]) -> None:
    for message in errors:
        print(f"cl-run: error: {message}", file=sys.stderr, flush=True)
