"""Pipeline benchmark: tuples per second of three ways to feed the same training step, in one process and run.

(a) study: the study's pipeline, per-image torchvision/PIL transforms in a DataLoader with worker processes and
    label-aware negatives, feeding the model step;
(b) floor: the model step alone on ready tensors (the same data, prepared before timing), in the device's best
    memory format;
(c) cl-runner: the real training loop (sampling, batched augmentation on the device, forward, backward, step).

Prints a table and one JSON line with the three figures and the ratios c/a and c/b. Compare ratios, not absolute
times: machines are noisy. `--compile-batch` and `--compile-encoder` are cl-run's compile.batch and
compile.encoder (auto: as cl-run decides on this device). Examples (the study's CIFAR-10 setting; SimCLR's):

    python scripts/bench_pipeline.py --dataset cifar10 --aug simclr --loss triplet --batch-size 1024
    python scripts/bench_pipeline.py --dataset cifar10 --aug simclr --loss ntxent --encoder resnet18 --optimizer lars
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bar from the training loop in a benchmark's output
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.tensorboard import SummaryWriter
from torchvision import transforms

from cl_runner.checkpoint import LoopPosition
from cl_runner.cli import config_dir
from cl_runner.data.datasets import ImageSet
from cl_runner.batch import TupleBatch
from cl_runner.randomness import TrainingStreams
from cl_runner.parts import Objective, TrainingParts
from cl_runner.optim import make_optimizer, parameter_groups
from cl_runner.runtime import (Compute, compiles, device_name, make_grad_scaler, resolve_device, resolve_precision,
                               retain_freed_memory)
from cl_runner.train import LoopSettings, pretrain, train_step


def study_transform(aug: str, side: int, channels: int) -> transforms.Compose:
    """The study's per-image augmentation of the positive (SPEC.md), then ToTensor and Normalize(0.5, 0.5)."""
    steps = {
        "none": [],
        "guo": [transforms.Resize(2 * side), transforms.Pad(18), transforms.RandomRotation(15),
                transforms.CenterCrop(int(2.25 * side)), transforms.Resize(side)],
        "simclr": [transforms.RandomResizedCrop(side), transforms.RandomHorizontalFlip(),
                   transforms.RandomApply([transforms.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
                   transforms.RandomGrayscale(p=0.2), transforms.GaussianBlur(3)],
    }[aug]
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize([0.5] * channels, [0.5] * channels)])


class StudyTuples(Dataset):
    """Tuples as the study built them: PIL images, the positive augmented per image, a negative of another
    class drawn from per-class index lists. Pairs: item i < N is (x_i, view, +1), item N + i is (x_i, neg, -1).
    Multi-view (SimCLR's usual DataLoader): two augmented views of image i."""

    def __init__(self, data: ImageSet, aug: str, pairing: str):
        array = data.images.cpu().numpy()
        mode = "L" if array.shape[1] == 1 else "RGB"
        self.images = [Image.fromarray(a[0] if mode == "L" else a.transpose(1, 2, 0), mode) for a in array]
        self.labels = data.labels.cpu().numpy()
        self.others = {c: np.flatnonzero(self.labels != c) for c in np.unique(self.labels)}
        side, channels = array.shape[-1], array.shape[1]
        self.augment = study_transform(aug, side, channels)
        self.clean = study_transform("none", side, channels)
        self.pairing = pairing

    def __len__(self) -> int:
        return len(self.images) * (2 if self.pairing == "pair" else 1)

    def negative(self, i: int) -> torch.Tensor:
        return self.clean(self.images[np.random.choice(self.others[self.labels[i]])])

    def __getitem__(self, item: int):
        n = len(self.images)
        i = item % n
        anchor = self.clean(self.images[i])
        if self.pairing == "triplet":
            return anchor, self.augment(self.images[i]), self.negative(i)
        if self.pairing == "multiview":
            return self.augment(self.images[i]), self.augment(self.images[i])
        if item < n:
            return anchor, self.augment(self.images[i]), torch.tensor(1.0)
        return anchor, self.negative(i), torch.tensor(-1.0)


def study_batches(loader: DataLoader, pairing: str, device: torch.device):
    for parts in loader:
        if pairing in ("triplet", "multiview"):
            yield TupleBatch(torch.cat(parts).to(device, non_blocking=True), views=len(parts))
        else:
            yield TupleBatch(torch.cat(parts[:2]).to(device, non_blocking=True), views=2, target=parts[2].to(device))


