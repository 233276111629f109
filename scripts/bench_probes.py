"""Time a run's evaluation (the protocols of eval.protocols on frozen embeddings, as cl-run computes them) with
`eval.solver=torch` against `eval.solver=sklearn`, on the same embeddings, in one process: after one untimed
evaluation each (one-time imports), repeats alternate the two solvers and the medians are reported, with the
agreement of their scores.

    python scripts/bench_probes.py                         # the embedded default (10,000 + 2,000 MNIST images)
    python scripts/bench_probes.py dataset=mnist --repeats 5
    python scripts/bench_probes.py dataset=cifar10 device=cuda

The embeddings are those of the study's encoder as initialized from the seed (what the random-initialization
baseline evaluates): the probes' cost depends on the sizes, not on training. Any cl-run override may follow.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from hydra import compose, initialize_config_dir

from cl_runner import evaluation
from cl_runner.cli import config_dir
from cl_runner.experiment import load_data
from cl_runner.evaluation.protocol import Encoded
from cl_runner.evaluation.scores import evaluate_encoded, evaluation_context
from cl_runner.parts import build_encoder
from cl_runner.runtime import Compute, device_name, resolve_device, retain_freed_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed evaluations per solver (alternating)")
    parser.add_argument("overrides", nargs="*", help="cl-run overrides, e.g. dataset=mnist")
    args = parser.parse_args()
    retain_freed_memory()
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=args.overrides)
    device = resolve_device(cfg.device)
    data = load_data(cfg, device, [])
    encoder = build_encoder(cfg, data.train.images.shape[1], device)
    encoded = Encoded("baseline", encoder, evaluation.embed(encoder, data.test.images),
                      evaluation.embed(encoder, data.probe.images))
    compute = Compute(device)
    seconds: dict[str, list[float]] = {"torch": [], "sklearn": []}
    metrics = {}
    for solver in seconds:  # untimed: each solver's one-time imports (a cl-run job has paid them by then)
        cfg.eval.solver = solver
        evaluate_encoded(encoded, evaluation_context(cfg.eval, data, cfg.seed, compute))
    for _ in range(args.repeats):
        for solver in seconds:
            cfg.eval.solver = solver
            if device.type == "cuda":
                torch.cuda.synchronize()
            tick = time.perf_counter()
            metrics[solver] = evaluate_encoded(encoded, evaluation_context(cfg.eval, data, cfg.seed, compute))
            seconds[solver].append(time.perf_counter() - tick)
    print(f"{len(data.probe)} probe-training and {len(data.test)} test embeddings of {encoded.test.shape[1]} dimensions; "
          f"{device_name(device)}, {torch.get_num_threads()} threads; {args.repeats} alternating repeats")
    for solver, times in seconds.items():
        print(f"  {solver:<8} median {statistics.median(times):6.2f} s (min {min(times):.2f}, max {max(times):.2f})")
    print(f"  ratio sklearn / torch: {statistics.median(seconds['sklearn']) / statistics.median(seconds['torch']):.2f}")
    for protocol in (p for p in evaluation.PROTOCOLS if p in metrics["torch"]):
        for name, value in evaluation.scores_only(metrics["torch"])[protocol].items():
            if isinstance(value, float):
                print(f"  {protocol}.{name}: torch {value:.4f}, sklearn {metrics['sklearn'][protocol][name]:.4f}")


if __name__ == "__main__":
    main()
