"""Every augmentation operation against its definition: torchvision's transforms (or scipy's filters) are the
reference where they have the same thing, a hand-computed case where they do not; one and three channels."""
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from scipy import ndimage
from torchvision import transforms

from cl_runner.data.augment import Pipeline, base, to_unit
from cl_runner.data.augment.colour import (ColorJitter, RandomGrayscale, Solarize, adjust_brightness,
                                           adjust_contrast, adjust_hue, adjust_saturation, apply_color_jitter)
from cl_runner.data.augment.filters import GaussianBlur, GaussianNoise, Sobel, gaussian_blur, simclr_kernel
from cl_runner.data.augment.geometry import (CropResizeFlip, Cutout, HorizontalFlip, PadRotateScale,
                                             RandomResizedCrop, Rotate90, Rotation, crop_resize_flip)
from cl_runner.data.datasets import read_digits
from cl_runner.errors import ConfigError

from conftest import preset

CPU = torch.device("cpu")
OPERATIONS = {  # every operation, always applied
    "crop": lambda: RandomResizedCrop(), "flip": lambda: HorizontalFlip(p=1.0), "jitter": lambda: ColorJitter(p=1.0),
    "grayscale": lambda: RandomGrayscale(p=1.0), "blur": lambda: GaussianBlur(), "rotate": lambda: Rotation(),
    "rotate90": lambda: Rotate90(), "pad_rotate_scale": lambda: PadRotateScale(), "cutout": lambda: Cutout(),
    "noise": lambda: GaussianNoise(), "sobel": lambda: Sobel(), "solarize": lambda: Solarize(p=1.0),
}


def images(channels: int, n: int = 16, side: int = 28, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, side, side), generator=g, dtype=torch.uint8)


def digits(n: int = 32) -> torch.Tensor:
    """Real, smooth images (scikit-learn's digits at 28x28) for interpolation comparisons."""
    return read_digits("test").images[:n]


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def drawn(op, x: torch.Tensor, seed: int = 0) -> dict:
    """The parameters `op` draws for the float images `x`."""
    return op.params(op.uniforms(len(x), tuple(x.shape[1:]), seeded(seed), CPU), x.shape[-2:])


def applied(op, x: torch.Tensor, seed: int = 0, sync_free: bool = False) -> torch.Tensor:
    return op.apply(x, drawn(op, x, seed), sync_free)


@pytest.mark.parametrize("name", OPERATIONS)
@pytest.mark.parametrize("channels,side", [(1, 28), (3, 32)])
def test_every_operation_keeps_shape_dtype_and_range_and_is_reproducible(name, channels, side):
    op, x = OPERATIONS[name](), to_unit(images(channels, side=side))
    out = applied(op, x, seed=7)
    assert out.shape == x.shape and out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, applied(op, x, seed=7))
    assert torch.equal(out, applied(op, x, seed=7, sync_free=True))
    if name not in ("flip", "grayscale", "sobel", "solarize"):  # these draw nothing at p = 1
        assert not torch.equal(out, applied(op, x, seed=8))


@pytest.mark.parametrize("name", OPERATIONS)
def test_an_operation_at_p_draws_its_applied_uniform_first_and_applies_to_those_below_p(name):
    op = OPERATIONS[name]()
    op.p = 0.3
    x = to_unit(images(3, n=400, side=12))
    params = drawn(op, x, seed=2)
    assert torch.equal(params["applied"], torch.rand(400, generator=seeded(2)) < 0.3)
    out = op.apply(x, params)
    assert torch.equal(out[~params["applied"]], x[~params["applied"]])
    assert abs(params["applied"].float().mean().item() - 0.3) < 0.07
    always = OPERATIONS[name]()
    assert "applied" not in always.uniforms(4, (3, 12, 12), seeded(0), CPU)  # p = 1 draws nothing for it


def test_none_is_the_unit_scaled_image_and_normalize_is_mean_std_half():
    x = images(1)
    assert torch.equal(preset("none")(x, seeded(0)), x.float() / 255)
    unit = x.float() / 255
    assert torch.allclose(base.normalize(unit), TF.normalize(unit, [0.5], [0.5]))


