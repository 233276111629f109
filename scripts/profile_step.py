"""Operator calls per training step, a proxy for a GPU's launch overhead that any machine can measure: a run's
parts are built as `cl-run` builds them (the config's sampler, augmentation, encoder, loss and optimizer, compiled
as `compile` says), a few warm-up steps run, then torch.profiler records `--steps` steps of the training loop's
two halves: building the batch, and the model step (forward, loss, backward, optimizer). Counted are the
operators called from Python (`aten::` calls not inside another one): on a GPU each launches one or a few kernels,
and a compiled graph's fused kernels are not operators. Also prints the model step's operators by their own CPU
time, so that what is not the convolutions shows. Examples:

    python scripts/profile_step.py -- dataset=cifar10 aug=simclr loss=triplet batch_size=256
    python scripts/profile_step.py -- experiment=simclr_cifar10 batch_size=64 compile.batch=true
    PYTHONPATH=/path/to/older/checkout python scripts/profile_step.py -- ...   # the same proxy for another version

The last line is JSON: operators and milliseconds per step, for each half and for the whole.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.profiler import ProfilerActivity, profile, record_function

from cl_runner.cli import config_dir
from cl_runner.parts import build_training
from cl_runner.runtime import Compute, device_name, resolve_device, resolve_precision, retain_freed_memory
from cl_runner.train import train_step

HALVES = ("build batch", "model step")


def half_of(event) -> tuple[str | None, bool]:
    """The half of the step an operator ran in, and whether it was called from Python (not inside another aten
    operator, e.g. aten::add_ inside aten::linear, which is the outer call's own business)."""
    parent, top_level = event.cpu_parent, True
    while parent is not None:
        if parent.name in HALVES:
            return parent.name, top_level
        top_level = top_level and not parent.name.startswith("aten::")
        parent = parent.cpu_parent
    return None, top_level


def tally(events) -> tuple[dict[str, int], dict[str, list[float]]]:
    """Operators called from Python in each half, and for the model step each operator's calls and own CPU
    microseconds (at any depth)."""
    calls, model_ops = dict.fromkeys(HALVES, 0), {}
    for event in events:
        if not event.name.startswith("aten::"):
            continue
        half, top_level = half_of(event)
        if half is not None and top_level:
            calls[half] += 1
        if half == HALVES[1]:
            count_and_time = model_ops.setdefault(event.name, [0, 0.0])
            count_and_time[0] += 1
            count_and_time[1] += event.self_cpu_time_total
    return calls, model_ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="profiled steps")
    parser.add_argument("--warmup", type=int, default=3, help="steps before profiling (compilation happens here)")
    parser.add_argument("--top", type=int, default=12, help="the model step's operators listed by own CPU time")
    parser.add_argument("overrides", nargs="*", help="cl-run overrides (after --)")
    args = parser.parse_args()
    retain_freed_memory()  # as cl-run does
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=args.overrides)
        root = os.environ.get("CL_DATA_ROOT")  # where the data sets are, unless the overrides say
        if root and "root" in cfg.dataset and not any(o.startswith("dataset.root=") for o in args.overrides):
            cfg = compose("config", overrides=[*args.overrides, f"dataset.root={root}"])
    device = resolve_device(cfg.device)
    compute = Compute(device, resolve_precision(cfg.precision, device), cfg.channels_last)
    train = instantiate(cfg.dataset).load().train.to(device)
    with tempfile.TemporaryDirectory() as run_dir:
        parts = build_training(cfg, train, device, compute.precision, Path(run_dir))
    parts.encoder.to(memory_format=compute.memory_format)
    parts.loss_fn.to(memory_format=compute.memory_format)
    order = torch.randperm(parts.sampler.tuples_per_epoch(), generator=parts.streams.order, device=device)
    needed = (args.warmup + args.steps) * cfg.batch_size
    if needed > len(order):
        parser.error(f"{args.warmup + args.steps} steps of batch_size={cfg.batch_size} need {needed} tuples; "
                     f"the data set has {len(order)}")

    def step(i: int) -> None:
        ids = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
        with record_function(HALVES[0]):
            batch = parts.sampler.batch(ids, parts.streams)
        with record_function(HALVES[1]):
            train_step(parts.objective, parts.optimizer, parts.scaler, batch, compute)

    start = time.perf_counter()
    for i in range(args.warmup):
        step(i)
    warmup_seconds = time.perf_counter() - start
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for i in range(args.warmup, args.warmup + args.steps):
            step(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
    calls, model_ops = tally(prof.events())
    milliseconds = {half: next((e.cpu_time_total for e in prof.key_averages() if e.key == half), 0.0) / 1000 /
                    args.steps for half in HALVES}
    print(f"{cfg.dataset._target_.rsplit('.', 1)[-1]} / {type(parts.sampler.augment).__name__} / "
          f"{type(parts.loss_fn).__name__} / {type(parts.encoder).__name__}, batch {cfg.batch_size}, "
          f"{compute.precision}, on {device_name(device)} ({torch.get_num_threads()} threads); "
          f"warm-up {args.warmup} steps in {warmup_seconds:.1f} s")
    print(f"{'per step':<14}{'operators':>12}{'ms (profiled)':>16}")
    for half in HALVES:
        print(f"{half:<14}{calls[half] / args.steps:>12.0f}{milliseconds[half]:>16.1f}")
    print("\nthe model step's operators (at any depth) by their own CPU time:")
    for name, (count, micros) in sorted(model_ops.items(), key=lambda item: -item[1][1])[:args.top]:
        print(f"  {name:<44}{count / args.steps:>8.0f} calls/step{micros / 1000 / args.steps:>10.1f} ms/step")
    print(json.dumps({"overrides": args.overrides, "device_name": device_name(device), "precision": compute.precision,
                      "threads": torch.get_num_threads(), "torch": torch.__version__, "steps": args.steps,
                      "ops_per_step": {half: calls[half] / args.steps for half in HALVES},
                      "ms_per_step": milliseconds, "ops_per_step_total": sum(calls.values()) / args.steps}))


if __name__ == "__main__":
    main()
