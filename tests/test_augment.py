"""Batched augmentation against its definition: torchvision's transforms are the reference."""
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from torchvision import transforms

from cl_runner.data import augment as A
from cl_runner.data.datasets import read_digits

AUGMENTATIONS = [A.NoAugment(), A.PadRotateScale(), A.SimCLRAugment()]


def images(channels: int, n: int = 16, side: int = 28, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, side, side), generator=g, dtype=torch.uint8)


def digits(n: int = 32) -> torch.Tensor:
    """Real, smooth images (scikit-learn's digits at 28x28) for interpolation comparisons."""
    return read_digits("test").images[:n]


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("aug", AUGMENTATIONS, ids=lambda a: type(a).__name__)
@pytest.mark.parametrize("channels,side", [(1, 28), (3, 32)])
def test_shape_dtype_range(aug, channels, side):
    x = images(channels, side=side)
    out = aug(x, seeded(0))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("aug", AUGMENTATIONS, ids=lambda a: type(a).__name__)
def test_reproducible_under_a_seed(aug):
    x = images(3, side=32)
    assert torch.equal(aug(x, seeded(7)), aug(x, seeded(7)))
    if not isinstance(aug, A.NoAugment):
        assert not torch.equal(aug(x, seeded(7)), aug(x, seeded(8)))


def test_none_is_the_unit_scaled_image_and_normalize_is_mean_std_half():
    x = images(1)
    assert torch.equal(A.NoAugment()(x, seeded(0)), x.float() / 255)
    unit = x.float() / 255
    assert torch.allclose(A.normalize(unit), TF.normalize(unit, [0.5], [0.5]))


def test_warp_grid_equals_torch_affine_grid():
    x = torch.rand(6, 3, 17, 23, generator=seeded(0))
    theta = torch.randn(6, 2, 3, generator=seeded(1))
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    reference = torch.nn.functional.grid_sample(x, grid, align_corners=False)
    assert torch.allclose(A.warp(x, theta), reference, atol=1e-5)


def test_grayscale_and_mean_luma_are_the_itu_601_weighted_sums():
    x = torch.rand(4, 3, 5, 7, generator=seeded(0))
    assert torch.allclose(A.grayscale(x), TF.rgb_to_grayscale(x), atol=1e-6)
    assert torch.allclose(A.mean_luma(x).flatten(), TF.rgb_to_grayscale(x).mean(dim=(1, 2, 3)), atol=1e-6)
    one_channel = x[:, :1]
    assert torch.equal(A.mean_luma(one_channel).flatten(), one_channel.mean(dim=(1, 2, 3)))


@pytest.mark.parametrize("angle", [-15.0, -4.5, 10.0])
def test_rotation_equals_torchvision_rotate(angle):
    x = A.to_unit(images(3, n=4, side=32))
    ours = A.PadRotateScale(crop_ratio=1.0).rotate_and_scale(x, torch.full((4,), angle))
    reference = TF.rotate(x, angle, interpolation=TF.InterpolationMode.BILINEAR)
    assert torch.allclose(ours, reference, atol=1e-5)


@pytest.mark.parametrize("angle", [-13.0, 7.0])
def test_pad_rotate_scale_matches_the_torchvision_chain(angle):
    """SPEC.md: resize 28 -> 56, pad 18 -> 92, rotate, centre-crop 63, resize -> 28. Our single warp skips the
    intermediate resamplings (and the final antialiasing), so it agrees within interpolation error, and
    better than any other angle or zoom would."""
    x = A.to_unit(digits())
    chain = TF.resize(x, [56, 56], antialias=True)
    chain = TF.pad(chain, [18, 18, 18, 18], fill=0)
    chain = TF.rotate(chain, angle, interpolation=TF.InterpolationMode.BILINEAR)
    chain = TF.center_crop(chain, [63, 63])
    chain = TF.resize(chain, [28, 28], antialias=True)

    def error(degrees: float, crop_ratio: float = 1.125) -> float:
        ours = A.PadRotateScale(crop_ratio=crop_ratio).rotate_and_scale(x, torch.full((len(x),), degrees))
        return (ours - chain).abs().mean().item()

    assert error(angle) < 0.021
    assert error(angle) < min(error(angle - 3), error(angle + 3))
    assert error(-angle) > 0.05 and error(angle, crop_ratio=1.0) > 0.05
    zoomed = A.PadRotateScale().rotate_and_scale(x, torch.zeros(len(x)))
    assert zoomed[..., 0, :].max() == 0 and zoomed[..., :, -1].max() == 0  # the zoom-out leaves a black border