def compose_config(args):
    """The run's config as `cl-run` composes it (Hydra's compose API: the loss picks its pairing)."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        root = [f"dataset.root={args.data_root}"] if args.dataset in ("mnist", "cifar10") else []
        return compose("config", overrides=[f"dataset={args.dataset}", f"aug={args.aug}", f"loss={args.loss}",
                                            f"encoder={args.encoder}", f"optimizer={args.optimizer}", *root])


def time_steps(batches, step, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds for `steps` steps after `warmup` untimed ones, synchronized on CUDA."""
    for _ in range(warmup):
        step(next(batches))
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step(next(batches))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="cifar10", choices=["digits", "mnist", "cifar10"])
    parser.add_argument("--aug", default="simclr", choices=["none", "guo", "simclr"])
    parser.add_argument("--loss", default="triplet", choices=["triplet", "cosine_embedding", "ntxent"])
    parser.add_argument("--encoder", default="pami_cnn")
    parser.add_argument("--optimizer", default="sgd", choices=["sgd", "lars", "adam"], help="as cl-run's, fused alike")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the study pipeline")
    parser.add_argument("--skip-study", action="store_true", help="time only (b) and (c): c/b without c/a")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                        help="as cl-run's precision: auto is bf16 on CUDA and on CPUs with native bf16")
    parser.add_argument("--memory-format", default="channels_last", choices=["channels_last", "contiguous"])
    parser.add_argument("--compile-batch", default="auto", choices=["auto", "true", "false"],
                        help="torch.compile the batch builder in (c), as cl-run's compile.batch")
    parser.add_argument("--compile-encoder", default="auto", choices=["auto", "true", "false"],
                        help="torch.compile the encoder in (b) and (c), as cl-run's compile.encoder")
    parser.add_argument("--system-malloc", action="store_true",
                        help="leave glibc's default of unmapping large freed blocks (cl-run retains them)")
    parser.add_argument("--data-root", default=os.environ.get("CL_DATA_ROOT", "data"))
    args = parser.parse_args()
    if not args.system_malloc:
        retain_freed_memory()  # for the whole process, the study pipeline (a) included, as cl-run does

    device = resolve_device(args.device)
    cfg = compose_config(args)
    pairing = instantiate(cfg.pairing).name
    torch.manual_seed(0)
    tuples_per_image = 2 if pairing == "pair" else 1  # a pair epoch holds two tuples per image
    needed = math.ceil((args.steps + args.warmup) * args.batch_size / tuples_per_image)
    train = instantiate(cfg.dataset).load().train
    if needed > len(train):
        parser.error(f"--steps and --warmup need {needed} training images; {args.dataset} has {len(train)}")
    train = train.head(needed)
    precision = resolve_precision(args.precision, device)
    compute = Compute(device, precision, channels_last=args.memory_format == "channels_last")
    memory_format = compute.memory_format
    views = instantiate(cfg.pairing).views
    compiled = {part: compiles({"auto": "auto", "true": True, "false": False}[choice], part, device)
                for part, choice in (("batch", args.compile_batch), ("encoder", args.compile_encoder))}

    def fresh_model(compiled_encoder: bool = False):
        """The encoder, the loss (with its own parameters, if any) and the config's optimizer, as cl-run builds
        them (fused where cl-run fuses)."""
        encoder = instantiate(cfg.encoder, backbone={"in_channels": train.images.shape[1]})
        encoder = encoder.to(device, memory_format=memory_format)
        loss_fn = instantiate(cfg.loss)
        loss_fn.setup(encoder, args.batch_size)
        loss_fn.to(device, memory_format=memory_format)
        groups = parameter_groups(torch.nn.ModuleList([encoder, loss_fn]), cfg.optimizer.weight_decay)
        optimizer = make_optimizer(instantiate(cfg.optimizer), groups)
        model = torch.compile(encoder) if compiled_encoder else encoder
        return Objective(model, loss_fn), optimizer, make_grad_scaler(device, precision)

    def model_step(parts):
        def step(batch):
            train_step(*parts, batch, compute)
        return step

    # (a) the study's pipeline (never compiled: the baseline as the study ran it)
    study_seconds = None
    if not args.skip_study:
        loader = DataLoader(StudyTuples(train, args.aug, pairing), batch_size=args.batch_size, shuffle=True,
                            num_workers=args.workers, persistent_workers=args.workers > 0, drop_last=True,
                            pin_memory=device.type == "cuda")
        study_seconds = time_steps(study_batches(loader, pairing, device), model_step(fresh_model()), args.steps,
                                   args.warmup, device)

    # (b) the floor: the model step on ready tensors (the same data, tuples prepared before timing)
    ready = prepared_batches(cfg, train.to(device), args, device)
    floor_seconds = time_steps(iter(ready), model_step(fresh_model(compiled["encoder"])), args.steps, args.warmup,
                               device)

    # (c) cl-runner's training loop, as `cl-run` runs it (one epoch over exactly warmup + steps batches)
    runner_seconds = time_cl_runner(cfg, train.to(device), fresh_model(compiled["encoder"]), args, device, precision,
                                    memory_format == torch.channels_last, compiled["batch"])

    steps = args.steps
    seconds = {"study": study_seconds, "floor": floor_seconds, "cl_runner": runner_seconds}
    figures = {f"{name}_tuples_per_s": steps * args.batch_size / s for name, s in seconds.items() if s is not None}
    for key in list(figures):
        figures[key.replace("tuples", "images")] = figures[key] * views
    if study_seconds is not None:
        figures["c_over_a"] = figures["cl_runner_tuples_per_s"] / figures["study_tuples_per_s"]
    figures["c_over_b"] = figures["cl_runner_tuples_per_s"] / figures["floor_tuples_per_s"]
    setting = {"dataset": args.dataset, "aug": args.aug, "loss": args.loss, "pairing": pairing,
               "encoder": args.encoder, "batch_size": args.batch_size, "steps": steps, "warmup": args.warmup,
               "workers": args.workers, "precision": precision, "memory_format": args.memory_format,
               "compile_batch": compiled["batch"], "compile_encoder": compiled["encoder"],
               "optimizer": args.optimizer, "system_malloc": args.system_malloc,
               "device": str(device), "device_name": device_name(device),
               "threads": torch.get_num_threads(), "torch": torch.__version__}
    print_table(figures, setting)
    print(json.dumps({**setting, **figures}))


