"""The report's figures: each scenario's seeds, mean, interval and random initialization (results.png), and the
t-SNE plots side by side (tsne_grid.png)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cl_runner import export
from cl_runner.intervals import CONFIDENCE, mean_interval
from cl_runner.report.jobs import ALWAYS_SHOWN, HEADLINE, Job, factor_columns, label, scenarios, values


def save_results_png(path: Path, jobs: list[Job]) -> bool:
    """Per scenario and headline metric (of those the jobs have: eval.protocols may leave one out): each seed as a
    dot, the mean with its interval, the random initialization marked; one row of panels per data set. False when
    no job completed with a headline score."""
    done = [j for j in jobs if j.completed]
    shown = [h for h in HEADLINE if values(done, "", *h)]
    if not shown:
        return False
    datasets = list(dict.fromkeys(j.factors.get("dataset", "") for j in done))
    columns = [c for c in factor_columns(done) if c != "dataset"]
    height = max(len(scenarios([j for j in done if j.factors.get("dataset", "") == d])) for d in datasets)
    fig, axes = export.pyplot().subplots(len(datasets), len(shown), squeeze=False,
                             figsize=(5.2 * len(shown), 0.45 + len(datasets) * (0.42 * height + 0.9)))
    for row, dataset in enumerate(datasets):
        groups = list(scenarios([j for j in done if j.factors.get("dataset", "") == dataset]).values())
        labels = [" / ".join(g[0].factors.get(c, "") for c in columns) for g in groups]
        for col, (protocol, name) in enumerate(shown):
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
            ax.set_title(f"{dataset}: {label(protocol, name)} accuracy" if dataset else label(protocol, name),
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
    fig, axes = export.pyplot().subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, job in zip(axes.flat, panels):
        coords, labels = export.read_tsne_csv(job.folder / "tsne.csv")
        classes = job.metrics.get("classes")
        if classes is None:  # written before metrics.json named them: the label numbers
            classes = [str(c) for c in range(int(labels.max()) + 1)] if len(labels) else []
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


