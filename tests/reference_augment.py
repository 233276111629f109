# A frozen test oracle, not code to maintain: cl_runner/data/augment.py exactly as main held it at 0e71692, before
# augmentations became compositions (issue #30). tests/test_augment_presets.py checks that aug=none, guo and simclr
# still draw, seed for seed, the pixels these classes drew, so that every result in bench/results/ reproduces.
# Never edit it to follow the package: a difference it shows is a change in what the presets draw.
"""Batched augmentation on the training device: uint8 [B, C, H, W] in, float [B, C, H, W] in [0, 1] out.

Every random parameter is drawn per sample from the caller's `torch.Generator`, and each step is a few tensor
operations over the whole batch: one affine warp (`grid_sample`) for crop, rotation, scale and flip, vectorized
colour operations, and a separable weighted sum of shifted views for blur. torchvision's transforms define what
each step means; the tests compare against them.

An augmentation draws its parameters (`draw`: a dict of per-sample tensors, first dimension the batch) apart from
applying them (`apply`), so that the processes of a distributed run can each draw the parameters of the whole
global batch from the shared stream (cheap) and apply only the rows of their own images.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from cl_runner.errors import ConfigError

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale
CROP_ATTEMPTS = 10  # RandomResizedCrop's tries at a box that fits before its central fallback


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to float32 in [0, 1]."""
    return images.float().div_(255.0)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images to the model's input range: mean 0.5, std 0.5 per channel, i.e. [-1, 1]."""
    return images.mul(2.0).sub_(1.0)