def test_warp_grid_equals_torch_affine_grid():
    x = torch.rand(6, 3, 17, 23, generator=seeded(0))
    theta = torch.randn(6, 2, 3, generator=seeded(1))
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    reference = torch.nn.functional.grid_sample(x, grid, align_corners=False)
    assert torch.allclose(base.warp(x, theta), reference, atol=1e-5)


def test_grayscale_and_mean_luma_are_the_itu_601_weighted_sums():
    x = torch.rand(4, 3, 5, 7, generator=seeded(0))
    assert torch.allclose(base.grayscale(x), TF.rgb_to_grayscale(x), atol=1e-6)
    assert torch.allclose(base.mean_luma(x).flatten(), TF.rgb_to_grayscale(x).mean(dim=(1, 2, 3)), atol=1e-6)
    one_channel = x[:, :1]
    assert torch.equal(base.mean_luma(one_channel).flatten(), one_channel.mean(dim=(1, 2, 3)))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("angle", [-15.0, -4.5, 10.0, 87.0])
def test_rotation_equals_torchvision_rotate(angle, channels):
    x = to_unit(images(channels, n=4, side=32))
    ours = Rotation().rotate(x, torch.full((4,), angle))
    reference = TF.rotate(x, angle, interpolation=TF.InterpolationMode.BILINEAR)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_rotation_draws_its_angle_uniformly_in_its_range():
    op = Rotation(degrees=(-30.0, 10.0))
    degrees = drawn(op, torch.zeros(4000, 1, 4, 4))["degrees"]
    assert degrees.min() >= -30 and degrees.max() <= 10 and abs(degrees.mean().item() + 10) < 0.6


@pytest.mark.parametrize("angle", [-13.0, 7.0])
def test_pad_rotate_scale_matches_the_torchvision_chain(angle):
    """SPEC.md: resize 28 -> 56, pad 18 -> 92, rotate, centre-crop 63, resize -> 28. Our single warp skips the
    intermediate resamplings (and the final antialiasing), so it agrees within interpolation error, and
    better than any other angle or zoom would."""
    x = to_unit(digits())
    chain = TF.resize(x, [56, 56], antialias=True)
    chain = TF.pad(chain, [18, 18, 18, 18], fill=0)
    chain = TF.rotate(chain, angle, interpolation=TF.InterpolationMode.BILINEAR)
    chain = TF.center_crop(chain, [63, 63])
    chain = TF.resize(chain, [28, 28], antialias=True)

    def error(degrees: float, crop_ratio: float = 1.125) -> float:
        ours = PadRotateScale(crop_ratio=crop_ratio).rotate(x, torch.full((len(x),), degrees))
        return (ours - chain).abs().mean().item()

    assert error(angle) < 0.021
    assert error(angle) < min(error(angle - 3), error(angle + 3))
    assert error(-angle) > 0.05 and error(angle, crop_ratio=1.0) > 0.05
    zoomed = PadRotateScale().rotate(x, torch.zeros(len(x)))
    assert zoomed[..., 0, :].max() == 0 and zoomed[..., :, -1].max() == 0  # the zoom-out leaves a black border


@pytest.mark.parametrize("channels", [1, 3])
def test_rotate90_turns_each_image_by_its_drawn_quarter_turns_exactly(channels):
    x = to_unit(images(channels, n=300, side=9))
    op = Rotate90(multiples=[1, 2, 3])
    params = drawn(op, x, seed=1)
    out = op.apply(x, params)
    for i in range(len(x)):
        turns = int(params["turns"][i])
        assert torch.equal(out[i], torch.rot90(x[i], turns, dims=(-2, -1)))
        assert torch.allclose(out[i], TF.rotate(x[i], 90.0 * turns), atol=1e-5)  # counter-clockwise, as torchvision
    counts = torch.bincount(params["turns"], minlength=4)
    assert counts[0] == 0 and counts[1:].min() > 70
    with pytest.raises(ConfigError, match="square"):
        op.apply(torch.zeros(2, 1, 4, 6), {"turns": torch.tensor([1, 2])})


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("box", [(3, 5, 20, 14), (0, 0, 32, 32), (10, 12, 22, 20), (0, 0, 1, 1), (31, 0, 1, 32)])
def test_crop_resize_flip_equals_torchvision(box, channels):
    x = to_unit(images(channels, n=4, side=32))
    flips = torch.tensor([False, True, False, True])
    ours = crop_resize_flip(x, torch.tensor([box] * 4, dtype=torch.float32), flips)
    reference = TF.resized_crop(x, *box, [32, 32], antialias=True)
    reference[flips] = TF.hflip(reference[flips])
    assert torch.allclose(ours, reference, atol=1e-5)


