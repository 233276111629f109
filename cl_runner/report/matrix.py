"""A sweep over two factors as a matrix (SimCLR's Figure 5 layout): rows the first factor's levels, columns the
second's, each cell the mean over seeds with its interval and its number of seeds, the random initialization's
score beside it; as a markdown table in results.md and a heatmap (matrix.png). Any two-factor sweep qualifies
(augmentation pairs, colour strength x blur, loss x temperature), per data set."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cl_runner import export
from cl_runner.intervals import CONFIDENCE, METHOD, Interval, mean_interval
from cl_runner.report.jobs import HEADLINE, Job, label, values


@dataclass
class Matrix:
    """One metric of a two-factor sweep: `cells[i][j]` the interval of rows[i] x columns[j] (None: no completed
    job), and the random initialization's score: the mean over the seeds of each seed's initial encoder."""

    row_factor: str
    column_factor: str
    rows: list[str]
    columns: list[str]
    cells: list[list[Interval | None]]
    random_init: float | None


UNSET = "(default)"  # the level of a factor in a job that did not set it (a sweep grown with another override)


def level(job: Job, factor: str) -> str:
    return job.factors.get(factor, UNSET)


def two_factors(jobs: list[Job]) -> tuple[str, str] | None:
    """The two factors that vary across the completed jobs, the data set aside, in the sweep's order; None when
    the sweep does not vary exactly two. Factors whose levels go one to one are one factor (a loss and the
    pairing it selects): the later one (the one chosen) stands for both."""
    done = [j for j in jobs if j.completed]
    names = list(dict.fromkeys(k for j in done for k in j.factors))
    varying: list[str] = []
    for name in (n for n in names if n != "dataset" and len({level(j, n) for j in done}) > 1):
        same = [v for v in varying if _one_to_one(done, v, name)]
        varying = [v for v in varying if v not in same] + [name]
    return (varying[0], varying[1]) if len(varying) == 2 else None


def _one_to_one(jobs: list[Job], a: str, b: str) -> bool:
    pairs = {(level(j, a), level(j, b)) for j in jobs}
    return len(pairs) == len({p[0] for p in pairs}) == len({p[1] for p in pairs})


def matrices(jobs: list[Job], protocol: str, name: str) -> dict[str, Matrix]:
    """Per data set, the matrix of `protocol`'s `name` score; empty unless exactly two factors vary."""
    factors = two_factors(jobs)
    if factors is None:
        return {}
    done = [j for j in jobs if j.completed]
    found = {}
    for dataset in dict.fromkeys(j.factors.get("dataset", "") for j in done):
        mine = [j for j in done if j.factors.get("dataset", "") == dataset]
        rows, columns = (list(dict.fromkeys(level(j, f) for j in mine)) for f in factors)
        cells = [[_cell([j for j in mine if level(j, factors[0]) == r and level(j, factors[1]) == c],
                        protocol, name) for c in columns] for r in rows]
        by_seed = [values([j for j in mine if j.seed == seed], "baseline", protocol, name)
                   for seed in dict.fromkeys(j.seed for j in mine)]
        baseline = [float(np.mean(b)) for b in by_seed if b]  # one figure per seed: its encoder as initialized
        found[dataset] = Matrix(*factors, rows, columns, cells, float(np.mean(baseline)) if baseline else None)
    return found


def _cell(jobs: list[Job], protocol: str, name: str) -> Interval | None:
    found = values(jobs, "", protocol, name)
    return mean_interval(found) if found else None


def _text(cell: Interval | None) -> str:
    if cell is None:
        return "-"
    spread = "" if math.isnan(cell.low) else f" ± {cell.half_width:.3f}"
    return f"{cell.mean:.3f}{spread} ({cell.n})"


def matrix_markdown(jobs: list[Job]) -> list[str]:
    """results.md's matrix section: one table per headline metric and data set (none unless two factors vary)."""
    lines = []
    for protocol, name in HEADLINE:
        for dataset, m in matrices(jobs, protocol, name).items():
            if not lines:
                lines += [f"## Matrix: {m.row_factor} (rows) x {m.column_factor} (columns)", "",
                          f"Mean over seeds ± half-width of its {CONFIDENCE:.0%} interval ({METHOD}), and in "
                          "brackets the number of seeds; drawn in matrix.png.", ""]
            init = "" if m.random_init is None else f"; random init {m.random_init:.3f}"
            lines += [f"{dataset + ': ' if dataset else ''}{label(protocol, name)} accuracy{init}", "",
                      "| " + " | ".join([f"{m.row_factor} \\ {m.column_factor}", *m.columns]) + " |",
                      "|" + "---|" * (len(m.columns) + 1)]
            lines += ["| " + " | ".join([row, *map(_text, cells)]) + " |" for row, cells in zip(m.rows, m.cells)]
            lines.append("")
    return lines


def save_matrix_png(path: Path, jobs: list[Job]) -> bool:
    """The heatmaps: per data set (rows of panels) and headline metric (columns), each cell coloured by its mean
    and labelled with mean, ± interval and seeds; the random initialization's score marked on the colour bar.
    False (nothing written) unless exactly two factors vary."""
    panels = [(protocol, name, dataset, m) for protocol, name in HEADLINE
              for dataset, m in matrices(jobs, protocol, name).items()]
    if not panels:
        return False
    datasets = list(dict.fromkeys(p[2] for p in panels))
    width = 2.6 + 0.95 * max(len(p[3].columns) for p in panels)  # a panel: its cells, the labels, the colour bar
    height = 2.2 + 0.95 * max(len(p[3].rows) for p in panels)
    plt = export.pyplot()
    fig, axes = plt.subplots(len(datasets), len(HEADLINE), squeeze=False,
                             figsize=(width * len(HEADLINE), height * len(datasets)))
    for protocol, name, dataset, m in panels:
        ax = axes[datasets.index(dataset), HEADLINE.index((protocol, name))]
        means = np.array([[np.nan if c is None else c.mean for c in row] for row in m.cells])
        shown = [v for v in [*means[~np.isnan(means)], m.random_init] if v is not None]
        margin = 0.04 * (max(shown) - min(shown) or 1.0)  # so that a random init at an end still shows on the bar
        image = ax.imshow(means, cmap="viridis", vmin=min(shown) - margin, vmax=max(shown) + margin)
        for i, row in enumerate(m.cells):
            for j, cell in enumerate(row):
                if cell is None:
                    continue
                colour = "white" if cell.mean < (min(shown) + max(shown)) / 2 else "black"
                spread = "" if math.isnan(cell.low) else f"\n±{cell.half_width:.3f}"
                ax.text(j, i, f"{cell.mean:.3f}{spread}\nn={cell.n}", ha="center", va="center", fontsize=7,
                        color=colour)
        ax.set_xticks(range(len(m.columns)), m.columns, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(m.rows)), m.rows, fontsize=8)
        ax.set_xlabel(m.column_factor, fontsize=9)
        ax.set_ylabel(m.row_factor, fontsize=9)
        init = "" if m.random_init is None else f"\nred on the bar: random init {m.random_init:.3f}"
        ax.set_title(f"{dataset + ': ' if dataset else ''}{label(protocol, name)} accuracy{init}", fontsize=9)
        bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        bar.ax.set_ylabel("mean over seeds", fontsize=8)
        if m.random_init is not None:
            bar.ax.axhline(m.random_init, color="tab:red", linewidth=4)
    fig.tight_layout()
    export.save_figure(fig, path)
    return True
