"""Write what a run produced: figures (PNG), t-SNE coordinates, weights, TensorBoard's HParams and projector;
every file through cl_runner.atomic's writes."""
from __future__ import annotations

import csv
import importlib
import io
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from cl_runner import atomic, evaluation, randomness
from cl_runner.data.datasets import ImageSet

if TYPE_CHECKING:
    import matplotlib.pyplot as plt

log = logging.getLogger(__name__)
TSNE_COLUMNS = ("x", "y", "label", "index")


def scenario_title(choices: dict) -> str:
    """A figure's title for the scenario, e.g. "mnist / guo / triplet"."""
    return " / ".join(choices[g] for g in ("dataset", "aug", "loss") if g in choices)


def hyperparameters(cfg: DictConfig, choices: dict, precision: str) -> dict:
    """What TensorBoard's HParams tab compares a sweep's runs by: the scenario's choices and the key settings."""
    return {**choices, "seed": cfg.seed, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
            "lr": float(cfg.optimizer.lr), "precision": precision, "features": cfg.eval.features}


def tsne_later(beside: Executor | None, settings: DictConfig, seed: int, test_x: np.ndarray
               ) -> Callable[[], np.ndarray | None]:
    """`tsne_coordinates`, to be collected by calling the result: computed `beside` the caller's next work (in
    that executor's thread) when one is given, else when collected. Beside the probes it pays only where they
    leave the CPU free (a GPU); on a CPU the two shared its cores (measured: no gain, README). Its library is
    imported before the thread starts: two threads importing scikit-learn at once can each find the other's
    modules half-initialized (an ImportError)."""
    if beside is None:
        return partial(tsne_coordinates, settings, seed, test_x)
    importlib.import_module("sklearn.manifold")
    return beside.submit(tsne_coordinates, settings, seed, test_x).result


def tsne_coordinates(settings: DictConfig, seed: int, test_x: np.ndarray) -> np.ndarray | None:
    """t-SNE coordinates of the first `settings.tsne_points` test embeddings; None where there are fewer than two
    or all are the same (said in the log)."""
    points = min(settings.tsne_points, len(test_x))
    if points < settings.tsne_points:
        log.info("eval.tsne_points=%d but the test set has %d images: using %d", settings.tsne_points,
                 len(test_x), points)
    if points < 2:
        return None
    if evaluation.is_collapsed(test_x[:points]):  # scikit-learn's t-SNE can crash on identical points
        log.warning("t-SNE skipped: every test embedding is the same (the encoder has collapsed)")
        return None
    return tsne(test_x[:points], seed=randomness.evaluation_seed(seed), perplexity=settings.tsne_perplexity)


def tsne_outputs(coords: np.ndarray | None, run_dir: Path, test_x: np.ndarray, test: ImageSet, title: str,
                 writer: SummaryWriter) -> None:
    """The t-SNE `coords` of the first test images (tsne.csv, tsne.png titled `title`: the scenario) and their
    embeddings for TensorBoard's projector; nothing without coordinates."""
    if coords is None:
        return
    points = len(coords)
    labels = test.labels[:points].cpu().numpy() if test.labelled else np.full(points, -1)  # -1: unlabelled
    write_tsne_csv(run_dir / "tsne.csv", coords, labels)
    save_tsne_png(run_dir / "tsne.png", coords, labels, test.classes,
                  f"{title}: t-SNE of the first {points} test images")
    writer.add_embedding(test_x[:points], metadata=[test.classes[c] for c in labels] if test.labelled else None,
                         tag="test_embeddings")


def final_outputs(run_dir: Path, metrics: dict, protocol: str, classes: list[str], title: str,
                  encoder: torch.nn.Module) -> None:
    """The confusion matrix of `protocol`'s linear probe as a figure (when it ran) and the encoder's weights; for a
    backbone that is a torchvision model (encoder=resnet18, encoder=torchvision) also that model's own state dict,
    which torchvision's builder of the same model loads without cl-runner (README, "Using what you trained")."""
    if protocol in metrics:
        save_confusion_png(run_dir / "confusion_matrix.png", metrics[protocol]["confusion_matrix"], classes,
                           f"{title}: linear probe, {protocol} protocol, top-1 {metrics[protocol]['linear_top1']:.3f}")
    save_weights(encoder, run_dir / "encoder.pt")
    torchvision_net = getattr(getattr(encoder, "backbone", None), "net", None)
    if torchvision_net is not None:
        save_weights(torchvision_net, run_dir / TORCHVISION_FILE)


