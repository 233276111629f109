"""Encoders: image batch [B, C, H, W] -> embedding [B, D]. An `Encoder` is a backbone plus an optional
projection head; training uses the head's output, evaluation the backbone's features unless told otherwise."""
from __future__ import annotations

import torch
from torch import nn

from cl_runner.errors import ConfigError


class PamiCNN(nn.Sequential):
    """The study's bias-free CNN (SPEC.md): four 2x2 stride-2 convolutions (BatchNorm after all but the first,
    LeakyReLU 0.2), then a 2x2 convolution to 8 channels, a sigmoid and a flatten: 32-d for 28x28 and 32x32."""

    embedding_dim = 32
    image_sizes = "images of 18x18 to 33x33"  # four stride-2 blocks and a 2x2 head leave 2x2 of 8 channels

    def __init__(self, in_channels: int = 1, negative_slope: float = 0.2):
        def block(cin: int, cout: int, norm: bool) -> list[nn.Module]:
            layers = [nn.Conv2d(cin, cout, kernel_size=2, stride=2, padding=1, bias=False)]
            if norm:
                layers.append(nn.BatchNorm2d(cout))
            return layers + [nn.LeakyReLU(negative_slope)]

        super().__init__(
            *block(in_channels, 32, norm=False),   # 32 x 15 x 15 (28x28 input) | 32 x 17 x 17 (32x32)
            *block(32, 64, norm=True),             # 64 x 8 x 8  | 64 x 9 x 9
            *block(64, 128, norm=True),            # 128 x 5 x 5 | 128 x 5 x 5
            *block(128, 256, norm=True),           # 256 x 3 x 3 | 256 x 3 x 3
            nn.Conv2d(256, 8, kernel_size=2, stride=1, padding=0, bias=False),  # 8 x 2 x 2
            nn.Sigmoid(),
            nn.Flatten(),                          # 32
        )


class ResNet18(nn.Module):
    """ResNet-18 (He et al. 2016) with the CIFAR stem of SimCLR (Chen et al. 2020, B.9): a 3x3 stride-1 first
    convolution and no max-pool; global average pooling gives 512-d features."""

    embedding_dim = 512
    image_sizes = "images of any size (global average pooling)"

    def __init__(self, in_channels: int = 3):
        import torchvision  # here, where ResNet-18 is chosen: importing it slows every other run's start

        super().__init__()
        net = torchvision.models.resnet18()
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ProjectionHead(nn.Sequential):
    """MLP projection head (SimCLR, Chen et al. 2020): Linear-BatchNorm-ReLU for each hidden layer, a plain
    Linear last. `dims` lists the input, hidden and output sizes, e.g. [512, 2048, 128]."""

    def __init__(self, dims: list[int]):
        if len(dims) < 2 or not all(isinstance(d, int) and d >= 1 for d in dims[1:]):
            raise ConfigError(f"encoder.projector needs sizes (integers >= 1) ending in the output size, "
                              f"got {dims[1:]}")
        layers: list[nn.Module] = []
        for cin, cout in zip(dims[:-2], dims[1:-1]):
            layers += [nn.Linear(cin, cout, bias=False), nn.BatchNorm1d(cout), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(dims[-2], dims[-1]))
        super().__init__(*layers)


class Encoder(nn.Module):
    """A backbone and an optional projection head (`projector`: hidden and output sizes, or null)."""

    def __init__(self, backbone: nn.Module, projector: list[int] | None = None):
        super().__init__()
        self.backbone = backbone
        self.projector = ProjectionHead([backbone.embedding_dim, *projector]) if projector else nn.Identity()
        self.output_dim = projector[-1] if projector else backbone.embedding_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))

    def features(self, x: torch.Tensor, which: str = "backbone") -> torch.Tensor:
        """The representation evaluated: the backbone's features, or the projector's output."""
        return self.backbone(x) if which == "backbone" else self(x)
