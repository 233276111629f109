"""Write what a run produced: figures, t-SNE coordinates, weights, TensorBoard's HParams; every file through
cl_runner.io's atomic writes."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402
from torch.utils.tensorboard.summary import hparams  # noqa: E402

from cl_runner.io import write_bytes_atomic  # noqa: E402

TSNE_COLUMNS = ("x", "y", "label", "index")


def save_figure(fig: plt.Figure, path: Path, dpi: int = 120) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())


def save_weights(module: torch.nn.Module, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    write_bytes_atomic(path, buffer.getvalue())


def log_hparams(writer: SummaryWriter, hyperparameters: dict, figures: dict[str, float], step: int) -> None:
    """The run's hyperparameters and final figures for TensorBoard's HParams tab, in the run's own event files
    (SummaryWriter.add_hparams would start a second run folder), and the figures as scalars at `step`."""
    for summary in hparams(hyperparameters, figures):  # the experiment, session-start and session-end records
        writer.file_writer.add_summary(summary)
    for tag, value in figures.items():
        writer.add_scalar(tag, value, step)


def tsne(embeddings: np.ndarray, seed: int, perplexity: float = 30.0) -> np.ndarray:
    """2-d t-SNE (van der Maaten & Hinton 2008) coordinates of `embeddings`, PCA-initialized and seeded."""
    perplexity = min(perplexity, (len(embeddings) - 1) / 3)  # scikit-learn needs perplexity < n
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(embeddings)


def write_tsne_csv(path: Path, coords: np.ndarray, labels: np.ndarray) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(TSNE_COLUMNS)
    writer.writerows((f"{x:.5f}", f"{y:.5f}", int(label), i) for i, ((x, y), label) in enumerate(zip(coords, labels)))
    write_bytes_atomic(path, text.getvalue().encode())


def read_tsne_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(coords [N, 2], labels [N]) from a t-SNE CSV written by `write_tsne_csv`."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    coords = np.array([[float(r["x"]), float(r["y"])] for r in rows]).reshape(-1, 2)
    return coords, np.array([int(r["label"]) for r in rows])


def plot_tsne(ax: plt.Axes, coords: np.ndarray, labels: np.ndarray, classes: list[str], title: str) -> None:
    """One colour per class; unlabelled points (label -1, no classes) in one grey."""
    cmap = plt.get_cmap("tab10")
    if not classes:
        ax.scatter(coords[:, 0], coords[:, 1], s=4, color="0.35", alpha=0.8)
    for c, name in enumerate(classes):
        mask = labels == c
        ax.scatter(coords[mask, 0], coords[mask, 1], s=4, color=cmap(c % 10), label=name, alpha=0.8)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def save_tsne_png(path: Path, coords: np.ndarray, labels: np.ndarray, classes: list[str], title: str) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    plot_tsne(ax, coords, labels, classes, title)
    if classes:
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=3, fontsize=8, frameon=False)
    save_figure(fig, path)


def save_confusion_png(path: Path, matrix: list[list[int]], classes: list[str], title: str) -> None:
    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, classes, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=9)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                color="white" if count > threshold else "black")
    save_figure(fig, path)
