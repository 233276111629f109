"""The presets as compositions (issue #30): `aug=simclr`, `aug=guo` and `aug=none` draw, from the same stream,
exactly the pixels the fixed classes of main before the compositions drew (tests/reference_augment.py, that
module as it was), so every result in bench/results/ stays reproducible and paired comparisons hold across
versions."""
import pytest
import torch

import reference_augment as old
from cl_runner.data.datasets import ImageSet
from cl_runner.data.pairing import MultiViewSampler, PairSampler, TripletSampler
from cl_runner.randomness import TrainingStreams

from conftest import preset

PRESETS = {"simclr": old.SimCLRAugment, "guo": old.PadRotateScale, "none": old.NoAugment}


def images(channels: int, side: int, n: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(channels * 100 + side)
    return torch.randint(0, 256, (n, channels, side, side), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("sync_free", [False, True], ids=["subsets", "sync_free"])
@pytest.mark.parametrize("channels,side", [(1, 28), (3, 32)])
@pytest.mark.parametrize("name", PRESETS)
def test_a_preset_draws_the_same_pixels_and_as_many_numbers_as_before(name, channels, side, sync_free):
    x = images(channels, side)
    ours, before = preset(name).view(1), PRESETS[name]()
    for seed in range(3):
        g_ours, g_before = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        new = ours.apply(x, ours.draw(len(x), tuple(x.shape[1:]), g_ours, x.device), sync_free)
        reference = before.apply(x, before.draw(len(x), (side, side), g_before, x.device), sync_free)
        assert torch.equal(new, reference)
        assert torch.equal(torch.rand(3, generator=g_ours), torch.rand(3, generator=g_before))  # the stream's place


class Before:
    """An old augmentation behind the sampler's new calls: what main's samplers drew with it."""

    def __init__(self, augmentation):
        self.augmentation = augmentation

    def check_views(self, augmented, pairing):
        pass

    def view(self, index):
        return self

    def uniforms(self, n, shape, generator, device):
        return [self.augmentation.uniforms(n, generator, device)]

    def params(self, uniforms, size):
        return [self.augmentation.params(uniforms[0], size)]

    def apply(self, images, params, sync_free=None):
        return self.augmentation.apply(images, params[0], sync_free)

    def __call__(self, images, generator):
        return self.augmentation(images, generator)


SAMPLERS = {"pair": PairSampler, "triplet-fixed-views": lambda: TripletSampler(fixed_views=True),
            "multiview": lambda: MultiViewSampler(views=3)}


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("name", ["simclr", "guo"])
def test_the_samplers_build_the_same_batches_as_before(name, sampler):
    train = ImageSet(images(3, 32, n=300), torch.arange(300) % 5, list("abcde"))
    built = []
    for augmentation in (preset(name), Before(PRESETS[name]())):
        tuples = SAMPLERS[sampler]()
        tuples.setup(train, augmentation, TrainingStreams.from_seed(0))
        streams = TrainingStreams.from_seed(1)
        order = torch.randperm(tuples.tuples_per_epoch(), generator=streams.order)
        built.append([tuples.batch(order[i * 64:(i + 1) * 64], streams).images for i in range(3)])
    assert all(torch.equal(a, b) for a, b in zip(*built))
