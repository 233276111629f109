"""One run, top to bottom: data -> pretrain -> evaluate -> export, into the run's own folder."""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.tensorboard import SummaryWriter

from cl_runner import distributed, evaluate, export, io, randomness, run_folder
from cl_runner.checkpoint import Checkpointer, TrainState
from cl_runner.data.datasets import ImageSet, Splits
from cl_runner.distributed import World
from cl_runner.errors import UserError
from cl_runner.optim import parameter_groups
from cl_runner.randomness import TrainingStreams, seed_everything
from cl_runner.runtime import available_cores, device_name, fits_on_device, resolve_device, resolve_precision
from cl_runner.train import (Interrupted, Objective, SignalStop, TrainingParts, TrainSettings, make_grad_scaler,
                             pretrain)

log = logging.getLogger(__name__)


def run(cfg: DictConfig, run_dir: Path, choices: dict[str, str], overrides: list[str],
        parent: int | None = None, world: World = World()) -> dict:
    """Pretrain, evaluate and export one scenario; returns the metrics written to metrics.json.
    `overrides` are the command line's, saved beside the resolved config. With `cfg.resume` set, the run
    continues in its own folder from its last checkpoint. `parent`: the pid of the sweep process that runs this
    job in a worker process; the job stops as if interrupted when that process dies.

    In a distributed run (`world`) every process trains on its share of each batch; rank 0 alone writes the run
    folder, evaluates and exports, and the others return empty metrics once training is done.

    A SIGINT or SIGTERM at any point ends the run at the next step or phase boundary with a checkpoint, and
    status.json says how to resume: training continues where it stopped, evaluation and export are redone."""
    device = resolve_device(cfg.device, world.is_distributed)
    precision = resolve_precision(cfg.precision, device)
    with distributed.together(world):
        if world.is_main and cfg.resume:
            choices = run_folder.take_over(run_dir)
        elif world.is_main:
            run_folder.claim(run_dir, choices, cfg, overrides)
    choices = distributed.broadcast(choices, world)
    try:
        with SignalStop(parent) as stop_signal:
            metrics = train_and_evaluate(cfg, run_dir, choices, overrides, device, precision, stop_signal, world)
    except Interrupted as stop:
        if world.is_main:
            run_folder.record_interruption(run_dir, stop.signum)
        stop_signal.hand_on(stop.signum)  # a cluster's warning: its launcher requeues the job (and exits)
        raise
    except Exception as err:
        if distributed.lost_peer(err):
            log.info("lost another process of the run: %s", err)
            raise distributed.PeerLost(f"another process of this {world.size}-process run ended while this one "
                                       f"waited for it; this one stops too. Continue from the last checkpoint "
                                       f"with the same command and resume={run_dir}") from err
        raise
    if world.is_main:
        run_folder.record_completion(run_dir)
        log.info("done in %.1f s: %s", metrics["timing"]["total_s"], summary_line(metrics))
    return metrics


