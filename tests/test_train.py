"""The training loop's process settings and precision."""
import subprocess
import sys

import pytest
import torch

from cl_runner.batch import TupleBatch
from cl_runner.errors import UserError
from cl_runner.losses import TripletMarginLoss
from cl_runner.models import Encoder, PamiCNN
from cl_runner.runtime import native_cpu_bf16, resolve_precision
from cl_runner.parts import Objective
from cl_runner.runtime import Compute, make_grad_scaler
from cl_runner.train import train_step

FREED_BYTES = """
import sys
import torch
from cl_runner.runtime import retain_freed_memory

def resident() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * 4096

if sys.argv[1] == "retain":
    assert retain_freed_memory()
block = torch.ones(64 * 2**20 // 4)  # 64 MB, written, so resident
before = resident()
del block
print(before - resident())
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc only")
def test_freed_blocks_stay_with_the_process_instead_of_being_unmapped():
    def released(mode: str) -> int:
        result = subprocess.run([sys.executable, "-c", FREED_BYTES, mode], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return int(result.stdout)

    assert released("system") > 48 * 2**20  # glibc's default: the block is unmapped on free
    assert released("retain") < 8 * 2**20  # retained: the next step reuses it without page faults


CPU = torch.device("cpu")


def test_precision_auto_is_bf16_where_native_and_fp16_needs_cuda():
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert resolve_precision("auto", CPU) == ("bf16" if native_cpu_bf16() else "fp32")
    assert resolve_precision("bf16", CPU) == "bf16" and resolve_precision("fp32", CPU) == "fp32"
    with pytest.raises(UserError, match="precision=fp16 needs a CUDA device"):
        resolve_precision("fp16", CPU)


def test_bf16_on_cpu_runs_the_encoder_in_bf16_and_keeps_fp32_parameters():
    """A train step under CPU bf16 autocast: convolutions compute in bf16 (the loss differs from fp32 by bf16
    rounding, not more), the embeddings reach the loss in fp32, parameters and gradients stay fp32."""
    losses = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        encoder = Encoder(PamiCNN(in_channels=1))
        seen = []
        encoder.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
        optimizer = torch.optim.SGD(encoder.parameters(), lr=0.1)
        images = torch.rand(96, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1
        losses[precision] = train_step(Objective(encoder, TripletMarginLoss()), optimizer, make_grad_scaler(CPU, precision),
                                       TupleBatch(images, views=3), Compute(CPU, precision)).item()
        expected = torch.bfloat16 if precision == "bf16" else torch.float32
        assert seen == [expected]
        assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in encoder.parameters())
    assert losses["bf16"] != losses["fp32"]
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.02)
