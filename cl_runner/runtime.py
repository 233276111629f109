"""Where and how a run computes: the device, the precision, torch threads and process-level settings, in one
place that cl-run and the benchmark scripts share."""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from cl_runner.errors import UserError

log = logging.getLogger(__name__)


def resolve_device(name: str, distributed: bool = False) -> torch.device:
    """`auto`: CUDA when a GPU is visible, else the CPU. A process of a distributed run gets its own GPU (the
    current one, which joining the run set from its local rank)."""
    device = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else
                          "cpu" if name == "auto" else name)
    if distributed and device.type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return device


def choose_fastest_kernels(device: torch.device) -> None:
    """On CUDA, let cuDNN time its convolution algorithms for each new input shape and keep the fastest
    (torch.backends.cudnn.benchmark): a run's shapes are fixed (an epoch's smaller last batch adds one), so it
    pays once. Like cuDNN's default choice, the chosen algorithms need not be bitwise deterministic."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model and core count (from /proc/cpuinfo where there is one)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")]
    except OSError:
        models = []
    return f"{models[0] if models else platform.machine()}, {os.cpu_count()} cores"


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def retain_freed_memory() -> bool:
    """Keep freed host memory in the process instead of returning it to the OS. glibc serves blocks above
    32 MB (a batch of images, an activation) with mmap and unmaps them on free, so every training step
    page-faults them in again, a large share of a CPU step's time (measured: README, Performance).
    Memory is reused within the process rather than given back. Returns whether the setting applied (glibc)."""
    libc_name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(libc_name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision a run uses on `device`. `auto`: bf16 autocast on CUDA and on CPUs with native bf16
    instructions (AVX512-BF16 or AMX; there the study's runs train faster with the same accuracy: README,
    Performance), fp32 on other CPUs. An explicit bf16 on a CPU without them is emulated and slower,
    which is logged. fp16 is for CUDA only."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" or (device.type == "cpu" and native_cpu_bf16()) else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise UserError("precision=fp16 needs a CUDA device; on CPU use precision=bf16 or fp32")
    if precision == "bf16" and device.type == "cpu" and not native_cpu_bf16():
        log.warning("precision=bf16: this CPU has no native bf16 instructions (AVX512-BF16, AMX), so bf16 "
                    "is emulated and slower than fp32")
    return precision


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Compute:
    """Where and in which formats the model computes: the device, the precision (`resolve_precision`) and the
    images' memory format (channels_last: NHWC, the faster convolutions on CPUs and tensor cores)."""

    device: torch.device = torch.device("cpu")
    precision: str = "fp32"
    channels_last: bool = True

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def autocast_for(device: torch.device, precision: str):
    """bf16/fp16 autocast on the run's device (see `resolve_precision`); a no-op context for fp32, so the same
    code runs either way."""
    if precision not in AUTOCAST_DTYPES:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


# The device types where compiling a part (torch.compile) measured faster, for compile=auto (README, Performance).
# The batch builder: on an H200, SimCLR ResNet-18 took 1.49 s an epoch compiled and 1.67 s eager, CIFAR-10 triplets
# reached 0.62 of the model step's speed instead of 0.37; on CPU, compiled it was 3x faster for SimCLR's augmentation
# but 6x slower for the study's rotation (inductor's own grid sampling), with 8-40 s of compilation, and the CPU's
# loop is bound by the model step: so on CUDA only. The encoder: no gain measured on CPU or on the H200.
COMPILE_AUTO = {"batch": ("cuda",), "encoder": ()}


def compiles(setting, part: str, device: torch.device) -> bool:
    """Whether to torch.compile `part` (a key of COMPILE_AUTO) on `device`; `setting` is the run's `compile`: one
    choice for every part or one per part, each auto, true or false."""
    choice = setting[part] if isinstance(setting, (dict, DictConfig)) else setting
    return device.type in COMPILE_AUTO[part] if choice == "auto" else bool(choice)


def make_grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling for fp16 autocast on CUDA only; a pass-through otherwise."""
    return torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and precision == "fp16")


def out_of_memory(err: BaseException, batch_size: int, device: torch.device, checkpoint: Path) -> UserError:
    """One line for a run that ran out of device memory: what ran out, with which batch size, what to do, and
    that the last `checkpoint` stays (where one was written)."""
    kept = f"the last checkpoint stays in {checkpoint}" if checkpoint.exists() else "no checkpoint had been written"
    reason = next((line.strip() for line in str(err).splitlines() if line.strip()), "out of memory")
    return UserError(f"the {device.type} device ran out of memory with batch_size={batch_size} ({reason[:160]}); "
                     f"use a smaller batch_size (e.g. {max(1, batch_size // 2)}) or precision=bf16, or free the "
                     f"device; {kept}")


def native_cpu_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX tiles), as PyTorch's own kernels check."""
    checks = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(check() for check in checks if check is not None)


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


JOB_MEMORY = 4 * 2**30  # bytes a local sweep job is allowed for (the embedded default's jobs peaked at 1.2 GB)
GPU_JOB_MEMORY = 4 * 2**30  # bytes of GPU memory a job is allowed for: its CUDA context, data set and batches


def sweep_jobs(cores: int, host_memory: int | None, gpu_memory: int | None) -> int:
    """How many jobs of a sweep to run at once on one machine: one per core (each job drives its work from one;
    on a CPU-only machine two one-thread jobs at once finish sooner than two-thread jobs one after another:
    README, Performance), as many as the host memory available holds at JOB_MEMORY each and, with a GPU
    (`gpu_memory` its bytes; None: no GPU), as many as it holds at GPU_JOB_MEMORY each: the jobs then share the
    GPU, which one small job alone leaves mostly idle (bench/results/nvidia-h200). Unknown memory sets no limit."""
    limits = [cores]
    limits += [memory // allowance for memory, allowance in ((host_memory, JOB_MEMORY), (gpu_memory, GPU_JOB_MEMORY))
               if memory is not None]
    return max(1, min(limits))


def local_sweep_jobs() -> int:
    """`sweep_jobs` for this machine and its first GPU (Hydra's joblib launcher: `${local_sweep_jobs:}`)."""
    return sweep_jobs(available_cores(), host_memory_available(), gpu_memory())


def gpu_memory() -> int | None:
    """Bytes of memory of the first visible GPU, or None without CUDA."""
    return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None


def runs_in_worker(launcher: DictConfig) -> bool:
    """Whether the launcher runs each job in a local worker process that the sweep's own process owns (joblib)."""
    return "joblib" in str(launcher.get("_target_", ""))


def fits_on_device(nbytes: int, device: torch.device, share: float = 0.5) -> bool:
    """Whether `nbytes` of data fit in `share` of the device's free memory (the rest: the model, its activations
    and the augmented batches)."""
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= share * free


def host_memory_available() -> int | None:
    """Bytes of host memory available to a new allocation (Linux's MemAvailable), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def job_threads(launcher: DictConfig) -> int | None:
    """Torch threads for one job when a launcher runs several at once, so that they share the cores instead of
    each taking them all: the cores over joblib's `n_jobs` (negative: as joblib counts), or submitit's
    `cpus_per_task`. None: leave torch's default."""
    cores = available_cores()
    if launcher.get("n_jobs") is not None:
        n_jobs = launcher.n_jobs if launcher.n_jobs > 0 else max(1, cores + 1 + launcher.n_jobs)
        return max(1, cores // n_jobs)
    return launcher.get("cpus_per_task")
