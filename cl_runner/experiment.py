"""One run, top to bottom: data -> build -> pretrain -> evaluate -> export, into the run's own folder."""
from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.tensorboard import SummaryWriter

from cl_runner import atomic, distributed, evaluation, export, run_folder
from cl_runner.checkpoint import CHECKPOINT_FILE, LoopPosition, TrainingRecord
from cl_runner.config import check_data, check_labels_needed
from cl_runner.data.datasets import ImageSet, Splits
from cl_runner.data.splits import hold_out, keep_fraction
from cl_runner.distributed import World
from cl_runner.errors import UserError
from cl_runner.interruption import Interrupted, SignalStop
from cl_runner.parts import build_training, initial_encoder
from cl_runner.randomness import seed_everything, stream_seed
from cl_runner.runtime import (Compute, available_cores, device_name, fits_on_device, out_of_memory,
                               resolve_device, resolve_precision)
from cl_runner.train import LoopSettings, pretrain

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
    compute = Compute(device, resolve_precision(cfg.precision, device), cfg.channels_last)
    with distributed.together(world):
        if world.is_main and cfg.resume:
            choices = run_folder.take_over(run_dir)
        elif world.is_main:
            run_folder.claim(run_dir, choices, cfg, overrides)
    choices = distributed.broadcast(choices, world)
    try:
        with SignalStop(parent) as stop_signal:
            metrics = train_and_evaluate(cfg, run_dir, choices, overrides, compute, stop_signal, world,
                                         progress_bar=parent is None)
    except Interrupted as stop:
        if world.is_main:
            run_folder.record_interruption(run_dir, stop.signum)
        stop_signal.hand_on(stop.signum)  # a cluster's warning: its launcher requeues the job (and exits)
        raise
    except torch.cuda.OutOfMemoryError as err:  # torch.OutOfMemoryError: any device's allocator
        raise out_of_memory(err, cfg.batch_size, compute.device, run_dir / CHECKPOINT_FILE) from err
    except Exception as err:
        if distributed.lost_peer(err):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # torchrun's stop for the survivors: it is stopping
            log.info("lost another process of the run: %s", err)
            raise distributed.PeerLost(f"another process of this {world.size}-process run ended while this one "
                                       f"waited for it; this one stops too. Continue from the last checkpoint "
                                       f"with the same command and resume={run_dir}") from err
        raise
    if world.is_main:
        run_folder.record_completion(run_dir)
        log.info("done in %.1f s: %s", metrics["timing"]["total_s"], evaluation.summary_line(metrics))
    return metrics


def train_and_evaluate(cfg: DictConfig, run_dir: Path, choices: dict[str, str], overrides: list[str],
                       compute: Compute, stop_signal: Callable[[], int | None], world: World = World(),
                       progress_bar: bool = True) -> dict:
    """The run's work in its folder: data, pretraining (from the checkpoint on resume), evaluation, t-SNE,
    figures and weights; metrics.json as soon as the scores exist, and again with the whole timing at the end.
    Processes other than rank 0 of a distributed run stop after pretraining (returning {})."""
    clock = PhaseClock()
    seed_everything(cfg.seed)
    log.info("run folder %s, device %s (%s), scenario %s%s", run_dir, compute.device, compute.precision, choices,
             f", {world.size} processes" if world.is_distributed else "")
    with distributed.together(world):  # a bad data set or setting ends every process, rank 0 saying why
        with clock("data_s"):
            data = load_data(cfg, compute.device, overrides)
        parts = build_training(cfg, data.train, compute.device, compute.precision, run_dir, world, data.val)
        state = parts.checkpointer.restore() if cfg.resume else LoopPosition()
    if cfg.resume:
        log.info("resuming from %s at epoch %d, step %d", parts.checkpointer.path, state.epoch, state.record.steps)

    def stop_if_signalled() -> None:
        signum = stop_signal()
        if signum is not None:
            raise Interrupted(signum, parts.checkpointer.save(state, wait=True))

    @contextmanager
    def checkpointed_on_stop() -> Iterator[None]:  # a protocol's training stopped: the encoder's checkpoint too
        try:
            yield
        except Interrupted as stop:
            raise Interrupted(stop.signum, parts.checkpointer.save(state, wait=True)) from None

    # on resume, TensorBoard drops the events logged after the checkpoint
    writing = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=state.record.steps + 1) \
        if world.is_main else nullcontext()
    with writing as writer:
        record = pretrain(parts, state, LoopSettings(cfg.epochs, cfg.batch_size, compute, cfg.log_every,
                                                     cfg.checkpoint_every, world, progress_bar, cfg.eval.monitor_every,
                                                     cfg.train.stop_on_collapse), writer, stop_signal)
        clock.seconds["train_s"] = record.seconds
        with clock("embed_s"):
            initial = initial_encoder(cfg, data.train.images.shape[1], compute.device) \
                if cfg.eval.baseline and cfg.epochs > 0 else None
            embedded = evaluation.embed_for_evaluation(cfg.eval, parts.encoder, initial, parts.sampler.augment, data,
                                                     cfg.seed, world)
        if not world.is_main:
            return {}
        if world.is_distributed:  # the other processes are done: the probes may use this machine's cores
            torch.set_num_threads(available_cores())
        if not np.isfinite(embedded.trained.test).all():
            raise UserError(f"the trained encoder gives NaN or infinite embeddings: nothing to evaluate (its weights "
                            f"are in {parts.checkpointer.describe()}); lower optimizer.lr or use precision=fp32")
        with ThreadPoolExecutor(1, thread_name_prefix="tsne") as beside:  # t-SNE (CPU) while a GPU probes
            tsne = export.tsne_later(beside if compute.device.type == "cuda" else None, cfg.eval, cfg.seed,
                                     embedded.trained.test)
            progress = evaluation.Progress(run_dir / "protocols", stop_signal)  # the protocols that train
            with clock("eval_s"), checkpointed_on_stop():
                metrics = evaluation.evaluate_trained(cfg.eval, data, embedded, cfg.seed, compute, progress)
            stop_if_signalled()
            if cfg.eval.baseline:
                with clock("baseline_s"), checkpointed_on_stop():
                    evaluation.add_baseline(metrics, cfg.eval, data, embedded, cfg.seed, compute, progress)
                stop_if_signalled()
            metrics.update(run_record(cfg, choices, record, clock.seconds, compute))
            metrics["classes"] = data.test.classes  # for the report's figures (empty: unlabelled)
            atomic.write_json(run_dir / "metrics.json", metrics)  # as soon as the scores exist; again at the end
            with clock("tsne_s"):  # what the run still waits for t-SNE, and its files
                export.tsne_outputs(tsne(), run_dir, embedded.trained.test, data.test,
                                    export.scenario_title(choices), writer)
        export.log_hparams(writer, export.hyperparameters(cfg, choices, compute.precision),
                           evaluation.final_scores(metrics), record.steps)
    stop_if_signalled()
    with clock("export_s"):
        export.final_outputs(run_dir, metrics, cfg.eval.protocols[0], data.test.classes,
                             export.scenario_title(choices), parts.encoder)
        if cfg.export.embeddings:
            probe = embedded.trained.probe if embedded.trained.probe is not None else \
                evaluation.embed(parts.encoder, data.probe.images, cfg.eval.features)
            export.save_embeddings(run_dir, {"test": (embedded.trained.test, data.test.labels),
                                             "train": (probe, data.probe.labels)})
    clock.seconds["total_s"] = time.perf_counter() - clock.started
    atomic.write_json(run_dir / "metrics.json", metrics)
    progress.clear()  # the protocols' checkpoints served only a resume of this run
    return metrics