def train_and_evaluate(cfg: DictConfig, run_dir: Path, choices: dict[str, str], overrides: list[str],
                       device: torch.device, precision: str, stop_signal: Callable[[], int | None],
                       world: World = World()) -> dict:
    """The run's work in its folder: data, pretraining (from the checkpoint on resume), evaluation, t-SNE,
    figures and weights; metrics.json as soon as the figures exist, and again with the whole timing at the end.
    Processes other than rank 0 of a distributed run stop after pretraining (returning {})."""
    started = time.perf_counter()
    seed_everything(cfg.seed)
    log.info("run folder %s, device %s (%s), scenario %s%s", run_dir, device, precision, choices,
             f", {world.size} processes" if world.is_distributed else "")
    with distributed.together(world):  # a bad data set or setting ends every process, rank 0 saying why
        check_world(cfg, world)
        data = load_data(cfg, device, overrides)
        train, test = data.train, data.test
        timing = {"data_s": time.perf_counter() - started}
        parts = build_training(cfg, train, device, precision, run_dir, world)
        state = parts.checkpointer.restore() if cfg.resume else TrainState()
    if cfg.resume:
        log.info("resuming from %s at epoch %d, step %d", parts.checkpointer.path, state.epoch, state.stats.steps)

    def stop_if_signalled() -> None:
        signum = stop_signal()
        if signum is not None:
            raise Interrupted(signum, parts.checkpointer.save(state))

    # on resume, TensorBoard drops the events logged after the checkpoint
    writing = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=state.stats.steps + 1) \
        if world.is_main else nullcontext()
    with writing as writer:
        settings = TrainSettings(epochs=cfg.epochs, batch_size=cfg.batch_size, device=device, precision=precision,
                                 log_every=cfg.log_every, channels_last=cfg.channels_last,
                                 checkpoint_every=cfg.checkpoint_every, world=world)
        stats = pretrain(parts, state, settings, writer, stop_signal)
        timing["train_s"] = stats.seconds
        tick = time.perf_counter()
        embedded = embed_for_evaluation(cfg, parts, data, world)
        if not world.is_main:
            return {}
        if world.is_distributed:  # the other processes are done: the probes may use this machine's cores
            torch.set_num_threads(available_cores())
        timing["embed_s"] = time.perf_counter() - tick
        test_x = embedded.test
        if not np.isfinite(test_x).all():
            raise UserError(f"the trained encoder gives NaN or infinite embeddings: nothing to evaluate (its weights "
                            f"are in {parts.checkpointer.describe()}); lower optimizer.lr or use precision=fp32")
        tick = time.perf_counter()
        metrics = evaluate_encoder(cfg, data, test_x, embedded.probe)
        metrics["diagnostics"]["alignment"] = evaluate.alignment(test_x[:len(embedded.views)], embedded.views)
        timing["eval_s"] = time.perf_counter() - tick
        stop_if_signalled()
        if cfg.eval.baseline:
            tick = time.perf_counter()
            initial = metrics if cfg.epochs == 0 else evaluate_encoder(cfg, data, embedded.initial_test,
                                                                       embedded.initial_probe)
            metrics["baseline"] = evaluate.metrics_without_figures(initial)
            metrics["gain"] = evaluate.gains(metrics, metrics["baseline"])
            timing["baseline_s"] = time.perf_counter() - tick
            stop_if_signalled()
        metrics.update(run_record(cfg, choices, stats, timing, device, precision))
        metrics["classes"] = test.classes  # for the report's figures (empty: unlabelled)
        io.write_json(run_dir / "metrics.json", metrics)  # as soon as the figures exist; again at the end
        timing["tsne_s"] = export_tsne(cfg, run_dir, test_x, test, choices, writer)
        export.log_hparams(writer, hyperparameters(cfg, choices, precision), evaluate.final_figures(metrics),
                           stats.steps)
    stop_if_signalled()

    tick = time.perf_counter()
    first = cfg.eval.protocols[0]
    if first in metrics:
        export.save_confusion_png(run_dir / "confusion_matrix.png", metrics[first]["confusion_matrix"],
                                  test.classes, f"{scenario_title(choices)}: linear probe, {first} protocol, "
                                  f"top-1 {metrics[first]['linear_top1']:.3f}")
    export.save_weights(parts.encoder, run_dir / "encoder.pt")
    timing["export_s"] = time.perf_counter() - tick
    timing["total_s"] = time.perf_counter() - started
    io.write_json(run_dir / "metrics.json", metrics)
    return metrics


def run_record(cfg: DictConfig, choices: dict, stats, timing: dict, device: torch.device, precision: str) -> dict:
    """What metrics.json says of the run beside its figures: scenario, seed, training, timing, environment."""
    return {"scenario": dict(choices), "seed": cfg.seed,
            "train": {"seconds": stats.seconds, "steps": stats.steps, "tuples": stats.tuples, "images": stats.images,
                      "tuples_per_s": stats.tuples_per_second, "images_per_s": stats.images_per_second,
                      "epoch_losses": stats.epoch_losses},
            "timing": timing,
            "environment": {"device": str(device), "device_name": device_name(device), "precision": precision,
                            "torch": torch.__version__, "threads": torch.get_num_threads()}}