TORCHVISION_FILE = "backbone_torchvision.pt"


def save_embeddings(run_dir: Path, splits: dict[str, tuple[np.ndarray, torch.Tensor | None]]) -> None:
    """embeddings_SPLIT.npy [N, D] float32 and, where the split is labelled, labels_SPLIT.npy [N] int64, for each
    split name -> (embeddings, labels): for analysis elsewhere (numpy.load, no pickles)."""
    for split, (embeddings, labels) in splits.items():
        atomic.write_bytes(run_dir / f"embeddings_{split}.npy", npy_bytes(np.asarray(embeddings, dtype=np.float32)))
        if labels is not None:
            atomic.write_bytes(run_dir / f"labels_{split}.npy", npy_bytes(labels.cpu().numpy().astype(np.int64)))


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def pyplot():
    """matplotlib's pyplot on its file-only backend (Agg), imported when the first figure is drawn rather than when
    a run starts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot


def save_figure(fig: plt.Figure, path: Path, dpi: int = 120) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    atomic.write_bytes(path, buffer.getvalue())


def save_weights(module: torch.nn.Module, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    atomic.write_bytes(path, buffer.getvalue())


def log_hparams(writer: SummaryWriter, hyperparameters: dict, scores: dict[str, float], step: int) -> None:
    """The run's hyperparameters and final scores for TensorBoard's HParams tab, in the run's own event files
    (SummaryWriter.add_hparams would start a second run folder), and the scores as scalars at `step`."""
    for summary in hparams(hyperparameters, scores):  # the experiment, session-start and session-end records
        writer.file_writer.add_summary(summary)
    for tag, value in scores.items():
        writer.add_scalar(tag, value, step)


def tsne(embeddings: np.ndarray, seed: int, perplexity: float = 30.0) -> np.ndarray:
    """2-d t-SNE (van der Maaten & Hinton 2008) coordinates of `embeddings`, PCA-initialized and seeded."""
    perplexity = min(perplexity, (len(embeddings) - 1) / 3)  # scikit-learn needs perplexity < n
    from sklearn.manifold import TSNE

    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(embeddings)


def write_tsne_csv(path: Path, coords: np.ndarray, labels: np.ndarray) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(TSNE_COLUMNS)
    writer.writerows((f"{x:.5f}", f"{y:.5f}", int(label), i) for i, ((x, y), label) in enumerate(zip(coords, labels)))
    atomic.write_bytes(path, text.getvalue().encode())


def read_tsne_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(coords [N, 2], labels [N]) from a t-SNE CSV written by `write_tsne_csv`."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    coords = np.array([[float(r["x"]), float(r["y"])] for r in rows]).reshape(-1, 2)
    return coords, np.array([int(r["label"]) for r in rows])


def plot_tsne(ax: plt.Axes, coords: np.ndarray, labels: np.ndarray, classes: list[str], title: str) -> None:
    """One colour per class; unlabelled points (label -1, no classes) in one grey."""
    cmap = pyplot().get_cmap("tab10")
    if not classes:
        ax.scatter(coords[:, 0], coords[:, 1], s=4, color="0.35", alpha=0.8)
    for c, name in enumerate(classes):
        mask = labels == c
        ax.scatter(coords[mask, 0], coords[mask, 1], s=4, color=cmap(c % 10), label=name, alpha=0.8)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def save_tsne_png(path: Path, coords: np.ndarray, labels: np.ndarray, classes: list[str], title: str) -> None:
    fig, ax = pyplot().subplots(figsize=(6.5, 5.5))
    plot_tsne(ax, coords, labels, classes, title)
    if classes:
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=3, fontsize=8, frameon=False)
    save_figure(fig, path)


def save_confusion_png(path: Path, matrix: list[list[int]], classes: list[str], title: str) -> None:
    matrix = np.asarray(matrix)
    fig, ax = pyplot().subplots(figsize=(6.5, 5.5))
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