@pytest.mark.parametrize("box", [(3, 5, 20, 14), (0, 0, 32, 32), (10, 12, 6, 8)])
def test_a_crop_to_another_size_equals_torchvisions_bilinear_resize(box):
    x = to_unit(images(3, n=4, side=32))
    flips = torch.tensor([False, True, False, True])
    ours = crop_resize_flip(x, torch.tensor([box] * 4, dtype=torch.float32), flips, size=16)
    reference = TF.resized_crop(x, *box, [16, 16], antialias=False)  # the warp samples, it does not average
    reference[flips] = TF.hflip(reference[flips])
    assert ours.shape == (4, 3, 16, 16) and torch.allclose(ours, reference, atol=1e-5)
    crop = Pipeline([RandomResizedCrop(scale=(0.05, 0.14), size=16), HorizontalFlip()])
    assert crop(images(3, n=5, side=32), seeded(1)).shape == (5, 3, 16, 16)
    with pytest.raises(ConfigError, match="a crop to another size applies to every image"):
        RandomResizedCrop(size=16, p=0.5)
    with pytest.raises(ConfigError, match="size must be null"):
        RandomResizedCrop(size=0)


def test_a_crop_then_a_flip_is_one_warp_with_the_pixels_of_the_two():
    crop, flip = RandomResizedCrop(), HorizontalFlip()
    pipeline = Pipeline([crop, flip])
    assert len(pipeline.ops) == 1 and isinstance(pipeline.ops[0], CropResizeFlip)
    x = images(3, n=64, side=32)
    unit = to_unit(x)
    g = seeded(5)
    boxes = crop.params(crop.uniforms(64, (3, 32, 32), g, CPU), (32, 32))["boxes"]
    flips = torch.rand(64, generator=g) < 0.5
    cropped = crop_resize_flip(unit, boxes)
    two_steps = torch.where(flips.view(-1, 1, 1, 1), cropped.flip(-1), cropped)
    assert torch.allclose(pipeline(x, seeded(5)), two_steps, atol=1e-6)
    assert len(Pipeline([flip, crop]).ops) == 2  # a flip before the crop is its own step


def test_crop_boxes_follow_torchvisions_distribution():
    n = 20000
    ours = drawn(RandomResizedCrop(), torch.zeros(n, 1, 32, 32))["boxes"].numpy()
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


