import pytest
import torch
from torch import nn

from cl_runner.models import Encoder, PamiCNN, ProjectionHead, ResNet18

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


@pytest.mark.parametrize("channels,side", [(1, 28), (3, 32)])
def test_resnet18_has_the_cifar_stem_and_512_features(channels, side):
    model = ResNet18(channels)
    stem = model.net.conv1
    assert stem.in_channels == channels and stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    assert isinstance(model.net.maxpool, nn.Identity)
    model.eval()
    assert model(torch.randn(2, channels, side, side)).shape == (2, 512)
    # torchvision's ResNet-18 has 11.69M parameters with its 1000-way fc; ours drops the fc and the 7x7 stem
    expected = 11_689_512 - (512 * 1000 + 1000) - 64 * 3 * 7 * 7 + 64 * channels * 3 * 3
    assert sum(p.numel() for p in model.parameters()) == expected


def test_projection_head_follows_its_dimensions_and_features_skip_it():
    head = ProjectionHead([512, 2048, 128])
    assert [type(m).__name__ for m in head] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert head[0].in_features == 512 and head[0].out_features == 2048 and head[3].out_features == 128
    encoder = Encoder(PamiCNN(1), projector=[64, 16]).eval()
    x = torch.randn(4, 1, 28, 28)
    assert encoder(x).shape == (4, 16) and encoder.features(x).shape == (4, 32)
    assert torch.equal(encoder.features(x, "projector"), encoder(x))
    assert isinstance(Encoder(PamiCNN(1)).projector, nn.Identity)


@pytest.mark.parametrize("slope", [None, -0.1, "0.2", True])
def test_the_study_cnn_refuses_a_slope_that_is_not_a_number_at_least_0(slope):
    """Found by the config fuzz test: encoder.backbone.negative_slope=null built the CNN and failed in its first
    forward pass, a TypeError traceback."""
    with pytest.raises(ValueError, match="encoder.backbone.negative_slope must be a number >= 0"):
        PamiCNN(1, negative_slope=slope)
