"""A data set's images in the shape an encoder trained on another took (the transfer setting of `cl-eval`): grey
images repeated to three channels, colour images to one by ITU-R BT.601 luma (PIL's "L" conversion), and every
image resized to the encoder's side (bilinear, antialiased when shrinking, as torchvision's Resize on tensors)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cl_runner.data.datasets import ImageSet, Splits

LUMA = (0.299, 0.587, 0.114)  # BT.601 weights of R, G, B


def conformed_images(images: torch.Tensor, shape: tuple[int, int, int], chunk: int = 4096) -> torch.Tensor:
    """uint8 `images` [N, C, H, W] as uint8 [N, *shape] (channels, height, width), a chunk at a time."""
    channels, height, width = shape
    if tuple(images.shape[1:]) == tuple(shape):
        return images
    if images.shape[1] not in (1, 3) or channels not in (1, 3):
        raise ValueError(f"images of {images.shape[1]} channels cannot be converted to {channels}")
    out = []
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].float()
        if x.shape[1] == 1 and channels == 3:
            x = x.repeat(1, 3, 1, 1)
        elif x.shape[1] == 3 and channels == 1:
            x = (x * x.new_tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
        if x.shape[2:] != (height, width):
            x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False,
                              antialias=height < x.shape[2] or width < x.shape[3])
        out.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


def conformed(data: Splits, shape: tuple[int, int, int]) -> Splits:
    """Every split of `data` with its images in `shape` (see `conformed_images`)."""
    def one(split: ImageSet | None) -> ImageSet | None:
        return None if split is None else ImageSet(conformed_images(split.images, shape), split.labels,
                                                   split.classes)

    train = one(data.train)
    return Splits(train, one(data.test), train if data.probe is data.train else one(data.probe), one(data.val))
