"""A search's report (a sweep folder holding an Optuna study: cl_runner.search): every trial with its parameters
and its validation objective, the best setting, and that setting's test figures, measured once at the end of its
run and never used to choose it. Files: results.md, trials.csv, search.png."""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from cl_runner import atomic, export, run_folder
from cl_runner.errors import first_line
from cl_runner.report.jobs import METRICS, NAMES, SUMMARY, Job, label, load_jobs, sweep_config
from cl_runner.report.tables import csv_table, markdown_table
from cl_runner.search import INTERRUPTED, STUDY_FILE, import_optuna

FRESH_SEEDS = 5  # seeds the report's command measures the best setting on


@dataclass
class Trial:
    """One trial of the study: its state (completed, failed, interrupted, running, waiting), parameters, value and
    job folder (None where none was made)."""

    number: int
    state: str
    params: dict
    value: float | None
    job: Job | None
    note: str


@dataclass
class Search:
    """The study of a sweep folder as the report reads it."""

    folder: Path
    objective: str
    maximize: bool
    trials: list[Trial]
    log_scaled: set[str]  # parameters drawn on a log scale
    config: dict  # the sweep's composed config (multirun.yaml)

    @property
    def best(self) -> Trial | None:
        done = [t for t in self.trials if t.state == "completed"]
        pick = max if self.maximize else min
        return pick(done, key=lambda t: t.value) if done else None

    @property
    def parameters(self) -> list[str]:
        return list(dict.fromkeys(name for t in self.trials for name in t.params))


def is_search(sweep_dir: Path) -> bool:
    return (sweep_dir / STUDY_FILE).is_file()


def load_search(sweep_dir: Path) -> Search:
    """The study in `sweep_dir`'s search.db with each trial's job folder (matched by its parameters' overrides)."""
    optuna = import_optuna()
    from optuna.trial import TrialState

    config = sweep_config(sweep_dir)
    sweeper = config.get("hydra", {}).get("sweeper", {})
    objective = config.get("search", {}).get("objective", "objective")
    try:
        study = optuna.load_study(study_name=sweeper.get("study_name") or "search",
                                  storage=f"sqlite:///{sweep_dir / STUDY_FILE}")
    except Exception as err:  # noqa: BLE001 - a broken or foreign file: said in one line
        raise ValueError(f"cannot read the search's study in {sweep_dir / STUDY_FILE}: {first_line(err)}") from err
    jobs = load_jobs(sweep_dir)
    trials, log_scaled = [], set()
    for frozen in study.get_trials(deepcopy=False):
        job = next((j for j in jobs if all(j.factors.get(k) == str(v) for k, v in frozen.params.items())), None)
        state, note = frozen.state.name.lower(), ""
        if frozen.state == TrialState.COMPLETE:
            state = "completed"
        elif frozen.state == TrialState.FAIL and INTERRUPTED in frozen.user_attrs:
            state, note = "interrupted", f"run again as trial {frozen.user_attrs[INTERRUPTED]}"
        elif frozen.state == TrialState.FAIL:
            state = "failed"
            note = ((run_folder.read_status(job.folder) or {}).get("error", "") if job else "") or "no job folder"
        log_scaled |= {k for k, d in frozen.distributions.items() if getattr(d, "log", False)
                       or type(d).__name__.endswith("LogUniformDistribution")}
        trials.append(Trial(frozen.number, state, dict(frozen.params), frozen.value, job, note))
    return Search(sweep_dir, objective, study.direction.name == "MAXIMIZE", trials, log_scaled, config)


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trials_table(search: Search, full: bool = False) -> tuple[list[str], list[list[str]]]:
    """One row per trial: state, parameters, objective, the best value so far, a note; `full`: exact parameter
    values and the job folder (trials.csv)."""
    names = search.parameters
    header = ["trial", "state", *names, search.objective, "best so far", "note"] + (["job"] if full else [])
    rows, best = [], None
    for trial in search.trials:
        if trial.state == "completed":
            better = best is None or (trial.value > best if search.maximize else trial.value < best)
            best = trial.value if better else best
        params = [str(trial.params[n]) if full else _number(trial.params[n]) if n in trial.params else ""
                  for n in names]
        value = "" if trial.value is None else f"{trial.value:.4f}"
        rows.append([str(trial.number), trial.state, *params, value, "" if best is None else f"{best:.4f}",
                     trial.note] + ([trial.job.folder.name if trial.job else ""] if full else []))
    return header, rows


def remeasure_command(search: Search, best: Trial) -> str:
    """cl-run measuring the best setting on FRESH_SEEDS seeds the search did not use, with a grid sweep (the
    search's other overrides kept, its space and sweeper dropped), into a sweep folder beside the search's."""
    hydra_cfg = search.config.get("hydra", {})
    used = {t.job.seed for t in search.trials if t.job and isinstance(t.job.seed, int)} or {0}
    seeds = [s for s in range(max(used) + FRESH_SEEDS + 1) if s not in used][:FRESH_SEEDS]
    task = [o for o in hydra_cfg.get("overrides", {}).get("task", [])
            if o.partition("=")[0].lstrip("+~") not in {*best.params, "seed"}]
    hydra_overrides = [o for o in hydra_cfg.get("overrides", {}).get("hydra", [])
                       if not o.startswith(("hydra.sweep.dir=", "hydra.mode=", "hydra.sweeper", "hydra/sweeper"))]
    words = [*task, *(f"{k}={v}" for k, v in best.params.items()), f"seed={','.join(map(str, seeds))}",
             *hydra_overrides, "hydra/sweeper=basic", "hydra.sweeper.params=null",
             f"hydra.sweep.dir={search.folder}-best"]
    return "cl-run -m " + " ".join(shlex.quote(w) for w in words)


