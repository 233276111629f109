"""runtime.py's policies, with stand-in capacities."""
from __future__ import annotations

import pytest

from cl_runner.runtime import GPU_JOB_MEMORY, JOB_MEMORY, sweep_jobs

GiB = 2**30


def test_a_cpu_only_machine_runs_one_job_per_core_as_its_memory_allows():
    assert sweep_jobs(2, 24 * GiB, None) == 2
    assert sweep_jobs(16, 24 * GiB, None) == 6  # memory for 6 jobs of JOB_MEMORY
    assert sweep_jobs(16, GiB, None) == 1  # never fewer than one
    assert sweep_jobs(16, None, None) == 16  # unknown memory: the cores decide


def test_a_gpu_is_shared_by_as_many_jobs_as_its_memory_and_the_cores_allow():
    assert sweep_jobs(16, 128 * GiB, 141 * 10**9) == 16  # an H200 with 16 cores: the cores decide
    assert sweep_jobs(64, 512 * GiB, 141 * 10**9) == 141 * 10**9 // GPU_JOB_MEMORY  # the GPU's memory decides
    assert sweep_jobs(16, 128 * GiB, 16 * GiB) == 4
    assert sweep_jobs(16, 8 * GiB, 80 * GiB) == 8 * GiB // JOB_MEMORY  # the host's memory decides
    assert sweep_jobs(8, None, 2 * GiB) == 1


@pytest.mark.slow
def test_starting_cl_run_imports_none_of_what_later_phases_need():
    """The entry point's imports: matplotlib (figures), scikit-learn (t-SNE, the reference probes, the paper split)
    and torchvision (ResNet-18) come when a phase first needs them, not before the first training step."""
    import subprocess
    import sys

    code = ("import sys, cl_runner.cli; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'matplotlib', 'sklearn', 'torchvision'}))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