def load_data(cfg: DictConfig, device: torch.device, overrides: list[str]) -> Splits:
    """The data set's splits, read once, on the training device when they fit there (else in the host's pinned
    memory, batches gathered there each step); what the run needs of the data is checked here."""
    dataset = instantiate(cfg.dataset)
    if not dataset.labelled:  # before any image is decoded
        check_label_free(cfg, dataset.name)
    data = dataset.load()
    train, test = placed(data.train, device), placed(data.test, device)
    data = Splits(train, test, train if data.probe is data.train else placed(data.probe, device))
    if cfg.batch_size > len(data.train):
        raise UserError(f"batch_size={cfg.batch_size} is larger than the training set ({len(data.train)} images)")
    if any(o.startswith("eval.tsne_points=") for o in overrides) and cfg.eval.tsne_points > len(data.test):
        raise UserError(f"eval.tsne_points={cfg.eval.tsne_points} is more than the {len(data.test)} test images")
    log.info("data: %d train, %d test images of shape %s", len(data.train), len(data.test),
             tuple(data.train.images.shape[1:]))
    if not data.test.labelled:
        log.info("no labels to evaluate with: the probes and kNN are skipped, the diagnostics reported (give "
                 "dataset.eval_path a labelled folder for the probes)")
    return data


def check_label_free(cfg: DictConfig, name: str) -> None:
    """Refuse a training setup that draws on class labels, for a data set that has none."""
    if cfg.pairing.get("negatives") == "label_aware":
        raise UserError(f"{name} has no labels, but pairing.negatives=label_aware draws negatives from other "
                        "classes; use pairing.negatives=random")


def placed(split: ImageSet, device: torch.device) -> ImageSet:
    """`split` on `device` when it fits in half its free memory, else in the host's pinned memory."""
    if device.type != "cuda" or fits_on_device(split.images.numel(), device):
        return split.to(device)
    log.info("the images (%.1f GB) do not fit in the GPU's free memory: kept in pinned host memory",
             split.images.numel() / 1e9)
    return split.to(device, pin=True)


def check_world(cfg: DictConfig, world: World) -> None:
    """A distributed run's settings that cannot work."""
    if world.is_distributed and cfg.batch_size % world.size:
        lower = cfg.batch_size - cfg.batch_size % world.size
        raise UserError(f"batch_size={cfg.batch_size} does not split evenly over {world.size} processes: use a "
                        f"multiple of {world.size} (e.g. {lower or world.size} or {lower + world.size})")


