"""A sweep folder -> the comparison a scientist can read: per scenario (every choice and override but the seed)
the mean over seeds with its 95% confidence interval, the gain over the random initialization, paired
differences between scenarios that share their seeds' random draws, one figure of it all, and a t-SNE grid.
Runs at the end of `cl-run -m` (a Hydra callback) and as `cl-report DIR`.

Files: results.md (scenarios and comparisons), results.csv (one row per job, with its seed), scenarios.csv
(mean and interval per metric), comparisons.csv, results.png, tsne_grid.png."""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cl_runner import export, run_folder
from cl_runner.data.datasets import CIFAR10_CLASSES, MNIST_CLASSES
from cl_runner.intervals import CONFIDENCE, METHOD, Interval, mean_interval, paired_difference, unpaired_difference

log = logging.getLogger(__name__)
SCENARIO_GROUPS = ("dataset", "aug", "pairing", "loss", "encoder", "optimizer", "schedule", "experiment")
ALWAYS_SHOWN = ("dataset", "aug", "loss")
NOT_FACTORS = ("seed", "resume")  # overrides that do not define a scenario
METRICS = [("paper", "linear_top1"), ("paper", "linear_top3"), ("paper", "knn_top1"),
           ("standard", "linear_top1"), ("standard", "linear_top3"), ("standard", "knn_top1"),
           ("standard", "cosine_knn_top1")]
SUMMARY = [("paper", "linear_top1"), ("paper", "knn_top1"), ("standard", "linear_top1"), ("standard", "knn_top1"),
           ("standard", "cosine_knn_top1")]
HEADLINE = [("paper", "linear_top1"), ("standard", "linear_top1")]  # compared, gained, drawn
NAMES = {"linear_top1": "linear", "linear_top3": "top-3", "knn_top1": "kNN", "cosine_knn_top1": "cosine kNN"}


@dataclass
class Job:
    """One job folder of the sweep: its status, metrics, seed and the factors that define its scenario (the
    config group choices and the command line's other overrides, the seed excluded)."""

    folder: Path
    status: str
    metrics: dict
    seed: int | None
    factors: dict[str, str] = field(default_factory=dict)
    started: str = ""

    @property
    def completed(self) -> bool:
        return self.status == "completed" and bool(self.metrics)

    def value(self, section: str, protocol: str, name: str) -> float | None:
        """metrics[protocol][name] (section ""), or the same figure of `baseline` or `gain`."""
        source = self.metrics.get(section, {}) if section else self.metrics
        value = source.get(protocol, {}).get(name)
        return float(value) if isinstance(value, (int, float)) else None


def load_jobs(sweep_dir: Path) -> list[Job]:
    """Every job folder under `sweep_dir` (one holding a status.json), in the sweep's order of values (from its
    multirun.yaml), then by seed; jobs of no known order follow in the order they started."""
    jobs = []
    for status_file in sorted(sweep_dir.glob(f"*/{run_folder.STATUS_FILE}")):
        folder = status_file.parent
        status = run_folder.read_status(folder) or {}
        metrics = _read(folder / "metrics.json", json.loads) or {}
        choices = metrics.get("scenario") or status.get("scenario") or {}
        config = _read(folder / "config.yaml", yaml.safe_load) or {}
        overrides = _read(folder / "overrides.yaml", yaml.safe_load) or []
        factors = dict(choices)
        for override in overrides:
            key, _, value = override.lstrip("+~").partition("=")
            if key not in choices and key not in NOT_FACTORS and not key.startswith("hydra."):
                factors[key] = value
        jobs.append(Job(folder, status.get("status", "unknown"), metrics, metrics.get("seed", config.get("seed")),
                        factors, status.get("started", "")))
    order = sweep_order(sweep_dir)
    jobs.sort(key=lambda j: (j.started or "~", j.folder.name))  # never started (a refused config): last
    first_seen = {id(j): i for i, j in enumerate(jobs)}

    def rank(job: Job) -> tuple:
        places = [order[k].index(v) if v in order.get(k, []) else len(order.get(k, [])) for k, v in
                  sorted(job.factors.items(), key=lambda kv: list(order).index(kv[0]) if kv[0] in order else 99)]
        return (*places, job.seed if isinstance(job.seed, int) else 0, first_seen[id(job)])

    return sorted(jobs, key=rank) if order else jobs