def test_flip_and_grayscale_rates():
    x = to_unit(images(3, n=4000, side=8))
    flip = HorizontalFlip(p=0.5)
    flipped = applied(flip, x, seed=1)
    is_flipped = (flipped - x.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert (flipped - x).abs().amax(dim=(1, 2, 3))[~is_flipped].max() < 1e-5  # the rest are untouched
    assert abs(is_flipped.float().mean().item() - 0.5) < 0.03
    gray = applied(RandomGrayscale(p=0.2), x, seed=2)
    is_gray = (gray - gray[:, :1]).abs().amax(dim=(1, 2, 3)) < 1e-6
    assert abs(is_gray.float().mean().item() - 0.2) < 0.03
    assert torch.allclose(gray[is_gray], TF.rgb_to_grayscale(x[is_gray], 3), atol=1e-6)
    one_channel = x[:, :1]
    assert torch.equal(applied(RandomGrayscale(p=1.0), one_channel), one_channel)


@pytest.mark.parametrize("name,factor", [("brightness", 0.4), ("brightness", 1.6), ("contrast", 0.3),
                                         ("contrast", 1.7), ("saturation", 0.2), ("saturation", 1.8),
                                         ("hue", -0.2), ("hue", 0.13), ("hue", 0.5)])
def test_colour_ops_equal_torchvision(name, factor):
    x = to_unit(images(3, n=6, side=16))
    ours = {"brightness": adjust_brightness, "contrast": adjust_contrast, "saturation": adjust_saturation,
            "hue": adjust_hue}[name](x, torch.full((6,), factor))
    reference = getattr(TF, f"adjust_{name}")(x, factor)
    assert torch.allclose(ours, reference, atol=1e-5)


@pytest.mark.parametrize("sync_free", [False, True], ids=["subsets", "sync_free"])
@pytest.mark.parametrize("channels", [1, 3])
def test_color_jitter_equals_torchvision_in_the_drawn_order(sync_free, channels):
    op = ColorJitter()
    x = to_unit(images(channels, n=64, side=8))
    params = drawn(op, x, seed=4)
    ours = op.apply(x, params, sync_free)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue][:4 if channels == 3 else 2]
    for i in range(64):
        expected = x[i]
        if params["applied"][i]:
            for op_index in params["order"][i].tolist():
                if op_index < len(ops):
                    expected = ops[op_index](expected, params["factors"][i, op_index].item())
        assert torch.allclose(ours[i], expected, atol=1e-5), i
    factors = params["factors"]
    assert abs(params["applied"].float().mean().item() - 0.8) < 0.15
    assert factors[:, :3].min() >= 0.2 and factors[:, :3].max() <= 1.8 and factors[:, 3].abs().max() <= 0.2
    assert sorted(params["order"][0].tolist()) == [0, 1, 2, 3]


def test_one_channel_jitter_is_brightness_and_contrast_only():
    x = to_unit(images(1, n=8, side=8))
    every = torch.ones(8, dtype=torch.bool)
    factors = torch.tensor([[1.0, 1.0, 0.0, 0.5]] * 8)  # saturation 0 and a hue shift: no effect on gray
    order = torch.tensor([[2, 3, 0, 1]] * 8)
    assert torch.allclose(apply_color_jitter(x, every, factors, order), x)


def test_color_strength_scales_every_jitter_amount():
    half = ColorJitter(strength=0.5)
    assert (half.brightness, half.contrast, half.saturation, half.hue) == pytest.approx((0.4, 0.4, 0.4, 0.1))
    factors = drawn(half, torch.zeros(2000, 3, 4, 4))["factors"]
    assert factors[:, :3].min() >= 0.6 and factors[:, :3].max() <= 1.4 and factors[:, 3].abs().max() <= 0.1
    with pytest.raises(ConfigError, match="hue"):
        ColorJitter(strength=3.0)  # hue 0.6 > 0.5


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("sigma", [0.1, 0.7, 2.0])
def test_gaussian_blur_equals_torchvision(sigma, channels):
    x = to_unit(images(channels, n=3, side=12))
    ours = gaussian_blur(x, 3, torch.full((3,), sigma))
    assert torch.allclose(ours, TF.gaussian_blur(x, [3, 3], [sigma, sigma]), atol=1e-6)