def prepared_batches(cfg, train: ImageSet, args, device: torch.device) -> list[TupleBatch]:
    """warmup + steps batches from cl-runner's sampler, built before any timing starts."""
    sampler = instantiate(cfg.pairing)
    streams = TrainingStreams.from_seed(1, device)
    sampler.setup(train, instantiate(cfg.aug), streams)
    order = torch.randperm(sampler.tuples_per_epoch(), generator=streams.order, device=device)
    return [sampler.batch(order[i * args.batch_size:(i + 1) * args.batch_size], streams)
            for i in range(args.warmup + args.steps)]


def time_cl_runner(cfg, train: ImageSet, parts, args, device: torch.device, precision: str,
                   channels_last: bool, compiled_batch: bool) -> float:
    """Seconds that `pretrain` (the loop `cl-run` runs) takes for `args.steps` steps, after a warm-up run (which
    compiles what is compiled)."""
    objective, optimizer, scaler = parts
    sampler = instantiate(cfg.pairing)
    streams = TrainingStreams.from_seed(0, device)
    sampler.setup(train, instantiate(cfg.aug), streams, compiled=compiled_batch)
    with tempfile.TemporaryDirectory() as logs, SummaryWriter(log_dir=logs) as writer:
        def run(steps: int) -> float:
            training = TrainingParts(objective.encoder, objective.loss_fn, _Limited(sampler, steps * args.batch_size),
                                     optimizer, scaler, streams, objective=objective)
            settings = LoopSettings(epochs=1, batch_size=args.batch_size,
                                    compute=Compute(device, precision, channels_last), checkpoint_every=0)
            start = time.perf_counter()
            pretrain(training, LoopPosition(), settings, writer)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start

        run(args.warmup)
        return run(args.steps)


class _Limited:
    """A sampler whose epoch is cut to `tuples` tuples (the rest of the sampler unchanged)."""

    def __init__(self, sampler, tuples: int):
        self.sampler, self.tuples = sampler, min(tuples, sampler.tuples_per_epoch())

    def tuples_per_epoch(self) -> int:
        return self.tuples

    def batch(self, ids, streams, rows=None):
        return self.sampler.batch(ids, streams, rows)


def print_table(figures: dict, setting: dict) -> None:
    print(f"{setting['dataset']} / {setting['aug']} / {setting['loss']}, batch {setting['batch_size']}, "
          f"{setting['steps']} timed steps, {setting['precision']}, on {setting['device_name']} "
          f"({setting['threads']} threads)")
    print(f"{'pipeline':<34}{'tuples/s':>12}{'images/s':>12}")
    for key, name in (("study", "(a) study: PIL + DataLoader"), ("floor", "(b) floor: model step only"),
                      ("cl_runner", "(c) cl-runner training loop")):
        if key + "_tuples_per_s" in figures:
            print(f"{name:<34}{figures[key + '_tuples_per_s']:>12.0f}{figures[key + '_images_per_s']:>12.0f}")
    print("   ".join(f"{ratio.replace('_over_', '/')} = {figures[ratio]:.2f}" for ratio in ("c_over_a", "c_over_b")
                     if ratio in figures))


if __name__ == "__main__":
    main()
