"""A sweep folder -> one results table (Markdown and CSV, a row per job, both protocols) and one figure with
every job's t-SNE side by side. Runs at the end of `cl-run -m` (a Hydra callback) and as `cl-report DIR`."""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import sys
from pathlib import Path

import matplotlib.pyplot as plt
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cl_runner import export, run_folder
from cl_runner.data.datasets import CIFAR10_CLASSES, MNIST_CLASSES

log = logging.getLogger(__name__)
SCENARIO_GROUPS = ("dataset", "aug", "pairing", "loss", "encoder", "optimizer", "schedule")
ALWAYS_SHOWN = ("dataset", "aug", "loss")
METRICS = [("paper", "linear_top1"), ("paper", "linear_top3"), ("paper", "knn_top1"),
           ("standard", "linear_top1"), ("standard", "linear_top3"), ("standard", "knn_top1"),
           ("standard", "cosine_knn_top1")]


def load_jobs(sweep_dir: Path) -> list[dict]:
    """Every job folder under `sweep_dir` (one holding a status.json), in job-number order."""
    jobs = []
    for status_file in sorted(sweep_dir.glob(f"*/{run_folder.STATUS_FILE}")):
        folder = status_file.parent
        status = run_folder.read_status(folder) or {}
        metrics_file = folder / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        jobs.append({"folder": folder, "status": status.get("status", "unknown"), "metrics": metrics,
                     "scenario": metrics.get("scenario") or status.get("scenario") or {}})
    return sorted(jobs, key=lambda j: _job_number(j["folder"].name))


def _job_number(name: str) -> tuple[int, str]:
    head = name.split("_", 1)[0]
    return (int(head), name) if head.isdigit() else (sys.maxsize, name)


def table_rows(jobs: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: the scenario's groups (those that vary, plus dataset/aug/loss), the metrics of both
    protocols, training seconds and status."""
    scenarios = [j["scenario"] for j in jobs]
    groups = [g for g in SCENARIO_GROUPS
              if g in ALWAYS_SHOWN or len({s.get(g) for s in scenarios}) > 1]
    header = ["job", *groups, *(f"{p}.{m}" for p, m in METRICS), "train_s", "status"]
    rows = []
    for job, scenario in zip(jobs, scenarios):
        metrics = job["metrics"]
        values = [_fmt(metrics.get(p, {}).get(m)) for p, m in METRICS]
        train_s = _fmt(metrics.get("train", {}).get("seconds"), digits=1)
        rows.append([job["folder"].name.split("_", 1)[0], *(scenario.get(g, "") for g in groups), *values,
                     train_s, job["status"]])
    return header, rows


def _fmt(value, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_table(header: list[str], rows: list[list[str]]) -> str:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([header, *rows])
    return text.getvalue()


def save_tsne_grid(path: Path, jobs: list[dict]) -> bool:
    """All jobs' t-SNE plots in one grid figure; False when no job has t-SNE coordinates."""
    panels = [j for j in jobs if (j["folder"] / "tsne.csv").exists()]
    if not panels:
        return False
    cols = min(len(panels), 3 if len(panels) % 3 == 0 else 4)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, job in zip(axes.flat, panels):
        coords, labels = export.read_tsne_csv(job["folder"] / "tsne.csv")
        scenario = job["scenario"]
        classes = CIFAR10_CLASSES if scenario.get("dataset") == "cifar10" else MNIST_CLASSES
        top1 = job["metrics"].get("paper", {}).get("linear_top1")
        title = " / ".join(scenario.get(g, "?") for g in ALWAYS_SHOWN)
        export.plot_tsne(ax, coords, labels, classes, title + (f"\npaper top-1 {top1:.3f}" if top1 else ""))
    handles, names = axes.flat[0].get_legend_handles_labels()
    datasets = {j["scenario"].get("dataset") for j in panels}
    if len(datasets) > 1:  # MNIST digits and CIFAR-10 classes share a colour per class index
        names = [f"class {i}" for i in range(len(names))]
    fig.legend(handles, names, loc="lower center", ncol=10, markerscale=3, frameon=False)
    fig.tight_layout(rect=(0, 0.06 if rows > 1 else 0.1, 1, 1))
    export.save_figure(fig, path)
    return True


def build_report(sweep_dir: Path) -> Path:
    """Write results.md, results.csv and tsne_grid.png into `sweep_dir`; returns the Markdown table's path."""
    jobs = load_jobs(sweep_dir)
    if not jobs:
        raise FileNotFoundError(f"{sweep_dir} holds no cl-run job folders (none has a status.json)")
    header, rows = table_rows(jobs)
    export.write_bytes_atomic(sweep_dir / "results.md", markdown_table(header, rows).encode())
    export.write_bytes_atomic(sweep_dir / "results.csv", csv_table(header, rows).encode())
    save_tsne_grid(sweep_dir / "tsne_grid.png", jobs)
    return sweep_dir / "results.md"


class SweepReportCallback(Callback):
    """At the end of a multirun, the sweep's results table and t-SNE grid."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        path = build_report(Path(config.hydra.sweep.dir))
        log.info("sweep report: %s\n%s", path, path.read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cl-report", description=__doc__)
    parser.add_argument("sweep_dir", type=Path, help="a folder made by `cl-run -m ...`")
    args = parser.parse_args(argv)
    try:
        path = build_report(args.sweep_dir)
    except (FileNotFoundError, json.JSONDecodeError, OSError) as err:
        print(f"cl-report: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(path.read_text(), end="")


if __name__ == "__main__":
    main()