def sweep_order(sweep_dir: Path) -> dict[str, list[str]]:
    """The values each swept key takes, in the order the sweep lists them (the experiment's sweeper params and
    the command line's `key=a,b,c`), from the multirun.yaml Hydra writes into the sweep folder."""
    hydra_cfg = (_read(sweep_dir / "multirun.yaml", yaml.safe_load) or {}).get("hydra", {})
    swept = dict(hydra_cfg.get("sweeper", {}).get("params") or {})
    for override in hydra_cfg.get("overrides", {}).get("task", []):
        key, _, value = override.partition("=")
        swept[key] = value
    return {key: [v.strip() for v in str(value).split(",")] for key, value in swept.items()
            if "," in str(value) and key not in NOT_FACTORS}


def _read(path: Path, parse):
    try:
        return parse(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None


def factor_columns(jobs: list[Job]) -> list[str]:
    """The factors shown: dataset, aug and loss, and every other one that varies across the sweep."""
    names = [g for g in SCENARIO_GROUPS if any(g in j.factors for j in jobs)]
    names += sorted({k for j in jobs for k in j.factors} - set(names))
    return [n for n in names if n in ALWAYS_SHOWN or len({j.factors.get(n) for j in jobs}) > 1]


def scenarios(jobs: list[Job]) -> dict[tuple, list[Job]]:
    """Jobs grouped by scenario (all factors), in order of first appearance."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault(tuple(sorted(job.factors.items())), []).append(job)
    return groups


def values(jobs: list[Job], section: str, protocol: str, name: str) -> list[float]:
    found = [j.value(section, protocol, name) for j in jobs if j.completed]
    return [v for v in found if v is not None]


def _cell(interval: Interval, signed: bool = False) -> str:
    if interval.n == 0:
        return ""
    mean = f"{interval.mean:+.4f}" if signed else f"{interval.mean:.4f}"
    return mean if math.isnan(interval.low) else f"{mean} ± {interval.half_width:.4f}"


def _label(protocol: str, name: str) -> str:
    return f"{protocol} {NAMES.get(name, name)}"


def scenario_table(jobs: list[Job]) -> tuple[list[str], list[list[str]]]:
    """One row per scenario: mean ± half-width over its completed seeds for the summary metrics, the random
    initialization's headline figures and the gain over it, and a note where training did not help."""
    columns = factor_columns(jobs)
    header = [*columns, "seeds", *(_label(p, m) for p, m in SUMMARY),
              *(f"random init, {_label(p, m)}" for p, m in HEADLINE), *(f"gain, {_label(p, m)}" for p, m in HEADLINE),
              "note"]
    rows = []
    for group in scenarios(jobs).values():
        done = [j for j in group if j.completed]
        row = [group[0].factors.get(c, "") for c in columns]
        row.append(str(len(done)))
        row += [_cell(mean_interval(values(done, "", p, m))) for p, m in SUMMARY]
        row += [_cell(mean_interval(values(done, "baseline", p, m))) for p, m in HEADLINE]
        gains = [mean_interval(values(done, "gain", p, m)) for p, m in HEADLINE]
        row += [_cell(g, signed=True) for g in gains]
        row.append(_note(group, done, gains))
        rows.append(row)
    return header, rows


def _note(group: list[Job], done: list[Job], gains: list[Interval]) -> str:
    notes = []
    collapsed = sum(bool(j.metrics.get("diagnostics", {}).get("collapsed")) for j in done)
    if collapsed:
        notes.append(f"collapsed in {collapsed} of {len(done)} runs (every embedding equal)")
    if len(done) < len(group):
        notes.append(f"{len(group) - len(done)} of {len(group)} jobs not completed")
    for (protocol, name), gain in zip(HEADLINE, gains):
        if gain.n and (gain.high < 0 if gain.n > 1 else gain.mean < 0):
            notes.append(f"below its random initialization by {_label(protocol, name)}"
                         + (" (one seed)" if gain.n == 1 else ""))
    return "; ".join(notes)


@dataclass
class Contrast:
    """One paired comparison: `level` minus `reference` of `factor`, within the scenario `context`."""

    factor: str
    reference: str
    level: str
    context: dict[str, str]
    paired: dict[tuple[str, str], Interval]
    unpaired: dict[tuple[str, str], Interval]


def default_factors(jobs: list[Job]) -> list[str]:
    """Every factor that varies, except the data set (accuracies on different data sets do not compare) and a
    factor that only follows one already compared (the pairing a loss brings)."""
    done = [j for j in jobs if j.completed]
    varying = [c for c in factor_columns(done) if c != "dataset" and len({j.factors.get(c) for j in done}) > 1]
    chosen: list[str] = []
    for factor in sorted(varying, key=lambda c: c != "loss"):  # the loss first: it chooses its pairing
        if not any(factor in _following(done, earlier) for earlier in chosen):
            chosen.append(factor)
    return chosen


def contrasts(jobs: list[Job], factor: str, metrics=HEADLINE) -> list[Contrast]:
    """Each level of `factor` against its first level (in sweep order), within every combination of the other
    factors, over the seeds both ran: the mean paired difference with its interval, and the unpaired (Welch)
    interval of the same difference for comparison."""
    done = [j for j in jobs if j.completed and factor in j.factors]
    levels = list(dict.fromkeys(j.factors[factor] for j in done))
    following = _following(done, factor)
    contexts: dict[tuple, dict[str, dict[int, Job]]] = {}
    for job in done:
        context = tuple(sorted((k, v) for k, v in job.factors.items() if k != factor and k not in following))
        contexts.setdefault(context, {}).setdefault(job.factors[factor], {})[job.seed] = job
    found = []
    for context, by_level in contexts.items():
        reference = by_level.get(levels[0]) if levels else None
        if reference is None:
            continue
        for level in levels[1:]:
            other = by_level.get(level)
            if other is None:
                continue
            seeds = sorted(set(reference) & set(other))
            paired, unpaired = {}, {}
            for protocol, name in metrics:
                a = [reference[s].value("", protocol, name) for s in seeds]
                b = [other[s].value("", protocol, name) for s in seeds]
                if None in a or None in b:
                    continue
                paired[protocol, name] = paired_difference(a, b)
                unpaired[protocol, name] = unpaired_difference(values(list(reference.values()), "", protocol, name),
                                                               values(list(other.values()), "", protocol, name))
            found.append(Contrast(factor, levels[0], level, dict(context), paired, unpaired))
    return found


def _following(jobs: list[Job], factor: str) -> set[str]:
    """The other factors that change with `factor` and only with it in this sweep (loss=triplet brings
    pairing=triplet): part of the difference compared, not of its context."""
    following = set()
    for other in {k for j in jobs for k in j.factors} - {factor}:
        per_level: dict[str, set] = {}
        for job in jobs:
            per_level.setdefault(job.factors.get(factor), set()).add(job.factors.get(other))
        if all(len(v) == 1 for v in per_level.values()) and len(set().union(*per_level.values())) > 1:
            following.add(other)
    return following


def comparison_table(jobs: list[Job], factor: str) -> tuple[list[str], list[list[str]]]:
    done = [j for j in jobs if j.completed]
    columns = [c for c in factor_columns(jobs) if c != factor and c not in _following(done, factor)]
    header = [*columns, "difference", "seeds"]
    for protocol, name in HEADLINE:
        header += [f"paired Δ {_label(protocol, name)}", "unpaired ±"]
    rows = []
    for contrast in contrasts(jobs, factor):
        n = max((i.n for i in contrast.paired.values()), default=0)
        row = [contrast.context.get(c, "") for c in columns]
        row += [f"{contrast.level} − {contrast.reference}", str(n)]
        for key in HEADLINE:
            paired, unpaired = contrast.paired.get(key), contrast.unpaired.get(key)
            row.append("" if paired is None else _cell(paired, signed=True) + (" *" if paired.excludes_zero else ""))
            row.append("" if unpaired is None or math.isnan(unpaired.low) else f"{unpaired.half_width:.4f}")
        rows.append(row)
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_table(header: list[str], rows: list[list[str]]) -> str:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([header, *rows])
    return text.getvalue()


def job_table(jobs: list[Job]) -> tuple[list[str], list[list[str]]]:
    """The long table: one row per job with its seed, every metric, the random initialization's and the gain."""
    columns = factor_columns(jobs)
    figures = [("", p, m) for p, m in METRICS] + [(s, p, m) for s in ("baseline", "gain") for p, m in METRICS]
    header = ["job", *columns, "seed", *(".".join(filter(None, f)) for f in figures), "train_s", "status"]
    rows = []
    for job in jobs:
        numbers = [job.value(*f) for f in figures]
        train_s = job.metrics.get("train", {}).get("seconds")
        rows.append([job.folder.name, *(job.factors.get(c, "") for c in columns),
                     "" if job.seed is None else str(job.seed), *("" if v is None else f"{v:.4f}" for v in numbers),
                     "" if train_s is None else f"{train_s:.1f}", job.status])
    return header, rows


def interval_table(jobs: list[Job]) -> tuple[list[str], list[list[str]]]:
    """Per scenario and metric (trained, baseline, gain): mean, low, high and n, for further analysis."""
    columns = factor_columns(jobs)
    figures = [(s, p, m) for s in ("", "baseline", "gain") for p, m in METRICS]
    header = [*columns]
    for figure in figures:
        name = ".".join(filter(None, figure))
        header += [f"{name}.mean", f"{name}.low", f"{name}.high", f"{name}.n"]
    rows = []
    for group in scenarios(jobs).values():
        row = [group[0].factors.get(c, "") for c in columns]
        for figure in figures:
            interval = mean_interval(values(group, *figure))
            row += ["" if math.isnan(v) else f"{v:.4f}" for v in (interval.mean, interval.low, interval.high)]
            row.append(str(interval.n))
        rows.append(row)
    return header, rows


def report_markdown(sweep_dir: Path, jobs: list[Job], factors: list[str]) -> str:
    groups = scenarios(jobs)
    seeds = sorted({j.seed for j in jobs if j.seed is not None})
    completed = sum(j.completed for j in jobs)
    most = max(sum(j.completed for j in g) for g in groups.values())
    lines = [f"# Sweep {sweep_dir}", "",
             f"{len(jobs)} jobs ({completed} completed), {len(groups)} scenarios, seeds {seeds}.", ""]
    if most < 2:
        lines += ["One seed per scenario: no interval is possible, and a gap between two scenarios cannot be told "
                  "from seed-to-seed noise. Run each scenario on several seeds, e.g. `seed=0,1,2`.", ""]
    lines += [f"Mean over seeds ± half-width of its {CONFIDENCE:.0%} confidence interval ({METHOD}; no ± with "
              "one seed). Random init: the same seeds' encoders as initialized, evaluated the same way; gain: "
              "trained minus random init, per seed. One row per job: results.csv.", "",
              markdown_table(*scenario_table(jobs))]
    for factor in factors:
        header, rows = comparison_table(jobs, factor)
        if not rows:
            continue
        within = header[:header.index("difference")]
        lines += [f"## {factor}: paired differences within {' x '.join(within) or 'the sweep'}", "",
                  f"Mean over seeds of the per-seed difference (runs of one seed share their initial weights and "
                  f"evaluation split, and on the same pairing their data order, negatives and augmentation "
                  f"draws), ± half-width of its "
                  f"{CONFIDENCE:.0%} {METHOD} interval; * where the interval excludes zero. Unpaired ±: Welch's "
                  f"interval of the same difference if the runs had not been paired.", "",
                  markdown_table(header, rows)]
    return "\n".join(lines)


def save_results_png(path: Path, jobs: list[Job]) -> bool:
    """Per scenario and headline metric: each seed as a dot, the mean with its interval, the random
    initialization marked; one row of panels per data set. False when no job completed."""
    done = [j for j in jobs if j.completed]
    if not done:
        return False
    datasets = list(dict.fromkeys(j.factors.get("dataset", "") for j in done))
    columns = [c for c in factor_columns(done) if c != "dataset"]
    height = max(len(scenarios([j for j in done if j.factors.get("dataset", "") == d])) for d in datasets)
    fig, axes = plt.subplots(len(datasets), len(HEADLINE), squeeze=False,
                             figsize=(5.2 * len(HEADLINE), 0.45 + len(datasets) * (0.42 * height + 0.9)))
    for row, dataset in enumerate(datasets):
        groups = list(scenarios([j for j in done if j.factors.get("dataset", "") == dataset]).values())
        labels = [" / ".join(g[0].factors.get(c, "") for c in columns) for g in groups]
        for col, (protocol, name) in enumerate(HEADLINE):
            ax = axes[row, col]
            for y, group in enumerate(groups):
                trained = values(group, "", protocol, name)
                ax.scatter(trained, y + np.linspace(-0.12, 0.12, len(trained)), s=14, color="tab:blue", alpha=0.55,
                           zorder=2, label="a seed" if y == 0 else None)
                interval = mean_interval(trained)
                if interval.n:
                    error = None if math.isnan(interval.low) else [[interval.half_width], [interval.half_width]]
                    ax.errorbar(interval.mean, y, xerr=error, fmt="D", color="black", ms=5, capsize=4, zorder=3,
                                label=f"mean, {CONFIDENCE:.0%} CI" if y == 0 else None)
                baseline = values(group, "baseline", protocol, name)
                if baseline:
                    ax.scatter([np.mean(baseline)], [y], marker="|", s=260, color="tab:red", linewidths=2.5,
                               zorder=2, label="random init" if y == 0 else None)
            ax.set_yticks(range(len(groups)), labels, fontsize=8)
            ax.set_ylim(len(groups) - 0.5, -0.5)
            ax.grid(axis="x", alpha=0.3)
            ax.set_title(f"{dataset}: {_label(protocol, name)} accuracy" if dataset else _label(protocol, name),
                         fontsize=10)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(names), frameon=False)
    fig.tight_layout(rect=(0, 0.45 / fig.get_figheight(), 1, 1))
    export.save_figure(fig, path)
    return True


