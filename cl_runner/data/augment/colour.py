"""Colour operations: SimCLR's colour jitter and random grayscale, and BYOL's solarization, vectorized over the
batch as torchvision defines them (ColorJitter, RandomGrayscale, solarize). On one-channel images the jitter
reduces to brightness and contrast, and grayscale to nothing, as in torchvision."""
from __future__ import annotations

import torch

from cl_runner.data.augment.base import Operation, Params, grayscale, is_finite_number, mean_luma, per_sample, scaled
from cl_runner.errors import ConfigError


class ColorJitter(Operation):
    """torchvision's ColorJitter applied with probability p (SimCLR, Chen et al. 2020, appendix A: p = 0.8):
    brightness, contrast, saturation and hue in a random order per image. `strength` is SimCLR's colour-distortion
    strength s, scaling all four amounts (0.8 s, 0.8 s, 0.8 s, 0.2 s at the defaults)."""

    def __init__(self, brightness: float = 0.8, contrast: float = 0.8, saturation: float = 0.8, hue: float = 0.2,
                 strength: float = 1.0, p: float = 0.8):
        super().__init__(p)
        amounts = (brightness, contrast, saturation, hue, strength)
        if not all(is_finite_number(v) and v >= 0 for v in amounts):
            raise ConfigError(f"brightness, contrast, saturation, hue and strength must be numbers >= 0, got "
                              f"{list(amounts)}")
        self.brightness, self.contrast, self.saturation, self.hue = (v * strength for v in amounts[:4])
        if self.hue > 0.5:
            raise ConfigError(f"hue x strength={self.hue:g} is not allowed: it must lie in [0, 0.5]")

    def own_uniforms(self, n, shape, generator, device) -> Params:
        """The four factors, then the order (a random permutation, as ColorJitter draws)."""
        def rand(*size):
            return torch.rand(*size, generator=generator, device=device)
        return {"brightness": rand(n), "contrast": rand(n), "saturation": rand(n), "hue": rand(n),
                "order": rand(n, 4)}

    def own_params(self, uniforms, size) -> Params:
        u = uniforms
        factors = torch.stack([scaled(u["brightness"], max(0.0, 1 - self.brightness), 1 + self.brightness),
                               scaled(u["contrast"], max(0.0, 1 - self.contrast), 1 + self.contrast),
                               scaled(u["saturation"], max(0.0, 1 - self.saturation), 1 + self.saturation),
                               scaled(u["hue"], -self.hue, self.hue)], dim=1)
        return {"factors": factors, "order": torch.argsort(u["order"], dim=1)}

    def apply(self, images, params, sync_free=False):
        if "applied" not in params:
            return self.transform(images, params, sync_free)
        return apply_color_jitter(images, params["applied"], params["factors"], params["order"], sync_free)

    def transform(self, images, params, sync_free):
        every = torch.ones(len(images), dtype=torch.bool, device=images.device)
        return apply_color_jitter(images, every, params["factors"], params["order"], sync_free)


class RandomGrayscale(Operation):
    """torchvision's RandomGrayscale (SimCLR: p = 0.2): the image's luma in every channel."""

    def __init__(self, p: float = 0.2):
        super().__init__(p)

    def apply(self, images, params, sync_free=False):
        if images.shape[1] == 1:  # one-channel images are their own grayscale
            return images
        if "applied" not in params:
            return self.transform(images, params, sync_free)
        gray = grayscale(images).expand_as(images)
        return torch.lerp(images, gray, per_sample(params["applied"].to(images.dtype)))  # exact at weights 0, 1

    def transform(self, images, params, sync_free):
        return grayscale(images).expand_as(images).contiguous()


class Solarize(Operation):
    """Solarization (BYOL, Grill et al. 2020, appendix B: p = 0 and 0.2 for its two views): every pixel value at
    or above `threshold` is inverted (x -> 1 - x), as torchvision's solarize."""

    def __init__(self, threshold: float = 0.5, p: float = 0.2):
        super().__init__(p)
        if not (is_finite_number(threshold) and 0 <= threshold <= 1):
            raise ConfigError(f"threshold={threshold!r} is not allowed: threshold must be a value in [0, 1]")
        self.threshold = float(threshold)

    def transform(self, images, params, sync_free):
        return torch.where(images >= self.threshold, 1.0 - images, images)


def apply_color_jitter(images: torch.Tensor, applied: torch.Tensor, factors: torch.Tensor, order: torch.Tensor,
                       sync_free: bool = False) -> torch.Tensor:
    """Brightness, contrast, saturation and hue (columns of `factors`) in each sample's own `order`, for the
    samples where `applied` is set. On CPU each operation runs once per image, on the subset whose slot holds
    it; `sync_free` (an accelerator, or compiled), every image goes through every slot's operation and `where`
    keeps the chosen results: more arithmetic, but no subset sizes read back to the host."""
    ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
    if images.shape[1] == 1:
        ops = ops[:2]  # saturation and hue leave one-channel images unchanged (torchvision does the same)
    out = images.clone()
    for slot in range(4):
        for op_index, op in enumerate(ops):
            chosen = applied & (order[:, slot] == op_index)
            if sync_free:
                out = torch.where(per_sample(chosen), op(out, factors[:, op_index]), out)
                continue
            idx = torch.nonzero(chosen).squeeze(1)
            if idx.numel():
                out.index_copy_(0, idx, op(out.index_select(0, idx), factors[idx, op_index]))
    return out


def _blend(images: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """ratio * images + (1 - ratio) * other, clamped to [0, 1] (torchvision's _blend), as one fused lerp."""
    return torch.lerp(other, images, per_sample(ratio)).clamp_(0, 1)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (images * per_sample(factor)).clamp_(0, 1)


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
