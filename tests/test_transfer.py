"""Images converted to another encoder's input shape (cl-eval's transfer setting), against PIL's conversions."""
import numpy as np
import pytest
import torch
from PIL import Image

from cl_runner.data.datasets import ImageSet, Splits
from cl_runner.data.transfer import conformed, conformed_images


def test_grey_to_colour_repeats_and_colour_to_grey_is_pil_luma():
    grey = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    colour = conformed_images(grey, (3, 8, 8))
    assert colour.dtype == torch.uint8 and all(torch.equal(colour[:, c:c + 1], grey) for c in range(3))
    rgb = torch.randint(0, 256, (3, 3, 5, 7), dtype=torch.uint8)
    ours = conformed_images(rgb, (1, 5, 7))
    for image, converted in zip(rgb, ours):
        pil = np.asarray(Image.fromarray(image.permute(1, 2, 0).numpy(), "RGB").convert("L"))
        assert np.abs(converted[0].numpy().astype(int) - pil.astype(int)).max() <= 1  # PIL rounds in fixed point


def test_resizing_matches_torch_bilinear_and_keeps_the_shape_when_it_fits():
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    assert conformed_images(images, (1, 28, 28)) is images
    grown = conformed_images(images, (3, 32, 32))
    expected = torch.nn.functional.interpolate(images.float(), size=(32, 32), mode="bilinear", align_corners=False)
    assert grown.shape == (2, 3, 32, 32) and torch.equal(grown[:, :1], expected.round().clamp(0, 255).byte())
    constant = torch.full((1, 3, 64, 64), 77, dtype=torch.uint8)
    assert torch.equal(conformed_images(constant, (3, 32, 32)), torch.full((1, 3, 32, 32), 77, dtype=torch.uint8))
    with pytest.raises(ValueError, match="images of 2 channels cannot be converted to 3"):
        conformed_images(torch.zeros(1, 2, 4, 4, dtype=torch.uint8), (3, 4, 4))


def test_every_split_is_converted_and_the_probe_set_stays_the_training_set():
    train = ImageSet(torch.zeros(5, 1, 28, 28, dtype=torch.uint8), torch.arange(5), ["a"] * 5)
    test = ImageSet(torch.zeros(3, 1, 28, 28, dtype=torch.uint8), torch.arange(3), ["a"] * 5)
    data = conformed(Splits(train, test, train), (3, 32, 32))
    assert data.probe is data.train and data.val is None
    assert data.train.images.shape == (5, 3, 32, 32) and data.test.images.shape == (3, 3, 32, 32)
    assert torch.equal(data.test.labels, test.labels)
