"""Encoders: image batch [B, C, H, W] -> embedding [B, D]. An `Encoder` is a backbone plus an optional
projection head; training uses the head's output, evaluation the backbone's features unless told otherwise."""
from __future__ import annotations

import difflib

import torch
from torch import nn

from cl_runner.errors import ConfigError


class PamiCNN(nn.Sequential):
    """The study's bias-free CNN (SPEC.md): four 2x2 stride-2 convolutions (BatchNorm after all but the first,
    LeakyReLU 0.2), then a 2x2 convolution to 8 channels, a sigmoid and a flatten: 32-d for 28x28 and 32x32."""

    embedding_dim = 32
    image_sizes = "images of 18x18 to 33x33"  # four stride-2 blocks and a 2x2 head leave 2x2 of 8 channels

    def __init__(self, in_channels: int = 1, negative_slope: float = 0.2):
        if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float)) or negative_slope < 0:
            raise ConfigError(f"encoder.backbone.negative_slope must be a number >= 0 (LeakyReLU's slope), got "
                              f"{negative_slope!r}")

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


# The max-pools right after a stem, which cifar_stem removes: ResNet's and ShuffleNetV2's maxpool, GoogLeNet's and
# Inception v3's maxpool1, DenseNet's features.pool0.
STEM_POOLS = ("maxpool", "maxpool1", "features.pool0")
# A classifier's layers: its output layer, and the MLP (Linear, activation, dropout) right before it.
HEAD_LAYERS = (nn.Linear, nn.modules.dropout._DropoutNd, nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Tanh, nn.GELU, nn.SiLU)
# Builder settings: no auxiliary classifiers (extra outputs in training, and weights no loss would reach), and the
# initialization torchvision warns it will change made explicit.
BUILD_SETTINGS = {"googlenet": {"aux_logits": False, "init_weights": True},
                  "inception_v3": {"aux_logits": False, "init_weights": True}}


