#!/usr/bin/env bash
# The GPU checks a session runs when its task is lent a GPU (the device tool), as one script under time limits;
# every result lands as one of 8 flat files in $OUT (default ./gpu-check-out; the device returns at most 8).
# Prepare here, where PyPI is reachable: ../shared/tools/pack-data (data and wheels in .device-data/p1..p3). On the
# device, from the checkout's root, once the parts have arrived:
#   bash /tmp/cl-bin/device-stage && source /tmp/cl-env.sh && bash scripts/gpu_check.sh
# (device-stage unpacks the data and gives cl-run without a pip install). GPU_CHECK_PARTS picks the parts, each
# within its own time limit (seconds on an H200, estimated): sync (60: host syncs in one step), epochs (200: SimCLR
# ResNet-18 seconds an epoch, compile=auto and compile=false), pipeline (240: c/b of the study's CNN and of
# ResNet-18, compiled and not, operators per step), startup (150: time to the first step, probes), grid (240: the
# paper grid with GPU utilization). The default, "sync epochs pipeline", fits one device call (under 9 minutes);
# "startup grid" is a second. On a CPU, `GPU_CHECK_TINY=1 bash scripts/gpu_check.sh` runs the same steps in a few
# minutes (device=cpu, tiny runs).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
TINY=${GPU_CHECK_TINY:-0}
PARTS=" ${GPU_CHECK_PARTS:-sync epochs pipeline} "
if [ "$TINY" = 1 ]; then
  DEVICE=cpu; STEPS=2; BATCH=64; GRID_LIMIT=600; R18_LIMIT=120; STARTUP=(--repeats 1); PROBES=(--repeats 1)
  GRID=(epochs=1 batch_size=256 dataset.train_subset=512 dataset.test_subset=200 eval.tsne_points=50)
  R18=(epochs=1 dataset.train_subset=256 dataset.test_subset=100 batch_size=64 eval.tsne_points=0)
else
  DEVICE=cuda; STEPS=20; BATCH=1024; GRID=(); R18=(); GRID_LIMIT=240; R18_LIMIT=${GPU_CHECK_R18_SECONDS:-90}
  STARTUP=(--repeats 2); PROBES=(--repeats 3 dataset=mnist)
fi
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/steps.txt"; }
part() { [[ "$PARTS" == *" $1 "* ]]; }

