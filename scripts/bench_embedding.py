"""Where a distributed run should embed its evaluation images: rank 0 alone with all the machine's cores, or every
process its shard, gathered (what cl-run does, as this measured it faster). Embeds the training and test images
of a data set through a freshly initialized encoder (eval mode, as the probes see it) and prints the seconds
(median of repeats):

    OMP_NUM_THREADS=2 python scripts/bench_embedding.py dataset=cifar10                           # one process
    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 scripts/bench_embedding.py dataset=cifar10  # shards
"""
from __future__ import annotations

import statistics
import sys
import time

import torch
import torch.distributed as dist
from hydra import compose, initialize_config_dir

from cl_runner import distributed, evaluation, experiment, parts
from cl_runner.cli import config_dir
from cl_runner.distributed import World
from cl_runner.runtime import device_name, resolve_device


def main() -> None:
    world = World.from_env()
    distributed.join(world)
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=sys.argv[1:])
    device = resolve_device(cfg.device, world.is_distributed)
    data = experiment.load_data(cfg, device, [])
    encoder = parts.build_encoder(cfg, data.train.images.shape[1], device)
    seconds = []
    for _ in range(3):
        if world.is_distributed:
            dist.barrier()
        tick = time.perf_counter()
        for split in (data.train, data.test):
            evaluation.embed(encoder, split.images, world=world)
        seconds.append(time.perf_counter() - tick)
    if world.is_main:
        print(f"{device_name(device)}: {len(data.train) + len(data.test)} images, {world.size} process(es) x "
              f"{torch.get_num_threads()} thread(s): {statistics.median(seconds):.2f} s "
              f"({', '.join(f'{s:.2f}' for s in seconds)})")
    distributed.leave()


if __name__ == "__main__":
    main()