def _scores(job: Job, rows: list[tuple[str, str]], parts: list[tuple[str, str]]) -> list[list[str]]:
    table = []
    for title, section in rows:
        cells = [job.value(section, protocol, name) for protocol, name in parts]
        if any(c is not None for c in cells):
            table.append([title, *("" if c is None else f"{c:+.4f}" if section == "gain" else f"{c:.4f}"
                                   for c in cells)])
    return table


def report_markdown(search: Search, figure: bool) -> str:
    trials = search.trials
    counts = {state: sum(t.state == state for t in trials) for state in dict.fromkeys(t.state for t in trials)}
    best = search.best
    val_images = next((t.job.metrics["val"].get("scored_images") for t in trials
                       if t.job and isinstance(t.job.metrics.get("val"), dict)), None)
    held_out = f"{val_images} training images held out" if val_images else "training images held out"
    lines = [f"# Search {search.folder}", "",
             f"Optuna study in {STUDY_FILE}: {len(trials)} trials ("
             + ", ".join(f"{n} {state}" for state, n in counts.items()) + "). "
             f"Objective: {'maximize' if search.maximize else 'minimize'} `{search.objective}`, scored on the "
             f"validation split ({held_out}, `dataset.val_fraction`); the test set played no part in choosing.", ""]
    if best is None or best.job is None:
        lines += ["No trial completed: the table below says why each one ended.", ""]
    else:
        val = [p for p in METRICS if p[0] == "standard"]
        lines += [f"## Best setting: trial {best.number}", "",
                  " ".join(f"`{k}={_number(v)}`" for k, v in best.params.items())
                  + f" ({search.objective} {best.value:.4f}; job folder `{best.job.folder.name}`)", "",
                  "Its validation figures, by which it was chosen:", "",
                  markdown_table(["validation", *(NAMES.get(n, n) for _, n in val)],
                                 _scores(best.job, [("trained", ""), ("random init", "baseline")],
                                         [("val", n) for _, n in val])),
                  "Its test figures, measured once at the end of its run and seen only after the choice (one seed: "
                  "no interval):", "",
                  markdown_table(["test", *(label(p, n) for p, n in SUMMARY)],
                                 _scores(best.job, [("trained", ""), ("random init", "baseline"), ("gain", "gain")],
                                         SUMMARY)),
                  f"The best of {counts.get('completed', 0)} trials on one seed is an optimistic estimate: it was "
                  f"picked for its luck as well as its setting. Measure the setting on {FRESH_SEEDS} seeds the "
                  "search did not use (a grid sweep, with intervals and the random initialization) before "
                  "reporting it:", "", f"    {remeasure_command(search, best)}", ""]
    lines += ["## Trials", "", "Each trial's exact parameters and job folder: trials.csv.", "",
              markdown_table(*trials_table(search))]
    if figure:
        lines += ["![the search's trials](search.png)", ""]
    return "\n".join(lines)


def save_search_png(path: Path, search: Search) -> bool:
    """The objective per trial with the best so far, and against each parameter; the best trial starred. False
    when no trial completed."""
    done = [t for t in search.trials if t.state == "completed"]
    if not done:
        return False
    names = search.parameters
    plt = export.pyplot()
    from matplotlib import ticker

    fig, axes = plt.subplots(1, 1 + len(names), figsize=(3.6 * (1 + len(names)), 3.3), squeeze=False)
    axes = axes[0]
    pick = max if search.maximize else min
    running = [pick(t.value for t in done if t.number <= trial.number) for trial in done]
    axes[0].scatter([t.number for t in done], [t.value for t in done], s=18, color="tab:blue", label="a trial")
    axes[0].step([t.number for t in done], running, where="post", color="black", lw=1.2, label="best so far")
    failed = [t.number for t in search.trials if t.state == "failed"]
    if failed:
        low = min(t.value for t in done)
        axes[0].scatter(failed, [low] * len(failed), marker="x", color="tab:red", label="failed")
    best = search.best
    axes[0].scatter([best.number], [best.value], marker="*", s=140, color="tab:orange", zorder=3,
                    label=f"best: trial {best.number}")
    axes[0].set_xlabel("trial")
    axes[0].xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    axes[0].set_ylabel(search.objective)
    axes[0].legend(fontsize=7, frameon=False)
    for ax, name in zip(axes[1:], names):
        drawn = [t for t in done if name in t.params]
        numeric = all(isinstance(t.params[name], (int, float)) for t in drawn)

        def where(trial: Trial):  # a choice of names (a config group's options, say) on a categorical axis
            return trial.params[name] if numeric else str(trial.params[name])

        if drawn:
            ax.scatter([where(t) for t in drawn], [t.value for t in drawn], s=18, color="tab:blue")
            if name in best.params:
                ax.scatter([where(best)], [best.value], marker="*", s=140, color="tab:orange", zorder=3)
        if name in search.log_scaled:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel(name + (" (log scale)" if name in search.log_scaled else ""))
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"{search.folder.name}: {len(done)} completed trials", fontsize=10)
    fig.tight_layout()
    export.save_figure(fig, path)
    return True


def build_search_report(sweep_dir: Path) -> Path:
    """Write the search's report (module docstring) into `sweep_dir`; returns results.md."""
    search = load_search(sweep_dir)
    figure = save_search_png(sweep_dir / "search.png", search)
    atomic.write_bytes(sweep_dir / "results.md", report_markdown(search, figure).encode())
    atomic.write_bytes(sweep_dir / "trials.csv", csv_table(*trials_table(search, full=True)).encode())
    return sweep_dir / "results.md"