class TorchvisionBackbone(nn.Module):
    """Any classification model of torchvision (`name`, e.g. resnet50, convnext_tiny, mobilenet_v3_small,
    efficientnet_b0, vit_b_16; `torchvision.models.list_models(module=torchvision.models)` lists them), randomly
    initialized (torchvision's own initialization, drawn from the run's seed): no weights are downloaded.

    - Input: where `in_channels` (1 or 3) differs from the model's 3, its first convolution is replaced by one that
      takes them, its other settings kept. A replaced convolution has PyTorch's default initialization.
    - `cifar_stem`: the stem made for small images, as the field does for CIFAR (SimCLR, Chen et al. 2020, B.9,
      after He et al. 2016's CIFAR ResNets): the first convolution becomes 3x3 stride 1 padding 1 (same output
      channels, a bias where it had one) and the stem's max-pool, where there is one, an identity. Per family:
      ResNet, ResNeXt and Wide ResNet: conv1 7x7/2 and maxpool (total stride 32 -> 8); ShuffleNetV2: conv1 3x3/2
      and maxpool (32 -> 8); DenseNet: conv0 7x7/2 and pool0 (32 -> 8); GoogLeNet and Inception v3: the first
      convolution and maxpool1 (the later stem pool stays); ConvNeXt and Swin: the 4x4/4 patchify convolution
      (32 -> 8); MobileNet v2/v3, EfficientNet, MNASNet and RegNet: the 3x3/2 first convolution
      (32 -> 16); AlexNet: 11x11/4; SqueezeNet: its 7x7/2 or 3x3/2 first convolution; VGG: none (its first
      convolution is already 3x3/1). Refused for ViT and MaxViT, transformers built for one image size (224x224:
      ViT's position embeddings, MaxViT's attention grid), which take no other.
    - Output: the classifier becomes identities (the output layer, a Linear, or SqueezeNet's 1x1 convolution, and
      the Linear, activation and dropout layers of its MLP just before it), so the backbone returns the model's
      pooled features: 2048-d for resnet50, 768 for convnext_tiny, 576 for mobilenet_v3_small, 1280 for
      efficientnet_b0, 768 for vit_b_16. AlexNet and VGG pool to a 6x6 or 7x7 map: 9216 and 25088 features.
    - `embedding_dim` is found by a forward of one blank image (in eval mode, without gradients; the model is
      left in the mode it was in): 32x32 with the CIFAR stem, else 224x224 (every model takes it).
    - `image_sizes` (the phrase an image-size error quotes) is found when read, by forwards of blank images: the
      smallest side the model takes; for ViT and MaxViT the one size they take, which `forward` checks (ViT's own
      check is an assertion, MaxViT has none for larger images)."""

    def __init__(self, name: str = "resnet50", in_channels: int = 3, cifar_stem: bool = False):
        import torchvision  # here, where a torchvision backbone is chosen: importing it slows every other start

        super().__init__()
        names = torchvision.models.list_models(module=torchvision.models)
        if not isinstance(name, str) or name not in names:
            near = difflib.get_close_matches(str(name), names, n=3) or ["resnet50", "convnext_tiny",
                                                                        "mobilenet_v3_small", "vit_b_16"]
            raise ConfigError(f"encoder.backbone.name={name!r} is not a torchvision classification model: e.g. "
                              f"{', '.join(near)} ({len(names)} in torchvision.models.list_models(module="
                              "torchvision.models))")
        if not isinstance(cifar_stem, bool):
            raise ConfigError(f"encoder.backbone.cifar_stem={cifar_stem!r} is not allowed: it must be true or false")
        net = torchvision.models.get_model(name, weights=None, **BUILD_SETTINGS.get(name, {}))
        self.name, self.in_channels = name, in_channels
        # the one size a transformer built for it takes: ViT's (its position embeddings), MaxViT's (its attention grid)
        self.fixed_side: int | None = getattr(net, "image_size", 224 if isinstance(net, torchvision.models.MaxVit)
                                              else None)
        if cifar_stem and self.fixed_side:
            raise ConfigError(f"encoder.backbone.cifar_stem=true does not fit {name}: a transformer built for "
                              f"{self.fixed_side}x{self.fixed_side} images, it takes no other size")
        stem_name, stem = next((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d))
        if cifar_stem:
            net.set_submodule(stem_name, nn.Conv2d(in_channels, stem.out_channels, kernel_size=3, stride=1, padding=1,
                                                   bias=stem.bias is not None))
            for pool in [n for n, m in net.named_modules() if n in STEM_POOLS and isinstance(m, nn.MaxPool2d)]:
                net.set_submodule(pool, nn.Identity())
        elif in_channels != stem.in_channels:
            net.set_submodule(stem_name, nn.Conv2d(in_channels, stem.out_channels, stem.kernel_size, stem.stride,
                                                   stem.padding, stem.dilation, stem.groups, stem.bias is not None,
                                                   stem.padding_mode))
        _drop_classifier(net)
        self.net = net
        self.embedding_dim = int(self._blank_features(32 if cifar_stem else 224).shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fixed_side and x.shape[-2:] != (self.fixed_side, self.fixed_side):  # ViT's own check: an assert
            raise RuntimeError(f"{self.name} takes {self.fixed_side}x{self.fixed_side} images, not "
                               f"{x.shape[-2]}x{x.shape[-1]}")
        return self.net(x)

    @property
    def image_sizes(self) -> str:
        """The sizes this model takes, found by forwards of blank square images (a binary search for the smallest
        side: every larger one works, as with every torchvision CNN), for an error message."""
        if self.fixed_side:
            side = f"{self.fixed_side}x{self.fixed_side}"
            return f"images of exactly {side} ({self.name}: a transformer built for one size)"
        low, high = 1, 224  # high: a side the model takes
        while low < high:
            side = (low + high) // 2
            try:
                self._blank_features(side)
                high = side
            except RuntimeError:
                low = side + 1
        return f"images of any size from {high}x{high} ({self.name}: its last feature map is pooled)"

    def _blank_features(self, side: int) -> torch.Tensor:
        """The features of one blank image of side x side, in eval mode and without gradients."""
        training = self.training
        self.train(False)  # eval mode: batch norm uses its running statistics
        try:
            with torch.no_grad():
                like = next(self.parameters())
                return self(torch.zeros(1, self.in_channels, side, side, device=like.device, dtype=like.dtype))
        finally:
            self.train(training)


def _drop_classifier(net: nn.Module) -> None:
    """Replace the model's classifier by identities: its output layer (the last Linear; SqueezeNet, which has
    none, classifies with its last 1x1 convolution) and, going back among that layer's siblings, the Linear,
    activation and dropout layers of the MLP before it, up to the pooling, flattening or normalization."""
    modules = list(net.named_modules())
    output = [n for n, m in modules if isinstance(m, nn.Linear)] or [n for n, m in modules if isinstance(m, nn.Conv2d)]
    parent_name, _, name = output[-1].rpartition(".")
    parent = net.get_submodule(parent_name)
    children = list(parent.named_children())
    for child, module in reversed(children[:[n for n, _ in children].index(name) + 1]):
        if child != name and not isinstance(module, HEAD_LAYERS):
            break
        parent.register_module(child, nn.Identity())


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
