"""The online monitor's curves of one run (eval.monitor_every), read from its TensorBoard events, as one PNG: the
training loss, the validation split's cosine kNN and online-head accuracy, and the collapse indicators RankMe and
uniformity, against the training step. Example:

    cl-run epochs=10 dataset.val_fraction=0.1 eval.monitor_every=1 hydra.run.dir=runs/watched
    python scripts/plot_monitor.py runs/watched monitored_run.png
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run folder (its tensorboard/ events)")
    parser.add_argument("out", type=Path, help="the PNG to write")
    args = parser.parse_args()
    events = EventAccumulator(str(args.run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    if "monitor/rankme" not in tags:
        parser.error(f"{args.run} has no monitor curves: run it with eval.monitor_every=1 dataset.val_fraction=0.1")

    def curve(tag: str) -> tuple[list[int], list[float]]:
        points = events.Scalars(tag) if tag in tags else []
        return [p.step for p in points], [p.value for p in points]

    figure, (loss_axis, accuracy_axis, spread_axis) = plt.subplots(1, 3, figsize=(13, 3.8))
    loss_axis.plot(*curve("train/loss"), color="tab:gray")
    loss_axis.set(title="training loss", xlabel="step")
    for tag, label in (("monitor/knn_top1", "cosine kNN"), ("monitor/head_top1", "online linear head")):
        steps, values = curve(tag)
        if steps:
            accuracy_axis.plot(steps, values, marker="o", label=label)
    accuracy_axis.set(title="validation top-1 accuracy", xlabel="step", ylim=(0, 1))
    accuracy_axis.legend(loc="lower right")
    spread_axis.plot(*curve("monitor/rankme"), marker="o", color="tab:green")
    spread_axis.set(title="RankMe (green) and uniformity (red)", xlabel="step")
    spread_axis.set_ylabel("RankMe (effective rank)", color="tab:green")
    uniformity_axis = spread_axis.twinx()
    uniformity_axis.plot(*curve("monitor/uniformity"), marker="s", color="tab:red")
    uniformity_axis.set_ylabel("uniformity (lower: more uniform)", color="tab:red")
    figure.suptitle(f"online monitoring of {args.run.name}")
    figure.tight_layout()
    figure.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
