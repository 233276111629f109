"""Filters and noise: SimCLR's Gaussian blur, Sobel filtering and additive Gaussian noise (Chen et al. 2020,
Figure 4), each a few tensor operations over the whole batch."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cl_runner.data.augment.base import Operation, Params, check_range, per_sample, scaled
from cl_runner.errors import ConfigError

def simclr_kernel(side: int) -> int:
    """SimCLR's blur kernel: 10% of the image side, made odd (Chen et al. 2020, appendix A: 23 px at 224)."""
    return 2 * (side // 10 // 2) + 1


class GaussianBlur(Operation):
    """Gaussian blur with probability p, sigma uniform in `sigma` per image (SimCLR, Chen et al. 2020, appendix
    A), reflect padding as torchvision's GaussianBlur. `kernel`: its side in pixels (odd), or null for SimCLR's
    10% of the image side."""

    def __init__(self, sigma=(0.1, 2.0), kernel: int | None = None, p: float = 1.0):
        super().__init__(p)
        self.sigma = check_range("sigma", sigma, 0.0, open_low=True)
        if kernel is not None and not (isinstance(kernel, int) and not isinstance(kernel, bool) and kernel >= 1
                                       and kernel % 2 == 1):
            raise ConfigError(f"kernel={kernel!r} is not allowed: kernel must be null (10% of the side) or an odd "
                              "integer >= 1")
        self.kernel = kernel

    def own_uniforms(self, n, shape, generator, device) -> Params:
        return {"sigma": torch.rand(n, generator=generator, device=device)}

    def own_params(self, uniforms, size) -> Params:
        return {"sigma": scaled(uniforms["sigma"], *self.sigma)}

    def transform(self, images, params, sync_free):
        kernel = self.kernel or simclr_kernel(min(images.shape[-2:]))
        return gaussian_blur(images, kernel, params["sigma"])


def gaussian_blur(images: torch.Tensor, kernel: int, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma [B] and reflect padding (torchvision's GaussianBlur):
    along rows, then along columns, each pass a weighted sum of `kernel` shifted views of the padded batch
    (on CPU faster than a depthwise convolution with one group per image and channel)."""
    half = kernel // 2
    height, width = images.shape[-2:]
    if half >= min(height, width):
        raise ConfigError(f"a blur kernel of {kernel} px is too large for images of {height}x{width}")
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


class GaussianNoise(Operation):
    """Additive Gaussian noise (SimCLR's Figure 4): x + sigma * N(0, 1) per pixel, sigma uniform in `std` per
    image, clamped to [0, 1]. The paper gives no noise level; [0, 0.2] of the value range is ours."""

    def __init__(self, std=(0.0, 0.2), p: float = 1.0):
        super().__init__(p)
        self.std = check_range("std", std, 0.0)

    def own_uniforms(self, n, shape, generator, device) -> Params:
        return {"std": torch.rand(n, generator=generator, device=device),
                "noise": torch.randn(n, *shape, generator=generator, device=device)}

    def own_params(self, uniforms, size) -> Params:
        return {"std": scaled(uniforms["std"], *self.std), "noise": uniforms["noise"]}

    def transform(self, images, params, sync_free):
        return torch.addcmul(images, params["noise"], per_sample(params["std"])).clamp_(0, 1)


class Sobel(Operation):
    """Sobel filtering (SimCLR's Figure 4): per channel, the magnitude of the 3x3 Sobel gradients (edge pixels
    repeated past the border), scaled so that each image's strongest edge is 1 (a flat image stays 0)."""

    def transform(self, images, params, sync_free):
        """The 3x3 kernels' separable form: a difference of the neighbours along one axis, smoothed (1, 2, 1)
        along the other, on views of the padded batch (on CPU far faster than a one-channel convolution)."""
        height, width = images.shape[-2:]
        padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
        across = padded[..., 2:] - padded[..., :-2]  # [B, C, H + 2, W]
        down = padded[..., 2:, :] - padded[..., :-2, :]  # [B, C, H, W + 2]
        gx = torch.add(across[..., 0:height, :], across[..., 2:, :]).add_(across[..., 1:height + 1, :], alpha=2)
        gy = torch.add(down[..., 0:width], down[..., 2:]).add_(down[..., 1:width + 1], alpha=2)
        magnitude = torch.hypot(gx, gy)
        strongest = magnitude.amax(dim=(1, 2, 3), keepdim=True).clamp_min_(1e-12)
        return magnitude.div_(strongest)