def build_training(cfg: DictConfig, train: ImageSet, device: torch.device, precision: str,
                   run_dir: Path, world: World = World()) -> TrainingParts:
    """The encoder, loss, sampler, optimizer, schedule and checkpointer of a run; in a distributed run with
    batch norm over the global batch (distributed.sync_bn) and the objective in DistributedDataParallel."""
    streams = TrainingStreams.from_seed(cfg.seed, device)
    encoder = build_encoder(cfg, train.images.shape[1], device)
    check_image_size(encoder, train, cfg.encoder.backbone._target_.rsplit(".", 1)[-1])
    sync_bn = world.is_distributed and cfg.distributed.sync_bn
    if sync_bn:
        encoder = distributed.sync_batch_norm(encoder, device)
    sampler = instantiate(cfg.pairing)
    sampler.setup(train, instantiate(cfg.aug), streams)
    loss_fn = instantiate(cfg.loss)
    try:  # the loss's parts, the optimizer and the schedule: their own checks of the config run here
        loss_fn.setup(encoder, cfg.batch_size)
        loss_fn.to(device)
        if sync_bn:  # a predictor's batch norm
            loss_fn = distributed.sync_batch_norm(loss_fn, device)
        trained = torch.nn.ModuleList([encoder, loss_fn])  # with the loss's own parameters (a predictor)
        optimizer = instantiate(cfg.optimizer)(parameter_groups(trained, cfg.optimizer.weight_decay))
        schedule = instantiate(cfg.schedule)(optimizer, steps_per_epoch=math.ceil(sampler.tuples_per_epoch() /
                                             cfg.batch_size), epochs=cfg.epochs, batch_size=cfg.batch_size)
    except ValueError as err:  # ours raise ConfigError (a ValueError); torch's optimizers a plain ValueError
        raise UserError(f"loss, optimizer or schedule: {err}") from err
    log.info("learning rate %.4g at the first step (optimizer.lr %g, scaling rule %s)", schedule.get_last_lr()[0],
             cfg.optimizer.lr, cfg.schedule.lr_scaling)
    scaler = make_grad_scaler(device, precision)
    objective = Objective(torch.compile(encoder) if cfg.compile else encoder, loss_fn)  # same weights
    if world.is_distributed:  # its gradient buckets take the parameters' memory format: set it first
        objective.to(memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
        objective = torch.nn.parallel.DistributedDataParallel(objective)
    return TrainingParts(encoder, loss_fn, sampler, optimizer, scaler, streams, schedule,
                         Checkpointer(run_dir, encoder, loss_fn, optimizer, scaler, streams, schedule,
                                      writes=world.is_main), objective)


def build_encoder(cfg: DictConfig, channels: int, device: torch.device) -> torch.nn.Module:
    """The encoder for images of `channels` channels as initialized from the run's `init` stream: the same
    weights for every run of this seed and encoder, whatever its loss, augmentation or data order."""
    with randomness.seeded(cfg.seed, "init"):
        encoder = instantiate(cfg.encoder, backbone={"in_channels": channels})
    return encoder.to(device)


def check_image_size(encoder: torch.nn.Module, images: ImageSet, name: str) -> None:
    """Refuse images that the encoder cannot take: too small for its layers, or giving features of another size
    than its head was built for (the study's CNN is sized for 18x18 to 33x33 images)."""
    side = "x".join(str(n) for n in images.images.shape[-2:])
    sample = images.take(torch.arange(1, device=next(encoder.parameters()).device))
    try:
        features = evaluate.embed(encoder, sample, "backbone")
    except RuntimeError as err:
        raise UserError(f"images of {side} are too small for the encoder's {name} ({str(err).splitlines()[0]}); set "
                        "dataset.image_size larger (image folders) or choose another encoder") from err
    expected = encoder.backbone.embedding_dim
    if features.shape[1] != expected:
        raise UserError(f"the encoder's {name} gives {features.shape[1]} features for images of {side}, not its "
                        f"{expected}: it is built for 18x18 to 33x33 images; set dataset.image_size=32 (image "
                        "folders) or use encoder=resnet18")


@dataclass
class Embeddings:
    """What the evaluation reads of the encoders: the trained encoder's embeddings of the test images, of the
    probe's training images (standard protocol) and of one augmented view of the first test images (alignment);
    and, for the random-encoder baseline, the initialization's of the test and probe images."""

    test: np.ndarray
    probe: np.ndarray | None
    views: np.ndarray
    initial_test: np.ndarray | None = None
    initial_probe: np.ndarray | None = None


def embed_for_evaluation(cfg: DictConfig, parts: TrainingParts, data: Splits, world: World) -> Embeddings:
    """Every embedding the evaluation needs, in one phase. In a distributed run each process embeds its shard
    of every set and all receive the whole (2 processes on the 2-core CPU: 0.66x the time of rank 0 alone with
    both cores, README); the probes then run on rank 0. The baseline's encoder is the initialization, rebuilt
    from the seed (so resume needs nothing saved): equal to an `epochs=0` run of the same seed."""
    features = cfg.eval.features
    probed = "standard" in cfg.eval.protocols and data.test.labelled

    def embed_all(encoder: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
        return evaluate.embed(encoder, images, features, world=world)

    embedded = Embeddings(embed_all(parts.encoder, data.test.images),
                          embed_all(parts.encoder, data.probe.images) if probed else None,
                          embed_all(parts.encoder, alignment_views(cfg, parts, data.test)))
    if cfg.eval.baseline and cfg.epochs > 0:
        device = next(parts.encoder.parameters()).device
        initial = build_encoder(cfg, data.train.images.shape[1], device)
        initial.to(memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)  # as trained
        embedded.initial_test = embed_all(initial, data.test.images)
        embedded.initial_probe = embed_all(initial, data.probe.images) if probed else None
    return embedded


def hyperparameters(cfg: DictConfig, choices: dict, precision: str) -> dict:
    """What TensorBoard's HParams tab compares a sweep's runs by: the scenario's choices and the key settings."""
    return {**choices, "seed": cfg.seed, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
            "lr": float(cfg.optimizer.lr), "precision": precision, "features": cfg.eval.features}


def evaluate_encoder(cfg: DictConfig, data: Splits, test_x: np.ndarray, probe_x: np.ndarray | None) -> dict:
    """Both protocols (as configured) and the diagnostics, on the frozen encoder's embeddings of clean images:
    `test_x` the test set's, `probe_x` the probe set's (standard protocol). Unlabelled test images get the
    (label-free) diagnostics only."""
    metrics: dict = {"features": cfg.eval.features, "diagnostics": evaluate.diagnostics(test_x)}
    if not data.test.labelled:  # load_data has said why
        return metrics
    test, num_classes = data.test, len(data.test.classes)
    test_y = test.labels.cpu().numpy()
    if "paper" in cfg.eval.protocols:
        metrics["paper"] = evaluate.paper_protocol(test_x, test_y, num_classes, seed=evaluation_seed(cfg),
                                                   test_fraction=cfg.eval.paper_test_fraction, knn_k=cfg.eval.knn_k)
    if "standard" in cfg.eval.protocols:
        train_y = data.probe.labels.cpu().numpy()
        metrics["standard"] = evaluate.standard_protocol(
            probe_x, train_y, test_x, test_y, num_classes, knn_k=cfg.eval.knn_k,
            cosine_knn_k=cfg.eval.cosine_knn_k, cosine_knn_temperature=cfg.eval.cosine_knn_temperature)
    return metrics


def evaluation_seed(cfg: DictConfig) -> int:
    """The seed of the evaluation's own draws (the paper protocol's split, t-SNE), as scikit-learn takes it."""
    return randomness.stream_seed(cfg.seed, "evaluation") % 2**32


def alignment_views(cfg: DictConfig, parts: TrainingParts, test: ImageSet, points: int = 2000) -> torch.Tensor:
    """One view (uint8) of each of the first test images, drawn by the run's own augmentation (seeded, so it is
    the same for every run of that augmentation): their embeddings' alignment (Wang & Isola 2020) with the clean
    images' is a diagnostic."""
    device = next(parts.encoder.parameters()).device
    images = test.take(torch.arange(min(points, len(test)), device=device))
    generator = randomness.generator(cfg.seed, "alignment", device)
    return parts.sampler.augment(images, generator).mul(255).round_().to(torch.uint8)


def export_tsne(cfg: DictConfig, run_dir: Path, test_x: np.ndarray, test, choices: dict, writer) -> float:
    """t-SNE of the first eval.tsne_points test images (CSV + PNG) and the same embeddings for TensorBoard's
    projector. Returns the seconds it took."""
    points = min(cfg.eval.tsne_points, len(test_x))
    if points < cfg.eval.tsne_points:
        log.info("eval.tsne_points=%d but the test set has %d images: using %d", cfg.eval.tsne_points,
                 len(test_x), points)
    if points < 2:
        return 0.0
    if evaluate.is_collapsed(test_x[:points]):  # scikit-learn's t-SNE can crash on identical points
        log.warning("t-SNE skipped: every test embedding is the same (the encoder has collapsed)")
        return 0.0
    tick = time.perf_counter()
    labels = test.labels[:points].cpu().numpy() if test.labelled else np.full(points, -1)  # -1: unlabelled
    coords = export.tsne(test_x[:points], seed=evaluation_seed(cfg), perplexity=cfg.eval.tsne_perplexity)
    export.write_tsne_csv(run_dir / "tsne.csv", coords, labels)
    export.save_tsne_png(run_dir / "tsne.png", coords, labels, test.classes,
                         f"{scenario_title(choices)}: t-SNE of the first {points} test images")
    writer.add_embedding(test_x[:points], metadata=[test.classes[c] for c in labels] if test.labelled else None,
                         tag="test_embeddings")
    return time.perf_counter() - tick


def scenario_title(choices: dict) -> str:
    return " / ".join(choices[g] for g in ("dataset", "aug", "loss") if g in choices)


def summary_line(metrics: dict) -> str:
    """E.g. "paper linear 0.9250 (+0.1510 over its random initialization), kNN 0.9300 (+0.1000); standard ..."."""
    parts, explained = [], False
    for protocol in (p for p in evaluate.PROTOCOLS if p in metrics):
        for name, label in (("linear_top1", f"{protocol} linear"), ("knn_top1", "kNN")):
            text = f"{label} {metrics[protocol][name]:.4f}"
            gain = metrics.get("gain", {}).get(protocol, {}).get(name)
            if gain is not None:
                text += f" ({gain:+.4f}{'' if explained else ' over its random initialization'})"
                explained = True
            parts.append(text)
    return ", ".join(parts)


