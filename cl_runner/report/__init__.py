"""A sweep folder -> the comparison a scientist can read: per scenario (every choice and override but the seed)
the mean over seeds with its 95% confidence interval, the gain over the random initialization, paired
differences between scenarios that share their seeds' random draws, one figure of it all, and a t-SNE grid.
Runs at the end of `cl-run -m` (a Hydra callback) and as `cl-report DIR`.

Files: results.md (scenarios and comparisons), results.csv (one row per job, with its seed), scenarios.csv
(mean and interval per metric), comparisons.csv, results.png, tsne_grid.png, and for a sweep over two factors
matrix.png (report/matrix.py). A search's folder (an Optuna study,
cl_runner.search) gets a search's report instead: report/study.py."""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cl_runner import atomic, run_folder
from cl_runner.report.comparisons import default_factors
from cl_runner.report.figures import save_results_png, save_tsne_grid
from cl_runner.report.jobs import factor_columns, load_jobs
from cl_runner.report.matrix import save_matrix_png
from cl_runner.report.study import build_search_report, is_search
from cl_runner.report.tables import (comparison_table, comparisons_csv, csv_table, interval_table, job_table,
                                     report_markdown)

log = logging.getLogger(__name__)


def build_report(sweep_dir: Path, compare: list[str] | None = None) -> Path:
    """Write the report's files into `sweep_dir` (see the module's docstring); `compare`: the factors whose
    levels are compared pairwise (default: every factor that varies, but the data set). Returns results.md."""
    if is_search(sweep_dir):
        if compare:
            raise ValueError("--compare: a search's trials are not a grid of factors; its report lists them")
        return build_search_report(sweep_dir)
    jobs = load_jobs(sweep_dir)
    if not jobs:
        raise FileNotFoundError(f"{sweep_dir} holds no cl-run job folders (none has a status.json)")
    known = factor_columns(jobs)
    unknown = [f for f in compare or [] if f not in known]
    if unknown:
        raise ValueError(f"--compare {', '.join(unknown)}: not a factor of this sweep; it has {', '.join(known)}")
    comparisons = {f: comparison_table(jobs, f) for f in (default_factors(jobs) if compare is None else compare)}
    write = atomic.write_bytes
    write(sweep_dir / "results.md", report_markdown(sweep_dir, jobs, comparisons).encode())
    write(sweep_dir / "results.csv", csv_table(*job_table(jobs)).encode())
    write(sweep_dir / "scenarios.csv", csv_table(*interval_table(jobs)).encode())
    if any(rows for _, rows in comparisons.values()):
        write(sweep_dir / "comparisons.csv", csv_table(*comparisons_csv(comparisons)).encode())
    save_results_png(sweep_dir / "results.png", jobs)
    save_matrix_png(sweep_dir / "matrix.png", jobs)
    save_tsne_grid(sweep_dir / "tsne_grid.png", jobs)
    return sweep_dir / "results.md"


def rerun_command(config: DictConfig) -> str:
    """The command that runs this sweep again in its folder: done jobs are skipped, interrupted ones resumed,
    failed ones rerun; with more values it grows the sweep."""
    hydra_overrides = [o for o in config.hydra.overrides.hydra
                       if not o.startswith(("hydra.sweep.dir=", "hydra.mode="))]
    words = [*config.hydra.overrides.task, *hydra_overrides, f"hydra.sweep.dir={Path(config.hydra.sweep.dir)}"]
    return "cl-run -m " + " ".join(shlex.quote(w) for w in words)


class SweepReportCallback(Callback):
    """At the start of a multirun, the command that resumes it; at its end, the sweep's report, that command
    again, and one line per job that failed in this multirun (then exit code 2). Jobs may run in other processes
    or on other machines (joblib, submitit): they write their errors into the sweep folder's errors.log."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        run_folder.forget_sweep_errors(Path(config.hydra.sweep.dir))
        log.info("sweep folder %s; to resume or extend this sweep, run: %s", config.hydra.sweep.dir,
                 rerun_command(config))

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            path = build_report(sweep_dir)
            log.info("sweep report: %s\n%s\nto resume or extend this sweep, run: %s", path, path.read_text(),
                     rerun_command(config))
        finally:  # the jobs' errors, even where no report could be made
            errors = run_folder.sweep_errors(sweep_dir)
            for line in errors:
                print(f"cl-run: error: {line}", file=sys.stderr)
            if errors:  # Hydra turns a callback's exceptions into warnings: the sweep's exit status is set here
                sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cl-report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="a folder made by `cl-run -m ...`")
    parser.add_argument("--compare", action="append", metavar="FACTOR",
                        help="compare the levels of this factor (a config group such as loss or aug, or an "
                             "overridden key) within every combination of the others; repeatable")
    args = parser.parse_args(argv)
    try:
        path = build_report(args.sweep_dir, args.compare)
    except (FileNotFoundError, json.JSONDecodeError, OSError, ValueError) as err:
        print(f"cl-report: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(path.read_text(), end="")

