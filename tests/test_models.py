import pytest
import torch
from torch import nn

from cl_runner.models import PamiCNN

# SPEC.md's table: output shape after each block for a 28x28 input, and each block's parameter count.
MNIST_SHAPES = [(32, 15, 15), (64, 8, 8), (128, 5, 5), (256, 3, 3), (8, 2, 2)]
CIFAR_SHAPES = [(32, 17, 17), (64, 9, 9), (128, 5, 5), (256, 3, 3), (8, 2, 2)]


def conv_outputs(model: nn.Module, x: torch.Tensor) -> list[tuple[int, ...]]:
    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
             for m in model if isinstance(m, nn.Conv2d)]
    model(x)
    for h in hooks:
        h.remove()
    return shapes


@pytest.mark.parametrize("channels,side,shapes", [(1, 28, MNIST_SHAPES), (3, 32, CIFAR_SHAPES)])
def test_shapes_follow_spec(channels, side, shapes):
    model = PamiCNN(channels)
    x = torch.randn(4, channels, side, side)
    assert conv_outputs(model, x) == shapes
    out = model(x)
    assert out.shape == (4, 32)
    assert ((out > 0) & (out < 1)).all()  # sigmoid output


@pytest.mark.parametrize("channels", [1, 3])
def test_parameter_counts_follow_spec(channels):
    model = PamiCNN(channels)
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    norms = [m for m in model if isinstance(m, nn.BatchNorm2d)]
    assert [c.weight.numel() for c in convs] == [128 * channels, 8192, 32768, 131072, 8192]
    assert all(c.bias is None for c in convs)
    assert [sum(p.numel() for p in n.parameters()) for n in norms] == [128, 256, 512]
    assert sum(p.numel() for p in model.parameters()) == 128 * channels + 8192 + 128 + 32768 + 256 + 131072 + 512 + 8192
    leaky = [m for m in model if isinstance(m, nn.LeakyReLU)]
    assert len(leaky) == 4 and all(m.negative_slope == 0.2 for m in leaky)
