"""The report's tables: scenarios with their intervals and gains, paired comparisons, one row per job, and the
intervals of every metric for further analysis; as Markdown and CSV."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from cl_runner.intervals import CONFIDENCE, METHOD, Interval, mean_interval
from cl_runner.report.comparisons import contrasts, following_factors
from cl_runner.report.jobs import (DIAGNOSTICS, HEADLINE, METRICS, SUMMARY, TRAINED_HEADLINE, TRAINING, Job,
                                  factor_columns, label, scenarios, values)
from cl_runner.report.matrix import matrix_markdown


def _cell(interval: Interval, signed: bool = False) -> str:
    if interval.n == 0:
        return ""
    mean = f"{interval.mean:+.4f}" if signed else f"{interval.mean:.4f}"
    return mean if math.isnan(interval.low) else f"{mean} ± {interval.half_width:.4f}"


def scenario_table(jobs: list[Job]) -> tuple[list[str], list[list[str]]]:
    """One row per scenario: mean ± half-width over its completed seeds for the summary metrics, the random
    initialization's headline scores and the gain over it, and a note where training did not help. A sweep
    without labels (no probe scores at all) shows the label-free diagnostics and the random initialization's."""
    columns = factor_columns(jobs)
    label_free = not any(values(jobs, "", p, m) for p, m in SUMMARY)
    trained = [f for f in TRAINED_HEADLINE if values(jobs, "", *f)]  # the protocols that train, where run
    shown, initial, gained = (DIAGNOSTICS, DIAGNOSTICS[:2], []) if label_free else (
        SUMMARY, HEADLINE + trained, HEADLINE + trained)
    shown = [f for f in shown if label_free or values(jobs, "", *f)] + [f for f in TRAINING if values(jobs, "", *f)]
    header = [*columns, "seeds", *(label(p, m) for p, m in shown),
              *(f"random init, {label(p, m)}" for p, m in initial), *(f"gain, {label(p, m)}" for p, m in gained),
              "note"]
    rows = []
    for group in scenarios(jobs).values():
        done = [j for j in group if j.completed]
        row = [group[0].factors.get(c, "") for c in columns]
        row.append(str(len(done)))
        row += [_cell(mean_interval(values(done, "", p, m))) for p, m in shown]
        row += [_cell(mean_interval(values(done, "baseline", p, m))) for p, m in initial]
        gains = [mean_interval(values(done, "gain", p, m)) for p, m in gained]
        row += [_cell(g, signed=True) for g in gains]
        row.append(_note(group, done, list(zip(gained, gains))))
        rows.append(row)
    return header, rows


def _note(group: list[Job], done: list[Job], gains: list[tuple[tuple[str, str], Interval]]) -> str:
    notes = []
    collapsed = sum(bool(j.metrics.get("diagnostics", {}).get("collapsed")) for j in done)
    if collapsed:
        notes.append(f"collapsed in {collapsed} of {len(done)} runs (every embedding equal)")
    if len(done) < len(group):
        notes.append(f"{len(group) - len(done)} of {len(group)} jobs not completed")
    for (protocol, name), gain in gains:
        if gain.n and (gain.high < 0 if gain.n > 1 else gain.mean < 0):
            notes.append(f"below its random initialization by {label(protocol, name)}"
                         + (" (one seed)" if gain.n == 1 else ""))
    return "; ".join(notes)


def comparison_table(jobs: list[Job], factor: str) -> tuple[list[str], list[list[str]]]:
    done = [j for j in jobs if j.completed]
    columns = [c for c in factor_columns(jobs) if c != factor and c not in following_factors(done, factor)]
    header = [*columns, "difference", "seeds"]
    for protocol, name in HEADLINE:
        header += [f"paired Δ {label(protocol, name)}", "unpaired ±"]
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


# the diagnostics of the trained encoder and of its random initialization, in the CSV files
LABEL_FREE = [("", p, m) for p, m in DIAGNOSTICS] + [("baseline", p, m) for p, m in DIAGNOSTICS[:2]]
SCORES = [(s, p, m) for s in ("", "baseline", "gain") for p, m in METRICS] + LABEL_FREE  # the long tables' columns


def scores_of(jobs: list[Job]) -> list[tuple[str, str, str]]:
    """SCORES, and the loss's training diagnostics where a job has them."""
    return SCORES + [("", p, m) for p, m in TRAINING if values(jobs, "", p, m)]


def job_table(jobs: list[Job]) -> tuple[list[str], list[list[str]]]:
    """The long table: one row per job with its seed, every metric, the random initialization's and the gain."""
    columns, scores = factor_columns(jobs), scores_of(jobs)
    header = ["job", *columns, "seed", *(".".join(filter(None, f)) for f in scores), "train_s", "status"]
    rows = []
    for job in jobs:
        numbers = [job.value(*f) for f in scores]
        train_s = job.metrics.get("train", {}).get("seconds")
        rows.append([job.folder.name, *(job.factors.get(c, "") for c in columns),
                     "" if job.seed is None else str(job.seed), *("" if v is None else f"{v:.4f}" for v in numbers),
                     "" if train_s is None else f"{train_s:.1f}", job.status])
    return header, rows


def interval_table(jobs: list[Job]) -> tuple[list[str], list[list[str]]]:
    """Per scenario and metric (trained, baseline, gain): mean, low, high and n, for further analysis."""
    columns, scores = factor_columns(jobs), scores_of(jobs)
    header = [*columns]
    for score in scores:
        name = ".".join(filter(None, score))
        header += [f"{name}.mean", f"{name}.low", f"{name}.high", f"{name}.n"]
    rows = []
    for group in scenarios(jobs).values():
        row = [group[0].factors.get(c, "") for c in columns]
        for score in scores:
            interval = mean_interval(values(group, *score))
            row += ["" if math.isnan(v) else f"{v:.4f}" for v in (interval.mean, interval.low, interval.high)]
            row.append(str(interval.n))
        rows.append(row)
    return header, rows


Table = tuple[list[str], list[list[str]]]  # header, rows


def comparisons_csv(comparisons: dict[str, Table]) -> Table:
    """All factors' comparison tables in one table: each factor's context columns by name (they differ from factor
    to factor), then the difference and the scores, which every table shares."""
    contexts = {f: header[:header.index("difference")] for f, (header, _) in comparisons.items()}
    context_columns = list(dict.fromkeys(c for columns in contexts.values() for c in columns))
    tail = next(iter(comparisons.values()))[0][len(next(iter(contexts.values()))):]
    tail = [f"unpaired ± {tail[i - 1].removeprefix('paired Δ ')}" if name == "unpaired ±" else name
            for i, name in enumerate(tail)]
    rows = []
    for factor, (header, table) in comparisons.items():
        width = len(contexts[factor])
        for row in table:
            context = dict(zip(contexts[factor], row))
            rows.append([factor, *(context.get(c, "") for c in context_columns), *row[width:]])
    return ["factor", *context_columns, *tail], rows


def report_markdown(sweep_dir: Path, jobs: list[Job], comparisons: dict[str, Table]) -> str:
    """results.md: the sweep in a line, the scenario table, the matrix of a two-factor sweep, and each factor's
    comparison table."""
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
              markdown_table(*scenario_table(jobs)), "", *matrix_markdown(jobs)]
    for factor, (header, rows) in comparisons.items():
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