def test_gaussian_blur_uses_each_samples_sigma_and_simclrs_kernel_of_a_tenth_of_the_side():
    x = to_unit(images(1, n=2, side=12))
    sigma = torch.tensor([0.3, 1.9])
    ours = gaussian_blur(x, 3, sigma)
    for i in range(2):
        assert torch.allclose(ours[i], TF.gaussian_blur(x[i], [3, 3], [sigma[i].item()] * 2), atol=1e-6)
    assert [simclr_kernel(s) for s in (28, 32, 96, 224)] == [3, 3, 9, 23]
    big = to_unit(images(3, n=2, side=64))
    op = GaussianBlur(sigma=(1.5, 1.5))
    assert torch.allclose(applied(op, big), TF.gaussian_blur(big, [7, 7], [1.5, 1.5]), atol=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_cutout_erases_the_square_torchvisions_erase_erases(channels):
    x = to_unit(images(channels, n=200, side=10))
    op = Cutout(size=0.4, fill=0.25)
    params = drawn(op, x, seed=3)
    out = op.apply(x, params)
    for i in range(len(x)):
        top, left = (int(v) for v in params["corner"][i])  # side 4: rows top .. top + 3, clipped
        rows, cols = slice(max(top, 0), max(min(top + 4, 10), 0)), slice(max(left, 0), max(min(left + 4, 10), 0))
        expected = TF.erase(x[i], rows.start, cols.start, rows.stop - rows.start, cols.stop - cols.start, 0.25)
        assert torch.equal(out[i], expected), i
    centres = params["corner"] + 2
    assert centres.min() == 0 and centres.max() == 9  # the centre is any pixel, so the box may leave the image


@pytest.mark.parametrize("channels", [1, 3])
def test_gaussian_noise_adds_sigma_times_standard_normal_noise_and_clamps(channels):
    op = GaussianNoise(std=(0.05, 0.1))
    x = torch.full((500, channels, 16, 16), 0.5)
    params = drawn(op, x, seed=6)
    out = op.apply(x, params)
    assert torch.allclose(out, (x + params["noise"] * params["std"].view(-1, 1, 1, 1)).clamp(0, 1))
    assert params["std"].min() >= 0.05 and params["std"].max() <= 0.1
    residual = (out - x) / params["std"].view(-1, 1, 1, 1)
    assert abs(residual.mean().item()) < 0.01 and abs(residual.std().item() - 1) < 0.01
    assert applied(op, torch.ones(4, channels, 8, 8)).max() == 1  # clamped


@pytest.mark.parametrize("channels", [1, 3])
def test_sobel_is_scipys_gradient_magnitude_scaled_to_each_images_strongest_edge(channels):
    x = torch.rand(3, channels, 9, 11, generator=seeded(0))
    out = applied(Sobel(), x)
    grads = [[np.hypot(ndimage.sobel(x[i, c].numpy(), axis=1, mode="nearest"),
                       ndimage.sobel(x[i, c].numpy(), axis=0, mode="nearest")) for c in range(channels)]
             for i in range(3)]
    reference = np.array(grads)
    reference /= reference.reshape(3, -1).max(axis=1).reshape(3, 1, 1, 1)
    assert np.allclose(out.numpy(), reference, atol=1e-6)
    step = torch.zeros(1, 1, 6, 6)
    step[..., 3:] = 1.0  # a vertical edge: gradient 4 on the two columns beside it, 0 elsewhere
    edges = applied(Sobel(), step)[0, 0]
    assert torch.equal(edges[:, 2:4], torch.ones(6, 2)) and edges[:, :2].abs().max() == 0
    assert torch.equal(applied(Sobel(), torch.full((1, 3, 4, 4), 0.3)), torch.zeros(1, 3, 4, 4))  # flat: no edges


@pytest.mark.parametrize("channels", [1, 3])
def test_solarize_inverts_the_values_at_or_above_the_threshold_as_torchvision(channels):
    x = to_unit(images(channels, n=4, side=8))
    for threshold in (0.5, 0.2):
        ours = applied(Solarize(threshold=threshold, p=1.0), x)
        assert torch.allclose(ours, TF.solarize(x, threshold))


@pytest.mark.parametrize("make,message", [
    (lambda: RandomResizedCrop(scale=0.5), "scale=0.5 is not allowed: scale must be \\[min, max\\]"),
    (lambda: RandomResizedCrop(scale=(0.0, 1.0)), "scale"),
    (lambda: HorizontalFlip(p=1.5), "p=1.5 is not allowed: p must be a probability"),
    (lambda: GaussianBlur(kernel=4), "kernel=4 is not allowed"),
    (lambda: GaussianBlur(sigma=(2.0, 1.0)), "sigma"),
    (lambda: Rotation(degrees=(10, -10)), "degrees"),
    (lambda: Rotate90(multiples=[4]), "multiples"),
    (lambda: Cutout(size=0), "size=0 is not allowed"),
    (lambda: GaussianNoise(std=(-0.1, 0.1)), "std"),
    (lambda: Solarize(threshold=2), "threshold=2"),
    (lambda: PadRotateScale(max_degrees=-1), "max_degrees"),
])
def test_an_operation_refuses_a_bad_setting_with_one_sentence(make, message):
    with pytest.raises(ConfigError, match=message):
        make()
