"""Batched augmentation: cl-runner's own tensor code against kornia's, the same SimCLR recipe, one process.

kornia is not a dependency of cl-runner; install it to run this comparison (`pip install kornia`). Prints a
table and one JSON line with images per second of each and the ratio own/kornia. Example:

    python scripts/bench_augment.py --dataset cifar10 --batch-size 1024
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from cl_runner.data.augment import PadRotateScale, SimCLRAugment, to_unit
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="cifar10", choices=["digits", "mnist", "cifar10"])
    parser.add_argument("--aug", default="simclr", choices=["guo", "simclr"])
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
    ours = SimCLRAugment() if args.aug == "simclr" else PadRotateScale()
    theirs = kornia_pipeline(args.aug, images.shape[-1], images.shape[1]).to(device)
    generator = torch.Generator(device).manual_seed(0)
    own_s = timed(lambda: ours(images, generator), args.repeats, device)
    kornia_s = timed(lambda: theirs(to_unit(images)), args.repeats, device)
    result = {"dataset": args.dataset, "aug": args.aug, "batch_size": args.batch_size, "device": str(device),
              "device_name": device_name(device), "threads": torch.get_num_threads(),
              "own_images_per_s": args.batch_size / own_s, "kornia_images_per_s": args.batch_size / kornia_s,
              "own_over_kornia": kornia_s / own_s}
    print(f"{args.aug} on {args.batch_size} {args.dataset} images, {result['device_name']} "
          f"({result['threads']} threads)")
    print(f"own tensor code {result['own_images_per_s']:>10.0f} images/s")
    print(f"kornia          {result['kornia_images_per_s']:>10.0f} images/s")
    print(f"own / kornia = {result['own_over_kornia']:.2f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