def scaled(u: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """U[0, 1) draws `u` moved to U[low, high)."""
    return u.mul(high - low).add_(low)


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


Params = dict[str, torch.Tensor]  # an augmentation's per-sample parameters, each [B, ...]


def rows_of(params: Params, rows: slice | torch.Tensor) -> Params:
    """The parameters of the samples `rows` (a slice or an index tensor)."""
    return {name: value[rows] for name, value in params.items()}


class Augment(ABC):
    """Base of the augmentations. Parameters come in two steps: `uniforms`, the stream's draws for n images (raw
    U[0, 1) tensors whose shapes depend on n only), then `params`, the per-sample parameters computed from them
    (tensor arithmetic only, no generator: the part of building a batch that `torch.compile` can fuse); `apply`
    uses them on uint8 images. `draw` does the first two; calling the object does all three."""

    def uniforms(self, n: int, generator: torch.Generator, device: torch.device) -> Params:
        """The draws for n images, every one from `generator` in a fixed order (none by default)."""
        return {}

    def params(self, uniforms: Params, size: tuple[int, int]) -> Params:
        """Per-sample parameters of images of `size` (height, width) from their `uniforms` (none by default)."""
        return {}

    @abstractmethod
    def apply(self, images: torch.Tensor, params: Params, sync_free: bool | None = None) -> torch.Tensor:
        """uint8 images [B, C, H, W] -> float views in [0, 1], with the parameters of these B images. `sync_free`:
        no data-dependent shapes (default: on an accelerator), as a compiled batch builder needs."""

    def draw(self, n: int, size: tuple[int, int], generator: torch.Generator, device: torch.device) -> Params:
        """Per-sample parameters of n images of `size`, drawn from `generator`."""
        return self.params(self.uniforms(n, generator, device), size)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(images, self.draw(len(images), images.shape[-2:], generator, images.device))


class NoAugment(Augment):
    """The positive is the clean image: only the conversion to [0, 1] (normalization comes after)."""

    def apply(self, images: torch.Tensor, params: Params, sync_free: bool | None = None) -> torch.Tensor:
        return to_unit(images)


class PadRotateScale(Augment):
    """Pad-rotate-scale (Guo et al. 2016, as in the study): resize side s to 2s, pad with zeros, rotate by
    U(-max_degrees, max_degrees), centre-crop `crop_ratio` x 2s, resize back to s.

    The resizes cancel and the padding only supplies the zero border that the warp's zero fill gives anyway,
    so the whole chain is one warp: output point w samples the input at R(-angle) (crop_ratio * w).
    """

    def __init__(self, max_degrees: float = 15.0, crop_ratio: float = 1.125):
        if max_degrees < 0 or crop_ratio <= 0:
            raise ConfigError("aug: max_degrees must be >= 0 and crop_ratio > 0")
        self.max_degrees = max_degrees
        self.crop_ratio = crop_ratio

    def uniforms(self, n, generator, device) -> Params:
        return {"degrees": torch.rand(n, generator=generator, device=device)}

    def params(self, uniforms, size) -> Params:
        return {"degrees": scaled(uniforms["degrees"], -self.max_degrees, self.max_degrees)}

    def apply(self, images: torch.Tensor, params: Params, sync_free: bool | None = None) -> torch.Tensor:
        return self.rotate_and_scale(to_unit(images), params["degrees"])

    def rotate_and_scale(self, images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
        """Counter-clockwise rotation by `degrees` [B] (torchvision's sense) and zoom-out by crop_ratio."""
        rad = torch.deg2rad(degrees)
        cos, sin = torch.cos(rad) * self.crop_ratio, torch.sin(rad) * self.crop_ratio
        zero = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        return warp(images, theta)


class SimCLRAugment(Augment):
    """SimCLR's augmentation (Chen et al. 2020, appendix A), composed as torchvision does: RandomResizedCrop,
    RandomHorizontalFlip, RandomApply(ColorJitter), RandomGrayscale, GaussianBlur. On one-channel images the
    colour steps reduce to brightness and contrast, as in torchvision. `color_strength` is SimCLR's s: it scales
    all four jitter amounts (0.8 s, 0.8 s, 0.8 s, 0.2 s); crop_scale[0] is the minimum crop area."""

    def __init__(self, crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3), flip_p=0.5, jitter_p=0.8,
                 brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, color_strength=1.0, grayscale_p=0.2,
                 blur_kernel=3, blur_sigma=(0.1, 2.0)):
        for key, value in (("crop_scale", crop_scale), ("crop_ratio", crop_ratio), ("blur_sigma", blur_sigma)):
            if not (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2 and
                    all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
                raise ConfigError(f"aug.{key}={value!r} is not allowed: aug.{key} must be [min, max], two numbers")
        if not (0 < crop_scale[0] <= crop_scale[1] <= 1) or not (0 < crop_ratio[0] <= crop_ratio[1]):
            raise ConfigError("aug: need 0 < crop_scale[0] <= crop_scale[1] <= 1 and "
                              "0 < crop_ratio[0] <= crop_ratio[1]")
        brightness, contrast, saturation, hue = (v * color_strength for v in (brightness, contrast, saturation, hue))
        if not 0 <= hue <= 0.5 or blur_kernel % 2 != 1:
            raise ConfigError("aug: hue x color_strength must lie in [0, 0.5] and blur_kernel must be odd")
        if not all(0 <= p <= 1 for p in (flip_p, jitter_p, grayscale_p)) or min(brightness, contrast, saturation) < 0:
            raise ConfigError(f"aug: flip_p, jitter_p and grayscale_p are probabilities in [0, 1] and the jitter "
                              f"amounts must be >= 0, got {flip_p}, {jitter_p}, {grayscale_p}")
        if not 0 < blur_sigma[0] <= blur_sigma[1]:
            raise ConfigError(f"aug: need 0 < blur_sigma[0] <= blur_sigma[1], got {list(blur_sigma)}")
        self.crop_scale, self.crop_ratio = tuple(crop_scale), tuple(crop_ratio)
        self.flip_p, self.jitter_p, self.grayscale_p = flip_p, jitter_p, grayscale_p
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.blur_kernel, self.blur_sigma = blur_kernel, tuple(blur_sigma)

    def uniforms(self, n, generator, device) -> Params:
        """In torchvision's order of the steps: crop box (area and aspect of `CROP_ATTEMPTS` tries, then the
        position), flip, jitter (applied, the four factors, the order), grayscale, blur sigma."""
        def rand(*shape):
            return torch.rand(*shape, generator=generator, device=device)
        return {"area": rand(n * CROP_ATTEMPTS), "aspect": rand(n * CROP_ATTEMPTS), "position": rand(n, 2),
                "flip": rand(n), "jitter": rand(n), "brightness": rand(n), "contrast": rand(n),
                "saturation": rand(n), "hue": rand(n), "order": rand(n, 4), "grayscale": rand(n), "sigma": rand(n)}

    def params(self, uniforms, size) -> Params:
        u = uniforms
        factors = torch.stack([scaled(u["brightness"], max(0.0, 1 - self.brightness), 1 + self.brightness),
                               scaled(u["contrast"], max(0.0, 1 - self.contrast), 1 + self.contrast),
                               scaled(u["saturation"], max(0.0, 1 - self.saturation), 1 + self.saturation),
                               scaled(u["hue"], -self.hue, self.hue)], dim=1)
        return {"boxes": self.crop_boxes(u["area"], u["aspect"], u["position"], *size),
                "flips": u["flip"] < self.flip_p, "jitter_applied": u["jitter"] < self.jitter_p,
                "jitter_factors": factors,
                "jitter_order": torch.argsort(u["order"], dim=1),  # a random permutation, as ColorJitter draws
                "grayscale": u["grayscale"] < self.grayscale_p,
                "sigma": scaled(u["sigma"], self.blur_sigma[0], self.blur_sigma[1])}

    def apply(self, images: torch.Tensor, params: Params, sync_free: bool | None = None) -> torch.Tensor:
        x = crop_resize_flip(to_unit(images), params["boxes"], params["flips"])
        x = apply_color_jitter(x, params["jitter_applied"], params["jitter_factors"], params["jitter_order"],
                               sync_free)
        if x.shape[1] == 3:  # one-channel images are their own grayscale
            x = torch.lerp(x, grayscale(x).expand_as(x), _per_sample(params["grayscale"].to(x.dtype)))
        return gaussian_blur(x, self.blur_kernel, params["sigma"])

    def crop_boxes(self, area_u: torch.Tensor, aspect_u: torch.Tensor, position_u: torch.Tensor, height: int,
                   width: int) -> torch.Tensor:
        """RandomResizedCrop.get_params for a batch of n: per sample, the first of `CROP_ATTEMPTS` tries of
        (area fraction, log-uniform aspect ratio), from the draws `area_u` and `aspect_u` [n * attempts], whose
        box fits; else the central box of the clamped ratio; placed by `position_u` [n, 2].
        Returns [n, 4] float (top, left, h, w) in pixels."""
        n = len(position_u)
        scale = scaled(area_u, *self.crop_scale).view(n, CROP_ATTEMPTS) * (height * width)
        log_lo, log_hi = math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])
        aspect = torch.exp(scaled(aspect_u, log_lo, log_hi)).view(n, CROP_ATTEMPTS)
        w = torch.sqrt(scale * aspect).round()
        h = torch.sqrt(scale / aspect).round()
        fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = torch.argmax(fits.int(), dim=1)  # first fitting attempt (0 when none fits)
        h, w = h.gather(1, first[:, None])[:, 0], w.gather(1, first[:, None])[:, 0]
        found = fits.any(dim=1)
        fallback_h, fallback_w = self._fallback_box(height, width)
        h = torch.where(found, h, torch.full_like(h, fallback_h))
        w = torch.where(found, w, torch.full_like(w, fallback_w))
        top = torch.where(found, torch.floor(position_u[:, 0] * (height - h + 1)), torch.floor((height - h) / 2))
        left = torch.where(found, torch.floor(position_u[:, 1] * (width - w + 1)), torch.floor((width - w) / 2))
        return torch.stack([top, left, h, w], dim=1)

    def _fallback_box(self, height: int, width: int) -> tuple[int, int]:
        in_ratio = width / height
        if in_ratio < self.crop_ratio[0]:
            return int(round(width / self.crop_ratio[0])), width
        if in_ratio > self.crop_ratio[1]:
            return height, int(round(height * self.crop_ratio[1]))
        return height, width