def test_pad_rotate_scale_draws_angles_uniformly():
    aug = A.PadRotateScale(max_degrees=15.0)
    x = A.to_unit(digits(1)).expand(400, -1, -1, -1)
    g = seeded(3)
    drawn = A.scaled(torch.rand(400, generator=g), -15.0, 15.0)
    assert torch.allclose(aug(digits(1).expand(400, -1, -1, -1), seeded(3)), aug.rotate_and_scale(x, drawn))
    assert drawn.min() >= -15 and drawn.max() <= 15 and abs(drawn.mean()) < 1.5


@pytest.mark.parametrize("box", [(3, 5, 20, 14), (0, 0, 32, 32), (10, 12, 22, 20), (0, 0, 1, 1), (31, 0, 1, 32)])
def test_crop_resize_flip_equals_torchvision(box):
    x = A.to_unit(images(3, n=4, side=32))
    flips = torch.tensor([False, True, False, True])
    ours = A.crop_resize_flip(x, torch.tensor([box] * 4, dtype=torch.float32), flips)
    reference = TF.resized_crop(x, *box, [32, 32], antialias=True)
    reference[flips] = TF.hflip(reference[flips])
    assert torch.allclose(ours, reference, atol=1e-5)


def test_crop_boxes_follow_torchvisions_distribution():
    n = 20000
    ours = A.SimCLRAugment().draw(n, (32, 32), seeded(0), torch.device("cpu"))["boxes"].numpy()
    torch.manual_seed(0)
    crop = transforms.RandomResizedCrop(32, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
    ref = np.array([crop.get_params(torch.empty(1, 32, 32), crop.scale, crop.ratio) for _ in range(n)], float)
    for name, column in [("area", lambda b: b[:, 2] * b[:, 3]), ("aspect", lambda b: b[:, 3] / b[:, 2]),
                         ("top", lambda b: b[:, 0]), ("left", lambda b: b[:, 1])]:
        assert ks_statistic(column(ours), column(ref)) < 0.025, name
    assert (ours[:, 0] + ours[:, 2] <= 32).all() and (ours[:, 1] + ours[:, 3] <= 32).all()
    assert (ours[:, 2:] >= 1).all()


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov distance between empirical distributions."""
    grid = np.union1d(a, b)
    cdf = lambda s: np.searchsorted(np.sort(s), grid, side="right") / len(s)  # noqa: E731
    return float(np.abs(cdf(a) - cdf(b)).max())


def simclr_only(**kw) -> A.SimCLRAugment:
    """SimCLR's augmentation with every step off except those named (crop to the full image, sigma ~ 0)."""
    base = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0,
                blur_sigma=(0.01, 0.01))
    return A.SimCLRAugment(**{**base, **kw})