log "machine"
{ nvidia-smi -L 2>&1 || true; echo "cores $(nproc)"; python3 -c "import torch; print('torch', torch.__version__,
'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"; } >> "$OUT/steps.txt" 2>&1
export CL_DATA_ROOT=${CL_DATA_ROOT:-../shared/data}

if part sync; then
log "host syncs in one training step (the batch builder compiled as compile=auto does on this device)"
timeout 150 python3 - "$DEVICE" > "$OUT/host_sync.txt" 2>&1 <<'EOF'
"""One warm training step of the study's CIFAR-10 simclr triplet run under torch's sync debug mode: every
host-device synchronization in it is reported (none is the design on a GPU)."""
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from cl_runner import experiment
from cl_runner.cli import config_dir
from cl_runner.parts import build_training
from cl_runner.runtime import Compute, resolve_precision
from cl_runner.train import train_step

device = torch.device(sys.argv[1])
with initialize_config_dir(config_dir(), version_base="1.3"):
    cfg = compose("config", overrides=["dataset=cifar10", "aug=simclr", "loss=triplet", "batch_size=256"])
data = experiment.load_data(cfg, device, [])
precision = resolve_precision("auto", device)
parts = build_training(cfg, data.train, device, precision, Path(tempfile.mkdtemp()))
order = torch.randperm(parts.sampler.tuples_per_epoch(), generator=parts.streams.order, device=device)


def step(i: int) -> None:
    batch = parts.sampler.batch(order[i * 256:(i + 1) * 256], parts.streams)
    train_step(parts.objective, parts.optimizer, parts.scaler, batch, Compute(device, precision))


step(0)  # warm-up: allocations, autotuning
if device.type == "cuda":
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    step(1)
if device.type == "cuda":
    torch.cuda.set_sync_debug_mode("default")
syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
print(f"device {device}, precision {precision}: {len(syncs)} host syncs in one step")
for line in syncs:
    print(" ", line)
EOF
log "host sync check exit $?"
fi

if part epochs; then
for compiled in auto false; do
  log "SimCLR ResNet-18 on CIFAR-10, compile=$compiled, as many epochs as $R18_LIMIT s allow"
  { echo "== compile=$compiled"; time timeout "$R18_LIMIT" cl-run experiment=simclr_cifar10 "device=$DEVICE" \
      "compile=$compiled" "${R18[@]}" checkpoint_every=1 hydra.run.dir="$OUT/.simclr_$compiled" ; } \
    >> "$OUT/simclr_r18.txt" 2>&1
  log "simclr_r18 compile=$compiled exit $? (124: stopped by the time limit after writing its checkpoint)"
  python3 -c "import json, sys; print('timing', json.load(open(sys.argv[1]))['timing'])" \
    "$OUT/.simclr_$compiled/metrics.json" >> "$OUT/simclr_r18.txt" 2>/dev/null
done
fi

if part pipeline; then
log "bench_pipeline: c/b, compile=auto (the batch builder compiled on CUDA) and for CIFAR-10 also uncompiled"
for setting in "cifar10 simclr triplet pami_cnn sgd auto" "cifar10 simclr triplet pami_cnn sgd false" \
               "mnist guo triplet pami_cnn sgd auto" "cifar10 simclr ntxent resnet18 lars auto"; do
  read -r data aug loss encoder optimizer batch_compiled <<< "$setting"
  echo "== $setting" >> "$OUT/bench_pipeline.txt"
  timeout 120 python3 scripts/bench_pipeline.py --device "$DEVICE" --dataset "$data" --aug "$aug" --loss "$loss" \
    --encoder "$encoder" --optimizer "$optimizer" --compile-batch "$batch_compiled" --batch-size "$BATCH" \
    --steps "$STEPS" --skip-study >> "$OUT/bench_pipeline.txt" 2>&1
  log "bench_pipeline $setting exit $?"
done
log "operators per step (profile_step), the batch builder eager and compiled"
for compiled in false true; do
  timeout 90 python3 scripts/profile_step.py --steps 3 -- "device=$DEVICE" dataset=cifar10 aug=simclr loss=triplet \
    "batch_size=$BATCH" "compile.batch=$compiled" >> "$OUT/bench_pipeline.txt" 2>&1
  log "profile_step compile.batch=$compiled exit $?"
done
fi

if part startup; then
log "time to the first step, and the probes: torch vs scikit-learn"
{ timeout 150 python3 scripts/bench_startup.py "${STARTUP[@]}" -- "device=$DEVICE"
  timeout 120 python3 scripts/bench_probes.py "${PROBES[@]}" "device=$DEVICE"; } > "$OUT/startup_probes.txt" 2>&1
log "startup and probes exit $?"
fi

if part grid; then
log "paper_grid with the default launcher, GPU utilization sampled every second"
SAMPLER=
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 1 > "$OUT/gpu_util.csv" 2>&1 &
  SAMPLER=$!
fi
{ time timeout "$GRID_LIMIT" cl-run -m experiment=paper_grid "device=$DEVICE" "${GRID[@]}" \
    hydra.sweep.dir="$OUT/.grid" ; } > "$OUT/paper_grid.txt" 2>&1
log "paper_grid exit $?"
[ -n "$SAMPLER" ] && kill "$SAMPLER"
python3 - "$OUT/.grid" >> "$OUT/paper_grid.txt" 2>&1 <<'EOF'
"""Each job's phases (metrics.json `timing`), and the mean GPU utilization over the grid."""
import csv
import json
import sys
from pathlib import Path

jobs = sorted(Path(sys.argv[1]).glob("*/metrics.json"))
print(f"\n{len(jobs)} jobs completed; seconds per phase:")
keys = ["data_s", "train_s", "embed_s", "eval_s", "baseline_s", "tsne_s", "export_s", "total_s"]
print("job".ljust(64) + "".join(k.rjust(11) for k in keys))
for path in jobs:
    timing = json.loads(path.read_text())["timing"]
    print(path.parent.name[:63].ljust(64) + "".join(f"{timing.get(k, float('nan')):11.2f}" for k in keys))
util = Path(sys.argv[1]).parent / "gpu_util.csv"
if util.exists():
    values = [float(r[1].split()[0]) for r in csv.reader(util.open()) if len(r) > 1 and r[1].strip()[:1].isdigit()]
    print(f"GPU utilization over the grid: mean {sum(values) / max(len(values), 1):.1f}% ({len(values)} samples)")
EOF
cp "$OUT/.grid/results.md" "$OUT/paper_grid_results.md" 2>/dev/null
fi
rm -rf "$OUT"/.grid "$OUT"/.simclr_*  # only flat files come back
log "done"