class PhaseClock:
    """Seconds per phase of a run (`with clock("eval_s"): ...`), in the order the phases ran, and the start."""

    def __init__(self):
        self.started, self.seconds = time.perf_counter(), {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        tick = time.perf_counter()
        yield
        self.seconds[phase] = time.perf_counter() - tick


def run_record(cfg: DictConfig, choices: dict, record: TrainingRecord, timing: dict, compute: Compute) -> dict:
    """What metrics.json says of the run beside its scores: scenario, seed, training, timing, environment."""
    return {"scenario": dict(choices), "seed": cfg.seed,
            "train": {"seconds": record.seconds, "steps": record.steps, "tuples": record.tuples,
                      "images": record.images, "tuples_per_s": record.tuples_per_second,
                      "images_per_s": record.images_per_second, "epoch_losses": record.epoch_losses,
                      **({"epoch_figures": record.epoch_figures} if record.epoch_figures else {}),
                      **{name: per_epoch[-1] for name, per_epoch in record.epoch_figures.items()}},  # the last epoch's
            "timing": timing,
            "environment": {"device": str(compute.device), "device_name": device_name(compute.device),
                            "precision": compute.precision, "torch": torch.__version__,
                            "threads": torch.get_num_threads()}}


def load_data(cfg: DictConfig, device: torch.device, overrides: list[str]) -> Splits:
    """The data set's splits, read once, on the training device when they fit there (else in the host's pinned
    memory, batches gathered there each step); what the run needs of the data is checked here."""
    dataset = instantiate(cfg.dataset)
    if not dataset.labelled:  # before any image is decoded
        check_labels_needed(cfg, dataset.name)
    data = hold_out(dataset.load(), dataset.val_fraction, stream_seed(cfg.seed, "validation"))
    data = keep_fraction(data, dataset.train_fraction, stream_seed(cfg.seed, "train_fraction"))
    train, test = placed(data.train, device), placed(data.test, device)
    data = Splits(train, test, train if data.probe is data.train else placed(data.probe, device),
                  None if data.val is None else placed(data.val, device))
    check_data(cfg, data, overrides)
    log.info("data: %d train, %s%d test images of shape %s", len(data.train),
             "" if data.val is None else f"{len(data.val)} validation, ", len(data.test),
             tuple(data.train.images.shape[1:]))
    if not data.test.labelled:
        log.info("no labels to evaluate with: the probes and kNN are skipped, the diagnostics reported (give "
                 "dataset.eval_path a labelled folder for the probes)")
    return data


def placed(split: ImageSet, device: torch.device) -> ImageSet:
    """`split` on `device` when it fits in half its free memory, else in the host's pinned memory."""
    if device.type != "cuda" or fits_on_device(split.images.numel(), device):
        return split.to(device)
    log.info("the images (%.1f GB) do not fit in the GPU's free memory: kept in pinned host memory",
             split.images.numel() / 1e9)
    return split.to(device, pin=True)