def save_tsne_grid(path: Path, jobs: list[Job]) -> bool:
    """One t-SNE plot per scenario (its first seed's) in a grid figure; False when no job has t-SNE coordinates."""
    panels = [next(j for j in group if (j.folder / "tsne.csv").exists())
              for group in scenarios(jobs).values() if any((j.folder / "tsne.csv").exists() for j in group)]
    if not panels:
        return False
    cols = min(len(panels), 3 if len(panels) % 3 == 0 else 4)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, job in zip(axes.flat, panels):
        coords, labels = export.read_tsne_csv(job.folder / "tsne.csv")
        classes = CIFAR10_CLASSES if job.factors.get("dataset") == "cifar10" else MNIST_CLASSES
        top1 = job.value("", "paper", "linear_top1")
        title = " / ".join(job.factors.get(g, "?") for g in ALWAYS_SHOWN) + f", seed {job.seed}"
        export.plot_tsne(ax, coords, labels, classes, title + (f"\npaper top-1 {top1:.3f}" if top1 else ""))
    handles, names = axes.flat[0].get_legend_handles_labels()
    if len({j.factors.get("dataset") for j in panels}) > 1:  # MNIST digits and CIFAR-10 share a colour per index
        names = [f"class {i}" for i in range(len(names))]
    fig.legend(handles, names, loc="lower center", ncol=10, markerscale=3, frameon=False)
    fig.tight_layout(rect=(0, 0.06 if rows > 1 else 0.1, 1, 1))
    export.save_figure(fig, path)
    return True