def crop_resize_flip(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Crop each image to its box (top, left, h, w) [B, 4], resize to the full side (bilinear, edge pixels
    repeated past the box as torchvision's resize does) and mirror it where `flips` [B] is set: one warp.

    The map is axis-aligned, so its sampling grid (normalized coordinates, align_corners=False) is built from
    one column and one row coordinate per sample, each clamped to the centres of the box's outer pixels."""
    n, _, height, width = images.shape
    top, left, h, w = (v[:, None] for v in boxes.unbind(1))
    cols = torch.arange(width, device=images.device, dtype=images.dtype).add_(0.5)  # pixel centres
    rows = torch.arange(height, device=images.device, dtype=images.dtype).add_(0.5)
    cols = torch.where(flips[:, None], width - cols, cols)
    x = (left + cols * (w / width)).clamp_(left + 0.5, left + w - 0.5).mul_(2 / width).sub_(1)  # [B, W]
    y = (top + rows * (h / height)).clamp_(top + 0.5, top + h - 0.5).mul_(2 / height).sub_(1)  # [B, H]
    grid = torch.stack([x[:, None, :].expand(n, height, width), y[:, :, None].expand(n, height, width)], dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def apply_color_jitter(images: torch.Tensor, applied: torch.Tensor, factors: torch.Tensor, order: torch.Tensor,
                       sync_free: bool | None = None) -> torch.Tensor:
    """Brightness, contrast, saturation and hue (columns of `factors`) in each sample's own `order`, for the
    samples where `applied` is set. On CPU each operation runs once per image, on the subset whose slot holds
    it; on an accelerator (or with `sync_free`) every image goes through every slot's operation and `where`
    keeps the chosen results: more arithmetic, but no subset sizes read back to the host."""
    if sync_free is None:
        sync_free = images.device.type != "cpu"
    ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
    if images.shape[1] == 1:
        ops = ops[:2]  # saturation and hue leave one-channel images unchanged (torchvision does the same)
    out = images.clone()
    for slot in range(4):
        for op_index, op in enumerate(ops):
            chosen = applied & (order[:, slot] == op_index)
            if sync_free:
                out = torch.where(_per_sample(chosen), op(out, factors[:, op_index]), out)
                continue
            idx = torch.nonzero(chosen).squeeze(1)
            if idx.numel():
                out.index_copy_(0, idx, op(out.index_select(0, idx), factors[idx, op_index]))
    return out


def _per_sample(factor: torch.Tensor) -> torch.Tensor:
    return factor.view(-1, 1, 1, 1)


def _blend(images: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """ratio * images + (1 - ratio) * other, clamped to [0, 1] (torchvision's _blend), as one fused lerp."""
    return torch.lerp(other, images, _per_sample(ratio)).clamp_(0, 1)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (images * _per_sample(factor)).clamp_(0, 1)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the mean luma of each image."""
    return _blend(images, mean_luma(images), factor)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with each image's own grayscale version."""
    return _blend(images, grayscale(images), factor)


def adjust_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by `shift` [B] turns (in [-0.5, 0.5]) in the HSV hexcone model, as torchvision does.

    A hue rotation keeps each pixel's max and chroma, so the result comes straight from RGB: channel n is
    v - c * clamp(min(k, 4 - k), 0, 1) with k = (n + 6 h') mod 6 (n = 5, 3, 1 for R, G, B). The hue's sector
    (red, green or blue largest, in torchvision's order of precedence) is picked with float masks and `lerp`,
    exact at weights 0 and 1: on CPU, boolean `where` is several times slower than float arithmetic."""
    r, g, b = images.unbind(1)
    val = images.amax(dim=1)
    chroma = val - images.amin(dim=1)
    safe = chroma.clamp_min(1e-12)  # gray pixels: chroma 0, so their hue does not matter
    red_max = torch.eq(val, r, out=torch.empty_like(val))
    green_max = torch.eq(val, g, out=torch.empty_like(val))
    hue6 = torch.lerp(torch.lerp((r - g).div_(safe).add_(4.0), (b - r).div_(safe).add_(2.0), green_max),
                      (g - b).div_(safe), red_max)
    hue6 += shift.view(-1, 1, 1) * 6
    sectors = torch.arange(5.0, 0.0, -2.0, device=images.device, dtype=images.dtype)  # n = 5, 3, 1
    k = hue6.unsqueeze(1) + sectors.view(1, 3, 1, 1)
    k -= torch.floor(k / 6).mul_(6)  # k mod 6, cheaper than torch.remainder
    triangle = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return torch.addcmul(val.unsqueeze(1), chroma.unsqueeze(1), triangle, value=-1.0)


def gaussian_blur(images: torch.Tensor, kernel: int, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma [B] and reflect padding (torchvision's GaussianBlur):
    along rows, then along columns, each pass a weighted sum of `kernel` shifted views of the padded batch
    (on CPU faster than a depthwise convolution with one group per image and channel)."""
    half = kernel // 2
    height, width = images.shape[-2:]
    taps = torch.arange(-half, half + 1, device=images.device, dtype=images.dtype)
    weights = torch.exp(-0.5 * (taps[None, :] / sigma[:, None]) ** 2)
    weights = (weights / weights.sum(dim=1, keepdim=True)).view(-1, 1, 1, 1, kernel)
    padded = F.pad(images, (half, half, half, half), mode="reflect")
    along_rows = padded[..., 0:width] * weights[..., 0]
    for tap in range(1, kernel):
        along_rows.addcmul_(padded[..., tap:tap + width], weights[..., tap])
    out = along_rows[..., 0:height, :] * weights[..., 0]
    for tap in range(1, kernel):
        out.addcmul_(along_rows[..., tap:tap + height, :], weights[..., tap])
    return out
