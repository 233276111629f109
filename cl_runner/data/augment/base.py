"""The operation protocol and the pixel arithmetic the operations share.

An operation draws its parameters apart from applying them, in two steps: `uniforms`, the stream's draws for n
images (raw tensors whose shapes depend on n and the image shape only, drawn in a fixed order), then `params`,
the per-sample parameters computed from them with tensor arithmetic only (the part of building a batch that
`torch.compile` can fuse). `apply` uses them on a float batch in [0, 1]. The processes of a distributed run each
draw the parameters of the whole global batch from the shared stream (cheap) and apply only their own rows.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from cl_runner.errors import ConfigError

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale

Params = dict[str, torch.Tensor]  # an operation's per-sample parameters, each [B, ...]
Shape = tuple[int, int, int]  # an image's (channels, height, width)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to float32 in [0, 1]."""
    return images.float().div_(255.0)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images to the model's input range: mean 0.5, std 0.5 per channel, i.e. [-1, 1]."""
    return images.mul(2.0).sub_(1.0)


def scaled(u: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """U[0, 1) draws `u` moved to U[low, high)."""
    return u.mul(high - low).add_(low)


def rows_of(params: list[Params], rows: slice | torch.Tensor) -> list[Params]:
    """A pipeline's parameters (one dict per operation) of the samples `rows` (a slice or an index tensor)."""
    return [{name: value[rows] for name, value in own.items()} for own in params]


def per_sample(values: torch.Tensor) -> torch.Tensor:
    """A value per sample [B] shaped to broadcast over images [B, C, H, W]."""
    return values.view(-1, 1, 1, 1)


def pixel_centres(size: int, like: torch.Tensor) -> torch.Tensor:
    """Normalized coordinates (align_corners=False) of the centres of `size` pixels along one axis."""
    return torch.arange(size, device=like.device, dtype=like.dtype).mul_(2 / size).add_(1 / size - 1)


def warp(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample each image through its own affine map `theta` [B, 2, 3] (output -> input, normalized
    coordinates, align_corners=False), bilinear, zeros outside.

    The grid is F.affine_grid's, as one broadcast sum of a column and a row term (on CPU several times faster
    than its batched matrix product)."""
    height, width = images.shape[-2:]
    columns = pixel_centres(width, images).view(1, 1, width, 1) * theta[:, None, None, :, 0]  # [B, 1, W, 2]
    rows = torch.addcmul(theta[:, None, None, :, 2], pixel_centres(height, images).view(1, height, 1, 1),
                         theta[:, None, None, :, 1])  # [B, H, 1, 2]
    return F.grid_sample(images, columns + rows, mode="bilinear", padding_mode="zeros", align_corners=False)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """Luma of RGB images [B, 3, H, W] -> [B, 1, H, W]; one-channel images are returned as they are."""
    if images.shape[1] == 1:
        return images
    r, g, b = images.unbind(1)
    red, green, blue = GRAY_WEIGHTS
    return (r * red).add_(g, alpha=green).add_(b, alpha=blue).unsqueeze(1)


def mean_luma(images: torch.Tensor) -> torch.Tensor:
    """The mean of each image's luma [B, 1, 1, 1]: the luma of the channel means, without a luma image."""
    return grayscale(images.mean(dim=(2, 3), keepdim=True))


def is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_probability(name: str, value) -> float:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1):
        raise ConfigError(f"{name}={value!r} is not allowed: {name} must be a probability in [0, 1]")
    return float(value)


def check_range(name: str, value, low: float = float("-inf"), high: float = float("inf"),
                open_low: bool = False) -> tuple[float, float]:
    """A [min, max] setting: two numbers, min <= max, both in [low, high] (low itself excluded with `open_low`)."""
    if not (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2 and
            all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise ConfigError(f"{name}={value!r} is not allowed: {name} must be [min, max], two numbers")
    lo, hi = float(value[0]), float(value[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi and (lo > low if open_low else lo >= low)
            and hi <= high):
        bound = f"{'(' if open_low else '['}{low:g}, {high:g}]"
        raise ConfigError(f"{name}={list(value)!r} is not allowed: {name} must be [min, max] with min <= max, "
                          f"both in {bound}")
    return lo, hi


class Operation(ABC):
    """One batched operation of a pipeline, applied to each image with probability `p`.

    With p < 1 its first draw is one uniform per image (`applied`: below p, the operation applies); with p = 1 it
    draws none, so an operation always applied takes from the stream only its own parameters' draws."""

    def __init__(self, p: float = 1.0):
        self.p = check_probability("p", p)

    def uniforms(self, n: int, shape: Shape, generator: torch.Generator, device: torch.device) -> Params:
        """The draws for n images of `shape` (C, H, W), every one from `generator` in a fixed order."""
        applied = {"applied": torch.rand(n, generator=generator, device=device)} if self.p < 1 else {}
        return {**applied, **self.own_uniforms(n, shape, generator, device)}

    def own_uniforms(self, n: int, shape: Shape, generator: torch.Generator, device: torch.device) -> Params:
        """The operation's own draws, after `applied` (none by default)."""
        return {}

    def params(self, uniforms: Params, size: tuple[int, int]) -> Params:
        """Per-sample parameters of images of `size` (height, width) from their `uniforms`."""
        params = self.own_params(uniforms, size)
        if "applied" in uniforms:
            params["applied"] = uniforms["applied"] < self.p
        return params

    def own_params(self, uniforms: Params, size: tuple[int, int]) -> Params:
        """The operation's own per-sample parameters (none by default)."""
        return {}

    def apply(self, images: torch.Tensor, params: Params, sync_free: bool = False) -> torch.Tensor:
        """Float images [B, C, H, W] in [0, 1] -> the same, transformed where `applied` (every image at p = 1).
        `sync_free`: no data-dependent shapes (a compiled batch builder's, or an accelerator's)."""
        out = self.transform(images, params, sync_free)
        return torch.where(per_sample(params["applied"]), out, images) if "applied" in params else out

    @abstractmethod
    def transform(self, images: torch.Tensor, params: Params, sync_free: bool) -> torch.Tensor:
        """Every image of the batch transformed with its parameters."""

    def fuse(self, following: Operation) -> Operation | None:
        """One operation doing this and then `following` in fewer steps, drawing what both draw in the same
        order; None where there is none."""
        return None
