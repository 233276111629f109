"""The training loop's process settings."""
import subprocess
import sys

import pytest

FREED_BYTES = """
import sys
import torch
from cl_runner.train import retain_freed_memory

def resident() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * 4096

if sys.argv[1] == "retain":
    assert retain_freed_memory()
block = torch.ones(64 * 2**20 // 4)  # 64 MB, written, so resident
before = resident()
del block
print(before - resident())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc only")
def test_freed_blocks_stay_with_the_process_instead_of_being_unmapped():
    def released(mode: str) -> int:
        result = subprocess.run([sys.executable, "-c", FREED_BYTES, mode], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return int(result.stdout)

    assert released("system") > 48 * 2**20  # glibc's default: the block is unmapped on free
    assert released("retain") < 8 * 2**20  # retained: the next step reuses it without page faults