def test_flip_and_grayscale_rates():
    x = images(3, n=4000, side=8)
    unit = A.to_unit(x)
    flipped = simclr_only(flip_p=0.5)(x, seeded(1))
    is_flipped = (flipped - unit.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert (flipped - unit).abs().amax(dim=(1, 2, 3))[~is_flipped].max() < 1e-5  # the rest are untouched
    assert abs(is_flipped.float().mean().item() - 0.5) < 0.03
    gray = simclr_only(grayscale_p=0.2)(x, seeded(2))
    is_gray = (gray - gray[:, :1]).abs().amax(dim=(1, 2, 3)) < 1e-6
    assert abs(is_gray.float().mean().item() - 0.2) < 0.03
    assert torch.allclose(gray[is_gray], A.grayscale(unit[is_gray]).expand(-1, 3, -1, -1), atol=1e-6)


@pytest.mark.parametrize("name,factor", [("brightness", 0.4), ("brightness", 1.6), ("contrast", 0.3),
                                         ("contrast", 1.7), ("saturation", 0.2), ("saturation", 1.8),
                                         ("hue", -0.2), ("hue", 0.13), ("hue", 0.5)])
def test_colour_ops_equal_torchvision(name, factor):
    x = A.to_unit(images(3, n=6, side=16))
    ours = getattr(A, f"adjust_{name}")(x, torch.full((6,), factor))
    reference = getattr(TF, f"adjust_{name}")(x, factor)
    assert torch.allclose(ours, reference, atol=1e-5)


@pytest.mark.parametrize("sync_free", [False, True], ids=["subsets", "sync_free"])
def test_color_jitter_equals_torchvision_in_the_drawn_order(sync_free):
    aug = A.SimCLRAugment()
    x = A.to_unit(images(3, n=64, side=8))
    params = aug.draw(64, (8, 8), seeded(4), torch.device("cpu"))
    applied, factors, order = params["jitter_applied"], params["jitter_factors"], params["jitter_order"]
    ours = A.apply_color_jitter(x, applied, factors, order, sync_free=sync_free)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i in range(64):
        expected = x[i]
        if applied[i]:
            for op_index in order[i].tolist():
                expected = ops[op_index](expected, factors[i, op_index].item())
        assert torch.allclose(ours[i], expected, atol=1e-5), i
    assert abs(applied.float().mean().item() - 0.8) < 0.15
    assert factors[:, :3].min() >= 0.2 and factors[:, :3].max() <= 1.8 and factors[:, 3].abs().max() <= 0.2
    assert sorted(order[0].tolist()) == [0, 1, 2, 3]


def test_one_channel_jitter_is_brightness_and_contrast_only():
    x = A.to_unit(images(1, n=8, side=8))
    applied = torch.ones(8, dtype=torch.bool)
    factors = torch.tensor([[1.0, 1.0, 0.0, 0.5]] * 8)  # saturation 0 and a hue shift: no effect on gray
    order = torch.tensor([[2, 3, 0, 1]] * 8)
    assert torch.allclose(A.apply_color_jitter(x, applied, factors, order), x)


@pytest.mark.parametrize("sigma", [0.1, 0.7, 2.0])
def test_gaussian_blur_equals_torchvision(sigma):
    x = A.to_unit(images(3, n=3, side=12))
    ours = A.gaussian_blur(x, 3, torch.full((3,), sigma))
    assert torch.allclose(ours, TF.gaussian_blur(x, [3, 3], [sigma, sigma]), atol=1e-6)


def test_gaussian_blur_uses_each_samples_sigma():
    x = A.to_unit(images(1, n=2, side=12))
    sigma = torch.tensor([0.3, 1.9])
    ours = A.gaussian_blur(x, 3, sigma)
    for i in range(2):
        assert torch.allclose(ours[i], TF.gaussian_blur(x[i], [3, 3], [sigma[i].item()] * 2), atol=1e-6)


def test_hue_of_gray_pixels_is_left_alone_and_a_half_turn_maps_red_to_cyan():
    gray = torch.full((1, 3, 2, 2), 0.4)
    assert torch.equal(A.adjust_hue(gray, torch.tensor([0.3])), gray)
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    assert torch.allclose(A.adjust_hue(red, torch.tensor([0.5])).flatten(), torch.tensor([0.0, 1.0, 1.0]))


def test_color_strength_scales_every_jitter_amount():
    half = A.SimCLRAugment(color_strength=0.5)
    assert (half.brightness, half.contrast, half.saturation, half.hue) == pytest.approx((0.4, 0.4, 0.4, 0.1))
    factors = half.draw(2000, (32, 32), seeded(0), torch.device("cpu"))["jitter_factors"]
    assert factors[:, :3].min() >= 0.6 and factors[:, :3].max() <= 1.4 and factors[:, 3].abs().max() <= 0.1
    with pytest.raises(ValueError, match="hue"):
        A.SimCLRAugment(color_strength=3.0)  # hue 0.6 > 0.5
