"""How fast a folder of images becomes training data, in one process, on one folder:

1. decoding: cl-run's decoder (first load: list, read headers, decode in parallel into the cache) against
   torchvision's ImageFolder through a DataLoader with 2 workers (PIL decode + PILToTensor), images/s;
2. loading again: the cached load (memory-mapped) against the first one, seconds;
3. training: tuples/s of the same training steps on the folder's images and on the same pixels from the
   reader of the data set they came from (the pickle or IDX reader): equal by design, one hot path.

By default the folder is the CIFAR-10 test set written as PNGs into a temporary folder (class folders):

    python scripts/bench_data.py                     # CIFAR-10 test images from $CL_DATA_ROOT as PNGs
    python scripts/bench_data.py --folder DIR        # a folder of your own (then step 3 is skipped)
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from cl_runner import parts as run_parts
from cl_runner.cli import config_dir
from cl_runner.data.datasets import CIFAR10, Splits
from cl_runner.data.image_folder import ImageFolder
from cl_runner.runtime import Compute, device_name, resolve_device
from cl_runner.train import train_step


def write_cifar_test_pngs(root: Path, data_root: str) -> Splits:
    """The CIFAR-10 test images as ROOT/<class>/NNNNN.png; returns the reader's splits they came from."""
    data = CIFAR10(data_root).load()
    for i, (image, label) in enumerate(zip(data.test.images.numpy(), data.test.labels.tolist())):
        path = root / data.test.classes[label] / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.transpose(1, 2, 0)).save(path)
    return data


def torchvision_images_per_s(folder: Path, workers: int) -> float:
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    dataset = datasets.ImageFolder(str(folder), transform=transforms.PILToTensor())
    loader = DataLoader(dataset, batch_size=256, num_workers=workers)
    tick = time.perf_counter()
    count = sum(len(images) for images, _ in loader)
    return count / (time.perf_counter() - tick)


def training_tuples_per_s(splits: Splits, steps: int, device: torch.device, run_dir: Path) -> float:
    """Tuples/s of `steps` training steps (after 3 warm-up steps) of the study's triplet run on `splits`."""
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=["loss=triplet", "aug=guo", "batch_size=256", "precision=fp32"])
    train = splits.train.to(device)
    parts = run_parts.build_training(cfg, train, device, "fp32", run_dir)
    compute = Compute(device, "fp32")
    parts.encoder.to(memory_format=compute.memory_format)
    order = torch.randperm(parts.sampler.tuples_per_epoch(), generator=parts.streams.order, device=device)

    def step(i: int) -> None:
        ids = order[(i * 256) % (len(order) - 256):][:256]
        batch = parts.sampler.batch(ids, parts.streams)
        train_step(parts.objective, parts.optimizer, parts.scaler, batch, compute)

    for i in range(3):
        step(i)
    tick = time.perf_counter()
    for i in range(steps):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * 256 / (time.perf_counter() - tick)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, help="a folder of images (default: CIFAR-10's test set as PNGs)")
    parser.add_argument("--data-root", default=os.environ.get("CL_DATA_ROOT", "data"))
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for torchvision's ImageFolder")
    parser.add_argument("--steps", type=int, default=20, help="training steps timed on each source")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        os.environ["CL_CACHE_DIR"] = str(scratch / "cache")  # a cold cache: the first load decodes
        reader = None
        folder = args.folder
        if folder is None:
            folder = scratch / "cifar10-test"
            tick = time.perf_counter()
            reader = write_cifar_test_pngs(folder, args.data_root)
            print(f"wrote {len(reader.test)} PNGs in {time.perf_counter() - tick:.1f} s")
        tick = time.perf_counter()
        first = ImageFolder(str(folder), labels=True, test_fraction=0.2).load()
        first_s = time.perf_counter() - tick
        count = len(first.train) + len(first.test)
        tick = time.perf_counter()
        ImageFolder(str(folder), labels=True, test_fraction=0.2).load()
        cached_s = time.perf_counter() - tick
        theirs = torchvision_images_per_s(folder, args.workers)
        figures = {"images": count, "shape": list(first.train.images.shape[1:]),
                   "cl_run_first_load_s": first_s, "cl_run_first_load_images_per_s": count / first_s,
                   "cl_run_cached_load_s": cached_s, "torchvision_dataloader_images_per_s": theirs,
                   "torchvision_workers": args.workers, "device": device_name(device),
                   "threads": torch.get_num_threads()}
        if reader is not None:  # as many images from the pickle reader: the same hot path, the same speed
            n = len(first.train)
            pickled = Splits(reader.test.head(n), reader.test, reader.test)
            figures["train_tuples_per_s_folder"] = training_tuples_per_s(first, args.steps, device,
                                                                         scratch / "run_folder")
            figures["train_tuples_per_s_reader"] = training_tuples_per_s(pickled, args.steps, device,
                                                                         scratch / "run_reader")
    print(f"{count} images of {tuple(figures['shape'])} on {figures['device']} ({figures['threads']} threads)")
    print(f"  decode, cl-run (first load, all cores)      {figures['cl_run_first_load_images_per_s']:9.0f} images/s"
          f"  ({first_s:.2f} s)")
    print(f"  decode, torchvision ImageFolder + {args.workers} workers {theirs:9.0f} images/s")
    print(f"  cached load, cl-run                          {cached_s:9.3f} s  ({first_s / cached_s:.0f}x faster)")
    if "train_tuples_per_s_folder" in figures:
        print(f"  training, folder / pickle reader             {figures['train_tuples_per_s_folder']:9.0f} / "
              f"{figures['train_tuples_per_s_reader']:.0f} tuples/s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
