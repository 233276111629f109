"""Geometric operations: random resized crop, horizontal flip, rotations, the study's pad-rotate-scale and
cutout. Crop, flip and rotation resample through one warp (`grid_sample`) per batch; torchvision's transforms
define what each means and the tests compare against them."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cl_runner.data.augment.base import (Operation, Params, check_range, is_finite_number, per_sample, scaled,
                                         warp)
from cl_runner.errors import ConfigError

CROP_ATTEMPTS = 10  # RandomResizedCrop's tries at a box that fits before its central fallback


class RandomResizedCrop(Operation):
    """torchvision's RandomResizedCrop (SimCLR, Chen et al. 2020, appendix A): a box of a random area fraction in
    `scale` and log-uniform aspect ratio in `ratio`, resized bilinearly back to the image's own side, or to `size`
    x `size` pixels (multi-crop's smaller views, Caron et al. 2020; then always applied: p = 1)."""

    def __init__(self, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), size: int | None = None, p: float = 1.0):
        super().__init__(p)
        self.scale = check_range("scale", scale, 0.0, 1.0, open_low=True)
        self.ratio = check_range("ratio", ratio, 0.0, open_low=True)
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ConfigError(f"size={size!r} is not allowed: size must be null (the image's side) or pixels >= 1")
        if size is not None and p != 1:
            raise ConfigError(f"size={size} with p={p} is not allowed: a crop to another size applies to every "
                              "image (p: 1)")
        self.size = size

    def own_uniforms(self, n, shape, generator, device) -> Params:
        """The area and aspect of `CROP_ATTEMPTS` tries per image, then the box's position."""
        def rand(*size):
            return torch.rand(*size, generator=generator, device=device)
        return {"area": rand(n * CROP_ATTEMPTS), "aspect": rand(n * CROP_ATTEMPTS), "position": rand(n, 2)}

    def own_params(self, uniforms, size) -> Params:
        return {"boxes": self.crop_boxes(uniforms["area"], uniforms["aspect"], uniforms["position"], *size)}

    def transform(self, images, params, sync_free):
        return crop_resize_flip(images, params["boxes"], size=self.size)

    def fuse(self, following):
        if isinstance(following, HorizontalFlip) and self.p == 1:
            return CropResizeFlip(self, following)
        return None

    def crop_boxes(self, area_u: torch.Tensor, aspect_u: torch.Tensor, position_u: torch.Tensor, height: int,
                   width: int) -> torch.Tensor:
        """RandomResizedCrop.get_params for a batch of n: per sample, the first of `CROP_ATTEMPTS` tries of
        (area fraction, log-uniform aspect ratio), from the draws `area_u` and `aspect_u` [n * attempts], whose
        box fits; else the central box of the clamped ratio; placed by `position_u` [n, 2].
        Returns [n, 4] float (top, left, h, w) in pixels."""
        n = len(position_u)
        scale = scaled(area_u, *self.scale).view(n, CROP_ATTEMPTS) * (height * width)
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
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
        if in_ratio < self.ratio[0]:
            return int(round(width / self.ratio[0])), width
        if in_ratio > self.ratio[1]:
            return height, int(round(height * self.ratio[1]))
        return height, width


class HorizontalFlip(Operation):
    """Mirror left-right with probability p (torchvision's RandomHorizontalFlip; SimCLR flips with p = 0.5)."""

    def __init__(self, p: float = 0.5):
        super().__init__(p)

    def transform(self, images, params, sync_free):
        return images.flip(-1)


