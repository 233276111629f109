"""Training throughput of one run over N processes (torchrun, one torch thread each) against one process with N
threads, on the same config: the median over repeats of the tuples per second of pretraining (metrics.json), and
the whole run's wall time. Run it with nothing else on the machine:

    python scripts/bench_distributed.py --processes 2 --repeats 3 -- epochs=3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from cl_runner.runtime import device_name


def one_run(command: list[str], env: dict, run_dir: Path) -> tuple[float, float]:
    """(training tuples/s, wall seconds) of one run into `run_dir`."""
    tick = time.perf_counter()
    subprocess.run([*command, f"hydra.run.dir={run_dir}"], env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - tick
    return json.loads((run_dir / "metrics.json").read_text())["train"]["tuples_per_s"], wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="cl-run overrides for both runs (after --)")
    args = parser.parse_args()
    n = args.processes
    base = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    variants = {
        f"1 process x {n} threads": ([sys.executable, "-m", "cl_runner"], {**base, "OMP_NUM_THREADS": str(n)}),
        f"{n} processes x 1 thread": ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                       f"--nproc_per_node={n}", "-m", "cl_runner"], {**base, "OMP_NUM_THREADS": "1"}),
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):  # interleaved, so that drifts of the machine hit both alike
            for name, (command, env) in variants.items():
                run_dir = Path(scratch) / f"{repeat}-{name.split()[0]}"
                results[name].append(one_run([*command, *args.overrides], env, run_dir))
    print(f"machine: {device_name(torch.device('cpu'))}; overrides: {' '.join(args.overrides) or '(none)'}; "
          f"{args.repeats} repeats, medians")
    medians = {}
    for name, runs in results.items():
        medians[name] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
        print(f"{name:>24}: {medians[name][0]:8.0f} training tuples/s, {medians[name][1]:6.1f} s whole run "
              f"(tuples/s of each: {', '.join(f'{r[0]:.0f}' for r in runs)})")
    one, many = medians.values()
    print(f"{n} processes / 1 process, training throughput: {many[0] / one[0]:.2f}x; whole run: "
          f"{one[1] / many[1]:.2f}x the speed")


if __name__ == "__main__":
    main()