def build_report(sweep_dir: Path, compare: list[str] | None = None) -> Path:
    """Write the report's files into `sweep_dir` (see the module's docstring); `compare`: the factors whose
    levels are compared pairwise (default: every factor that varies, but the data set). Returns results.md."""
    jobs = load_jobs(sweep_dir)
    if not jobs:
        raise FileNotFoundError(f"{sweep_dir} holds no cl-run job folders (none has a status.json)")
    known = factor_columns(jobs)
    unknown = [f for f in compare or [] if f not in known]
    if unknown:
        raise ValueError(f"--compare {', '.join(unknown)}: not a factor of this sweep; it has {', '.join(known)}")
    factors = default_factors(jobs) if compare is None else compare
    write = export.write_bytes_atomic
    write(sweep_dir / "results.md", report_markdown(sweep_dir, jobs, factors).encode())
    write(sweep_dir / "results.csv", csv_table(*job_table(jobs)).encode())
    write(sweep_dir / "scenarios.csv", csv_table(*interval_table(jobs)).encode())
    comparisons = [(f, comparison_table(jobs, f)) for f in factors]
    rows = [[f, *row] for f, (_, table) in comparisons for row in table]
    if rows:
        header = ["factor", *[h for h in comparisons[0][1][0]]]
        write(sweep_dir / "comparisons.csv", csv_table(header, rows).encode())
    save_results_png(sweep_dir / "results.png", jobs)
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
    """At the start of a multirun, the command that resumes it; at its end, the sweep's report and that
    command again."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        log.info("sweep folder %s; to resume or extend this sweep, run: %s", config.hydra.sweep.dir,
                 rerun_command(config))

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        path = build_report(Path(config.hydra.sweep.dir))
        log.info("sweep report: %s\n%s\nto resume or extend this sweep, run: %s", path, path.read_text(),
                 rerun_command(config))


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


if __name__ == "__main__":
    main()