class CropResizeFlip(Operation):
    """A random resized crop followed by a horizontal flip, as one warp: what the two draw, in their order."""

    def __init__(self, crop: RandomResizedCrop, flip: HorizontalFlip):
        super().__init__(1.0)
        self.crop, self.flip = crop, flip

    def own_uniforms(self, n, shape, generator, device) -> Params:
        drawn = self.crop.uniforms(n, shape, generator, device)
        flip = self.flip.uniforms(n, shape, generator, device)
        return {**drawn, **({"flip": flip["applied"]} if "applied" in flip else {})}

    def own_params(self, uniforms, size) -> Params:
        params = self.crop.params(uniforms, size)
        if "flip" in uniforms:
            params["flips"] = uniforms["flip"] < self.flip.p
        return params

    def transform(self, images, params, sync_free):
        return crop_resize_flip(images, params["boxes"], params.get("flips", True), self.crop.size)  # p = 1: all


def crop_resize_flip(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor | bool = False,
                     size: int | None = None) -> torch.Tensor:
    """Crop each image to its box (top, left, h, w) [B, 4], resize to the full side or to `size` x `size`
    (bilinear, edge pixels repeated past the box as torchvision's resize does) and mirror it where `flips` [B] is
    set (True: every image): one warp.

    The map is axis-aligned, so its sampling grid (normalized coordinates, align_corners=False) is built from
    one column and one row coordinate per sample, each clamped to the centres of the box's outer pixels."""
    n, _, height, width = images.shape
    out_h, out_w = (height, width) if size is None else (size, size)
    top, left, h, w = (v[:, None] for v in boxes.unbind(1))
    cols = torch.arange(out_w, device=images.device, dtype=images.dtype).add_(0.5)  # output pixel centres
    rows = torch.arange(out_h, device=images.device, dtype=images.dtype).add_(0.5)
    if isinstance(flips, torch.Tensor):
        cols = torch.where(flips[:, None], out_w - cols, cols)
    elif flips:
        cols = out_w - cols
    x = (left + cols * (w / out_w)).clamp_(left + 0.5, left + w - 0.5).mul_(2 / width).sub_(1)  # [B, out_w]
    y = (top + rows * (h / out_h)).clamp_(top + 0.5, top + h - 0.5).mul_(2 / height).sub_(1)  # [B, out_h]
    grid = torch.stack([x[:, None, :].expand(n, out_h, out_w), y[:, :, None].expand(n, out_h, out_w)], dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


class Rotation(Operation):
    """Rotation by an angle uniform in `degrees` [min, max], counter-clockwise about the centre (torchvision's
    rotate), bilinear, the corners filled with zeros; `zoom` > 1 zooms out by that factor in the same warp."""

    def __init__(self, degrees=(-15.0, 15.0), zoom: float = 1.0, p: float = 1.0):
        super().__init__(p)
        self.degrees = check_range("degrees", degrees)
        if not (is_finite_number(zoom) and zoom > 0):
            raise ConfigError(f"zoom={zoom!r} is not allowed: zoom must be a number > 0")
        self.zoom = zoom

    def own_uniforms(self, n, shape, generator, device) -> Params:
        return {"degrees": torch.rand(n, generator=generator, device=device)}

    def own_params(self, uniforms, size) -> Params:
        return {"degrees": scaled(uniforms["degrees"], *self.degrees)}

    def transform(self, images, params, sync_free):
        return self.rotate(images, params["degrees"])

    def rotate(self, images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
        """Each image rotated by its `degrees` [B] and zoomed out by `zoom`: output point w samples the input
        at R(-angle) (zoom * w)."""
        rad = torch.deg2rad(degrees)
        cos, sin = torch.cos(rad) * self.zoom, torch.sin(rad) * self.zoom
        zero = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        return warp(images, theta)


class PadRotateScale(Rotation):
    """Pad-rotate-scale (Guo et al. 2016, as in the study): resize side s to 2s, pad with zeros, rotate by
    U(-max_degrees, max_degrees), centre-crop `crop_ratio` x 2s, resize back to s.

    The resizes cancel and the padding only supplies the zero border that the warp's zero fill gives anyway,
    so the whole chain is one rotation that zooms out by crop_ratio."""

    def __init__(self, max_degrees: float = 15.0, crop_ratio: float = 1.125, p: float = 1.0):
        if not (is_finite_number(max_degrees) and max_degrees >= 0):
            raise ConfigError(f"max_degrees={max_degrees!r} is not allowed: max_degrees must be a number >= 0")
        if not (is_finite_number(crop_ratio) and crop_ratio > 0):
            raise ConfigError(f"crop_ratio={crop_ratio!r} is not allowed: crop_ratio must be a number > 0")
        super().__init__((-max_degrees, max_degrees), zoom=crop_ratio, p=p)


class Rotate90(Operation):
    """Rotation by a multiple of 90 degrees drawn uniformly from `multiples` (SimCLR's Figure 4: 90, 180 or 270
    degrees), counter-clockwise, exact (no resampling); square images only."""

    def __init__(self, multiples=(1, 2, 3), p: float = 1.0):
        super().__init__(p)
        if not (isinstance(multiples, (list, tuple)) and multiples and
                all(isinstance(m, int) and not isinstance(m, bool) and 0 <= m <= 3 for m in multiples)):
            raise ConfigError(f"multiples={multiples!r} is not allowed: multiples must be a non-empty list of "
                              "0, 1, 2 or 3 (quarter turns)")
        self.multiples = tuple(multiples)

    def own_uniforms(self, n, shape, generator, device) -> Params:
        return {"turns": torch.rand(n, generator=generator, device=device)}

    def own_params(self, uniforms, size) -> Params:
        choices = torch.tensor(self.multiples, device=uniforms["turns"].device)
        pick = (uniforms["turns"] * len(self.multiples)).long().clamp_max_(len(self.multiples) - 1)
        return {"turns": choices[pick]}

    def transform(self, images, params, sync_free):
        if images.shape[-1] != images.shape[-2]:
            raise ConfigError(f"rotate90 needs square images, not {images.shape[-2]}x{images.shape[-1]}")
        out = images
        for turns in sorted(set(self.multiples) - {0}):
            out = torch.where(per_sample(params["turns"] == turns), torch.rot90(images, turns, dims=(-2, -1)), out)
        return out


class Cutout(Operation):
    """Cutout (DeVries and Taylor 2017; SimCLR's Figure 4): a square of side `size` x the image's shorter side,
    centred on a uniformly drawn pixel and clipped at the border, filled with `fill`."""

    def __init__(self, size: float = 0.5, fill: float = 0.0, p: float = 1.0):
        super().__init__(p)
        if not (is_finite_number(size) and 0 < size <= 1):
            raise ConfigError(f"size={size!r} is not allowed: size must be a fraction of the side in (0, 1]")
        if not (is_finite_number(fill) and 0 <= fill <= 1):
            raise ConfigError(f"fill={fill!r} is not allowed: fill must be a value in [0, 1]")
        self.size, self.fill = float(size), float(fill)

    def own_uniforms(self, n, shape, generator, device) -> Params:
        return {"centre": torch.rand(n, 2, generator=generator, device=device)}

    def side(self, height: int, width: int) -> int:
        """The erased square's side in pixels."""
        return max(1, round(self.size * min(height, width)))

    def own_params(self, uniforms, size) -> Params:
        """The erased square's first row and column [B, 2], before clipping at the border."""
        height, width = size
        centre = torch.floor(uniforms["centre"] * torch.tensor([height, width], device=uniforms["centre"].device))
        return {"corner": centre - self.side(height, width) // 2}

    def transform(self, images, params, sync_free):
        height, width = images.shape[-2:]
        side = self.side(height, width)
        rows = torch.arange(height, device=images.device, dtype=params["corner"].dtype)
        cols = torch.arange(width, device=images.device, dtype=params["corner"].dtype)
        top, left = params["corner"][:, :1], params["corner"][:, 1:]
        inside_rows = (rows >= top) & (rows < top + side)  # [B, H]
        inside_cols = (cols >= left) & (cols < left + side)  # [B, W]
        erased = (inside_rows[:, :, None] & inside_cols[:, None, :]).unsqueeze(1)
        return images.masked_fill(erased, self.fill)
