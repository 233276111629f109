"""Batched augmentation, images per second in one process: every operation of conf/aug/ops/default.yaml alone
(applied to every image: p = 1), each composition named with --aug (its positive's pipeline), and with --kornia
the guo and simclr recipes against kornia's (kornia is not a dependency of cl-runner: `pip install kornia`).

Prints a table and one JSON line per figure. Examples:

    python scripts/bench_augment.py --dataset cifar10 --batch-size 1024
    python scripts/bench_augment.py --dataset mnist --aug guo simclr --no-ops
    python scripts/bench_augment.py --aug simclr --kornia --no-ops
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cl_runner.cli import config_dir
from cl_runner.data.augment import Augmentation, to_unit
from cl_runner.data.datasets import CIFAR10, MNIST, Digits
from cl_runner.runtime import device_name, resolve_device, retain_freed_memory


def kornia_pipeline(aug: str, side: int, channels: int):
    """The same recipe from kornia.augmentation (per-sample parameters, batched); on one-channel images without
    saturation and hue, which kornia refuses there and torchvision skips."""
    import kornia.augmentation as K

    if aug == "guo":  # rotate U(-15, 15) and zoom out by 1/1.125, zeros outside
        return K.RandomAffine(degrees=15.0, scale=(1 / 1.125, 1 / 1.125), p=1.0, padding_mode="zeros")
    return K.AugmentationSequential(
        K.RandomResizedCrop((side, side), scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)),
        K.RandomHorizontalFlip(p=0.5),
        K.ColorJitter(0.8, 0.8, 0.8 if channels == 3 else 0.0, 0.2 if channels == 3 else 0.0, p=0.8),
        K.RandomGrayscale(p=0.2),
        K.RandomGaussianBlur((3, 3), (0.1, 2.0), p=1.0),
    )


def timed(fn, repeats: int, device: torch.device) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def composed(aug: str, *overrides: str) -> Augmentation:
    """The augmentation `aug=...` as cl-run composes it."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        return instantiate(compose("config", overrides=[f"aug={aug}", *overrides]).aug)


def operation_names() -> list[str]:
    """The operations of the library (its aliases left out)."""
    library = OmegaConf.load(Path(config_dir()) / "aug" / "ops" / "default.yaml")
    return [name for name, value in library.items() if OmegaConf.is_dict(value)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="cifar10", choices=["digits", "mnist", "cifar10"])
    parser.add_argument("--aug", nargs="*", default=["none", "guo", "simclr", "byol"], help="compositions to time")
    parser.add_argument("--no-ops", action="store_true", help="skip the operations one by one")
    parser.add_argument("--kornia", action="store_true", help="also time kornia's guo and simclr recipes")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--data-root", default=os.environ.get("CL_DATA_ROOT", "data"))
    args = parser.parse_args()
    retain_freed_memory()  # as cl-run does

    device = resolve_device(args.device)
    dataset = {"digits": lambda: Digits(), "mnist": lambda: MNIST(args.data_root),
               "cifar10": lambda: CIFAR10(args.data_root)}[args.dataset]()
    images = dataset.read("train").images[:args.batch_size].to(device)
    generator = torch.Generator(device).manual_seed(0)
    timings = [(f"op {name}", composed("none", f"aug.views=[[{name}]]", f"aug.ops.{name}.p=1.0").view(1))
               for name in ([] if args.no_ops else operation_names())]
    timings += [(f"aug={aug}", composed(aug).view(1)) for aug in args.aug]
    if args.kornia:
        timings += [(f"kornia {aug}", lambda x, g, k=kornia_pipeline(aug, images.shape[-1], images.shape[1]).to(device):
                     k(to_unit(x))) for aug in ("guo", "simclr")]
    print(f"{args.batch_size} {args.dataset} images {tuple(images.shape[1:])}, {device_name(device)} "
          f"({torch.get_num_threads()} threads)")
    for name, pipeline in timings:
        seconds = timed(lambda p=pipeline: p(images, generator), args.repeats, device)
        print(f"{name:<24} {args.batch_size / seconds:>12.0f} images/s")
        print(json.dumps({"what": name, "dataset": args.dataset, "batch_size": args.batch_size, "device": str(device),
                          "device_name": device_name(device), "threads": torch.get_num_threads(),
                          "images_per_s": args.batch_size / seconds}))


if __name__ == "__main__":
    main()
