import pytest
import torch

from cl_runner.data.augment import normalize, to_unit
from cl_runner.data.datasets import ImageSet
from cl_runner.data.pairing import (LabelAwareNegatives, MultiViewSampler, PairSampler, RandomNegatives,
                                   TripletSampler)
from cl_runner.distributed import World
from cl_runner.randomness import TrainingStreams

from conftest import preset


def toy_set(n: int = 300, classes: int = 5, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    labels[:classes] = torch.arange(classes)  # every class present
    images = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    return ImageSet(images, labels, [str(c) for c in range(classes)])


def test_negatives_never_share_the_anchors_class():
    data = toy_set()
    negatives = LabelAwareNegatives(data.labels)
    g = torch.Generator().manual_seed(1)
    anchors = torch.randint(0, len(data), (50000,), generator=g)
    drawn = negatives.sample(anchors, g)
    assert (data.labels[drawn] != data.labels[anchors]).all()


def test_negatives_are_uniform_over_the_other_classes_images():
    data = toy_set(n=40, classes=3)
    negatives = LabelAwareNegatives(data.labels)
    anchor_label = data.labels[0]
    draws = 60000
    drawn = negatives.sample(torch.zeros(draws, dtype=torch.long), torch.Generator().manual_seed(2))
    eligible = (data.labels != anchor_label).nonzero().squeeze(1)
    counts = torch.bincount(drawn, minlength=len(data))
    assert set(drawn.unique().tolist()) == set(eligible.tolist())  # every other-class image can be drawn
    expected = draws / len(eligible)
    assert ((counts[eligible] - expected).abs() < 5 * expected ** 0.5).all()


def test_negatives_need_two_classes():
    with pytest.raises(ValueError, match="two classes"):
        LabelAwareNegatives(torch.zeros(10, dtype=torch.long))


def test_triplet_batch_stacks_clean_anchor_augmented_positive_clean_negative():
    data = toy_set()
    sampler = TripletSampler()
    sampler.setup(data, preset("none"), TrainingStreams.from_seed(0))
    ids = torch.arange(10, 42)
    batch = sampler.batch(ids, TrainingStreams.from_seed(3))
    assert batch.views == 3 and batch.target is None and batch.images.shape == (96, 1, 8, 8)
    anchors, positives, negatives = batch.images.view(3, 32, 1, 8, 8)
    assert torch.equal(anchors, normalize(to_unit(data.images[ids])))
    assert torch.equal(positives, anchors)  # aug=none: the positive is the clean image
    assert not torch.equal(negatives, anchors)
    assert sampler.tuples_per_epoch() == len(data)


@pytest.mark.parametrize("sync_free", [False, True], ids=["subsets", "sync_free"])
def test_pair_batch_has_a_positive_and_a_negative_pair_per_image(sync_free):
    data = toy_set()
    sampler = PairSampler()
    sampler.setup(data, preset("none"), TrainingStreams.from_seed(0))
    assert not sampler.sync_free  # chosen from the data's device: CPU builds only the images each pair needs
    sampler.sync_free = sync_free
    n = len(data)
    assert sampler.tuples_per_epoch() == 2 * n
    ids = torch.tensor([0, 1, n + 0, n + 1])
    batch = sampler.batch(ids, TrainingStreams.from_seed(4))
    assert batch.views == 2 and batch.target.tolist() == [1.0, 1.0, -1.0, -1.0]
    first, second = batch.images.view(2, 4, 1, 8, 8)
    clean = normalize(to_unit(data.images[[0, 1, 0, 1]]))
    assert torch.equal(first, clean)
    assert torch.equal(second[:2], clean[:2])  # positives (aug=none)
    assert not torch.equal(second[2:], clean[2:])  # negatives: other images


def test_fixed_views_are_drawn_once_and_reused():
    data = toy_set()
    ids = torch.arange(0, 16)

    def positives(sampler, seed):
        return sampler.batch(ids, TrainingStreams.from_seed(seed)).images.view(3, 16, 1, 8, 8)[1]
    fixed = TripletSampler(fixed_views=True)
    fixed.setup(data, preset("simclr"), TrainingStreams.from_seed(0))
    first, again = positives(fixed, 1), positives(fixed, 2)
    assert torch.equal(first, again)
    assert torch.equal(first, normalize(to_unit(fixed.stored_views[ids])))  # quantized to uint8 once, as PIL did
    fresh = TripletSampler()
    fresh.setup(data, preset("simclr"), TrainingStreams.from_seed(0))
    assert not torch.equal(positives(fresh, 1), positives(fresh, 2))


def test_random_negatives_never_pick_the_anchor_and_do_share_classes():
    data = toy_set(n=50, classes=2)
    negatives = RandomNegatives(len(data.labels))
    g = torch.Generator().manual_seed(5)
    anchors = torch.randint(0, 50, (20000,), generator=g)
    drawn = negatives.sample(anchors, g)
    assert (drawn != anchors).all() and drawn.min() >= 0 and drawn.max() < 50
    same_class = (data.labels[drawn] == data.labels[anchors]).float().mean().item()
    assert 0.3 < same_class < 0.7  # the sample bias of unsupervised negatives
    assert set(negatives.sample(torch.zeros(5000, dtype=torch.long), g).tolist()) == set(range(1, 50))


def test_multiview_batch_stacks_k_views_and_passes_labels_only_when_label_aware():
    data = toy_set()
    ids = torch.arange(8)
    sampler = MultiViewSampler(views=3, negatives="label_aware")
    sampler.setup(data, preset("simclr"), TrainingStreams.from_seed(0))
    batch = sampler.batch(ids, TrainingStreams.from_seed(1))
    assert batch.views == 3 and batch.images.shape == (24, 1, 8, 8) and torch.equal(batch.labels, data.labels[ids])
    views = batch.images.view(3, 8, 1, 8, 8)
    assert not torch.equal(views[0], views[1]) and not torch.equal(views[1], views[2])
    unsupervised = MultiViewSampler(views=2)
    unsupervised.setup(data, preset("simclr"), TrainingStreams.from_seed(0))
    assert unsupervised.batch(ids, TrainingStreams.from_seed(1)).labels is None
    with pytest.raises(ValueError, match="at least 2"):
        MultiViewSampler(views=1)


def test_augment_anchor_draws_the_anchor_as_a_view_too():
    data = toy_set()
    ids = torch.arange(16)
    sampler = TripletSampler(augment_anchor=True)
    sampler.setup(data, preset("simclr"), TrainingStreams.from_seed(0))
    anchors, positives, _ = sampler.batch(ids, TrainingStreams.from_seed(3)).images.view(3, 16, 1, 8, 8)
    assert not torch.equal(anchors, normalize(to_unit(data.images[ids])))
    assert not torch.equal(anchors, positives)  # independent draws
    with pytest.raises(ValueError, match="negatives"):
        PairSampler(negatives="hard")


SAMPLERS = {"triplet": lambda: TripletSampler(augment_anchor=True), "pair": lambda: PairSampler(),
            "pair_fixed_views": lambda: PairSampler(fixed_views=True, negatives="random"),
            "multiview": lambda: MultiViewSampler(views=3, negatives="label_aware")}


@pytest.mark.parametrize("sync_free", [False, True])
@pytest.mark.parametrize("kind", SAMPLERS)
def test_the_ranks_parts_of_a_batch_make_the_one_process_batch(kind, sync_free):
    """Each of 3 processes builds its rows of a 50-tuple batch (parts of 17, 17 and 16), drawing every parameter
    for the whole batch: together they are exactly the batch one process builds, bit for bit."""
    data = toy_set()
    data = ImageSet(torch.randint(0, 256, (len(data), 3, 8, 8), generator=torch.Generator().manual_seed(5),
                                  dtype=torch.uint8), data.labels, data.classes)
    sampler = SAMPLERS[kind]()
    sampler.setup(data, preset("simclr"), TrainingStreams.from_seed(0))
    sampler.sync_free = sync_free
    ids = torch.randperm(sampler.tuples_per_epoch(), generator=torch.Generator().manual_seed(3))[:50]
    whole = sampler.batch(ids, TrainingStreams.from_seed(1))
    shares = [World(rank, 3).share(50) for rank in range(3)]
    assert [share.sizes for share in shares] == [(17, 17, 16)] * 3
    parts = [sampler.batch(ids, TrainingStreams.from_seed(1), share.rows) for share in shares]
    views = whole.views
    assert torch.equal(torch.cat([p.images.unflatten(0, (views, -1)) for p in parts], dim=1),
                       whole.images.unflatten(0, (views, -1)))
    for field in ("target", "labels"):
        if getattr(whole, field) is not None:
            assert torch.equal(torch.cat([getattr(p, field) for p in parts]), getattr(whole, field))
