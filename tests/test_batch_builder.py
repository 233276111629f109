"""The compiled batch builder (issue #22): the samplers' `inputs` trace into one graph, and compiled they build
the batches the eager code builds from the same draws of the same streams."""
import pytest
import torch

from cl_runner.data.datasets import ImageSet
from cl_runner.data.pairing import MultiViewSampler, PairSampler, TripletSampler
from cl_runner.randomness import TrainingStreams
from cl_runner.runtime import compiles

from conftest import preset

EVERY_OP = ("aug.views=[[crop, flip, jitter, grayscale, blur, rotate, rotate90, pad_rotate_scale, cutout, noise, "
            "sobel, solarize]]")
SOME_AT_P = ("aug.ops.blur.p=0.5", "aug.ops.rotate90.p=0.3", "aug.ops.cutout.p=0.7", "aug.ops.noise.p=0.5")
# multi-crop with 2 of its 6 local views: the same kinds of view, a smaller graph to compile
MULTICROP_2_2 = "aug.views=[" + ", ".join(["[crop, flip, jitter, grayscale, blur]"] * 2 +
                                          ["[local_crop, flip, jitter, grayscale, blur]"] * 2) + "]"
BUILDERS = {  # sampler, augmentation, image channels: every sampler, every augmentation, both channel counts
    "triplet-simclr-rgb": (lambda: TripletSampler(augment_anchor=True), lambda: preset("simclr"), 3),
    "triplet-guo-gray": (TripletSampler, lambda: preset("guo"), 1),
    "pair-guo-gray": (PairSampler, lambda: preset("guo"), 1),
    "pair-fixed-views-simclr-rgb": (lambda: PairSampler(fixed_views=True, negatives="random"),
                                    lambda: preset("simclr"), 3),
    "multiview-simclr-rgb": (lambda: MultiViewSampler(views=3, negatives="label_aware"), lambda: preset("simclr"), 3),
    "multiview-none-gray": (MultiViewSampler, lambda: preset("none"), 1),
    "multiview-byol-rgb": (MultiViewSampler, lambda: preset("byol"), 3),
    "pair-every-operation-gray": (lambda: PairSampler(augment_anchor=True),
                                  lambda: preset("none", EVERY_OP, *SOME_AT_P), 1),
    "multiview-every-operation-rgb": (MultiViewSampler, lambda: preset("none", EVERY_OP, *SOME_AT_P), 3),
    "multiview-multicrop-rgb": (lambda: MultiViewSampler(local_views=2), lambda: preset("multicrop", MULTICROP_2_2),
                                3),
}


def images(channels: int, n: int = 200, side: int = 12) -> ImageSet:
    g = torch.Generator().manual_seed(channels)
    labels = torch.randint(0, 4, (n,), generator=g)
    labels[:4] = torch.arange(4)
    return ImageSet(torch.randint(0, 256, (n, channels, side, side), generator=g, dtype=torch.uint8), labels,
                    list("abcd"))


def sampler_for(name: str, compiled: bool):
    make_sampler, make_aug, channels = BUILDERS[name]
    sampler = make_sampler()
    sampler.setup(images(channels), make_aug(), TrainingStreams.from_seed(0), compiled=compiled)
    return sampler


def batches(sampler, count: int = 3, size: int = 48, rows: slice | None = None):
    streams = TrainingStreams.from_seed(1)
    order = torch.randperm(sampler.tuples_per_epoch(), generator=streams.order)
    return [sampler.batch(order[i * size:(i + 1) * size], streams, rows) for i in range(count)]


@pytest.mark.parametrize("name", BUILDERS)
def test_the_batch_builder_traces_into_one_graph_without_breaks(name):
    sampler = sampler_for(name, compiled=False)
    sampler.sync_free = True  # as compiled
    streams = TrainingStreams.from_seed(1)
    ids = torch.randperm(sampler.tuples_per_epoch(), generator=streams.order)[:48]
    explained = torch._dynamo.explain(sampler.inputs)(ids, sampler.draws(ids, streams), slice(0, 48))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_compile_auto_compiles_the_batch_builder_on_cuda_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not compiles("auto", "batch", cpu) and compiles("auto", "batch", cuda)
    assert not compiles({"batch": "auto", "encoder": "auto"}, "encoder", cuda)
    assert compiles(True, "encoder", cpu) and not compiles({"batch": False, "encoder": True}, "batch", cuda)


@pytest.mark.slow  # inductor compiles each builder's shape in C++: 10-20 s each on 2 cores
@pytest.mark.parametrize("name", ["triplet-simclr-rgb", "pair-guo-gray", "multiview-simclr-rgb",
                                  "multiview-every-operation-rgb", "multiview-multicrop-rgb"])
def test_the_compiled_builder_builds_the_eager_builders_batches(name):
    """Compiled, the builder runs the eager arithmetic in fused kernels whose float32 rounding may differ (fused
    multiply-adds, reordered sums): the images, in [-1, 1], agree within 1e-5 (a few float32 steps at 1, or a
    bilinear weight off by 1e-7 over an intensity step of 2). Indices, boxes, flips, targets and labels come
    from the same draws by exact operations (comparisons, floor, gathers), so a wrong draw or pick would show
    as an error of order 1. For triplets also an epoch's smaller last batch and a process's rows of a batch (each
    a shape compiled anew)."""
    eager = sampler_for(name, compiled=False)
    eager.sync_free = True  # the arithmetic the compiled builder runs (on CPU eager pairs build only what they use)
    compiled = sampler_for(name, compiled=True)
    shapes = [{}] + ([{"count": 1, "size": 20}, {"rows": slice(16, 40)}] if name.startswith("triplet") else [])
    for shape in shapes:
        for ours, reference in zip(batches(compiled, **shape), batches(eager, **shape)):
            torch.testing.assert_close(ours.images, reference.images, rtol=0, atol=1e-5)
            assert ours.views == reference.views and ours.local_views == reference.local_views
            if reference.local_images is not None:
                torch.testing.assert_close(ours.local_images, reference.local_images, rtol=0, atol=1e-5)
            for field in ("target", "labels"):
                assert (getattr(ours, field) is None) == (getattr(reference, field) is None)
                if getattr(ours, field) is not None:
                    assert torch.equal(getattr(ours, field), getattr(reference, field))
