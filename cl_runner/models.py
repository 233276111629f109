"""Encoders: image batch [B, C, H, W] -> embedding [B, D]."""
from __future__ import annotations

from torch import nn


class PamiCNN(nn.Sequential):
    """The study's bias-free CNN (SPEC.md): four 2x2 stride-2 convolutions (BatchNorm after all but the first,
    LeakyReLU 0.2), then a 2x2 convolution to 8 channels, a sigmoid and a flatten: 32-d for 28x28 and 32x32."""

    embedding_dim = 32

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
