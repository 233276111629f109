"""Time from `cl-run`'s start to its first training step: a fresh `python -m cl_runner` process is started, and the
first step's moment is read from the run's own TensorBoard events (with log_every=1 the first `train/loss` point is
written right after step 1), so nothing in cl-run is instrumented. Repeats alternate the checkouts given, so that
two versions are measured back to back:

    python scripts/bench_startup.py                        # this checkout, 3 repeats
    python scripts/bench_startup.py --source /tmp/old .    # an older worktree against this one
    python scripts/bench_startup.py -- device=cuda         # cl-run overrides after --

Also reported: `python -X importtime`'s total for `import cl_runner.cli`, and the run's whole wall time.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

SMALL = ["dataset.train_subset=1024", "batch_size=256", "epochs=1", "log_every=1", "eval.baseline=false",
         "eval.tsne_points=0", "eval.protocols=[paper]", "checkpoint_every=0"]


def first_step(source: Path, overrides: list[str]) -> tuple[float, float]:
    """(seconds to the first step, seconds of the whole process) of one cl-run started from `source`."""
    with tempfile.TemporaryDirectory() as folder:
        run_dir = Path(folder) / "run"
        env = {**os.environ, "PYTHONPATH": str(source)}
        started = time.time()
        subprocess.run([sys.executable, "-m", "cl_runner", *SMALL, *overrides, f"hydra.run.dir={run_dir}"],
                       cwd=source, env=env, check=True, capture_output=True)
        ended = time.time()
        events = EventAccumulator(str(run_dir / "tensorboard"))
        events.Reload()
        first = min(e.wall_time for e in events.Scalars("train/loss"))
    return first - started, ended - started


def import_seconds(source: Path) -> float:
    """`python -X importtime -c 'import cl_runner.cli'`: the cumulative microseconds of the top import, in s."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", "import cl_runner.cli"], cwd=source,
                            env={**os.environ, "PYTHONPATH": str(source)}, capture_output=True, text=True,
                            check=True)
    line = next(line for line in result.stderr.splitlines() if re.search(r"\|\s*cl_runner\.cli$", line))
    return int(line.split("|")[1]) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", nargs="+", type=Path, default=[Path(__file__).resolve().parents[1]],
                        help="checkouts to measure (each imports cl_runner from its own folder)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="cl-run overrides")
    args = parser.parse_args()
    sources = [s.resolve() for s in args.source]
    figures: dict[Path, dict[str, list[float]]] = {s: {"first_step": [], "wall": [], "import": []} for s in sources}
    for _ in range(args.repeats):
        for source in sources:
            to_first, wall = first_step(source, args.overrides)
            figures[source]["first_step"].append(to_first)
            figures[source]["wall"].append(wall)
            figures[source]["import"].append(import_seconds(source))
    print(f"{args.repeats} alternating repeats; cl-run {' '.join(SMALL + args.overrides)}")
    for source, measured in figures.items():
        medians = {k: statistics.median(v) for k, v in measured.items()}
        print(f"  {source}: first step {medians['first_step']:.2f} s (min {min(measured['first_step']):.2f}, max "
              f"{max(measured['first_step']):.2f}), import cl_runner.cli {medians['import']:.2f} s, whole run "
              f"{medians['wall']:.2f} s")
    if len(sources) == 2:
        a, b = (statistics.median(figures[s]["first_step"]) for s in sources)
        print(f"  first step, second / first: {b / a:.2f}")


if __name__ == "__main__":
    main()
