"""Multi-crop (Caron et al. 2020, SwAV section 3.2): views of two sizes per image, the smaller ones carried apart
in the batch, encoded in their own pass and taken by the losses built for them."""
from __future__ import annotations

import json

import pytest
import torch

from cl_runner.batch import BatchShare
from cl_runner.data.datasets import ImageSet
from cl_runner.data.pairing import MultiViewSampler
from cl_runner.losses import DINOLoss, NTXentLoss, SwAVLoss
from cl_runner.losses.base import embed_views
from cl_runner.randomness import TrainingStreams
from conftest import preset, run_cli, run_main

GLOBAL_ONLY = "aug.views=[[crop, flip, jitter, grayscale, blur]]"  # multicrop's global pipeline, alone


def cifar_like(n: int = 64) -> ImageSet:
    g = torch.Generator().manual_seed(0)
    return ImageSet(torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
                    torch.randint(0, 4, (n,), generator=g), list("abcd"))


def first_batch(sampler: MultiViewSampler, aug) -> object:
    sampler.setup(cifar_like(), aug, TrainingStreams.from_seed(0))
    return sampler.batch(torch.arange(16), TrainingStreams.from_seed(1))


def test_a_multicrop_batch_holds_two_global_and_six_smaller_local_views_drawn_after_them():
    batch = first_batch(MultiViewSampler(views=2, local_views=6), preset("multicrop"))
    assert batch.images.shape == (32, 3, 32, 32) and batch.views == 2
    assert batch.local_images.shape == (96, 3, 16, 16) and batch.local_views == 6
    assert -1 <= batch.local_images.min() and batch.local_images.max() <= 1  # normalized as the others
    plain = first_batch(MultiViewSampler(views=2), preset("multicrop", GLOBAL_ONLY))
    assert torch.equal(batch.images, plain.images)  # the local views' draws come after: the global views unchanged
    assert plain.local_images is None and plain.local_views == 0


def test_the_losses_see_the_local_views_after_the_global_ones():
    batch = first_batch(MultiViewSampler(views=2, local_views=6), preset("multicrop"))
    torch.manual_seed(0)
    big, small = torch.nn.Linear(3 * 32 * 32, 8), torch.nn.Linear(3 * 16 * 16, 8)

    def by_size(module, images):  # one "encoder" per size, as a network with global pooling is one for both
        return (big if images.shape[-1] == 32 else small)(images.flatten(1)).view(-1, 16, 8)

    z = embed_views(None, batch, by_size)
    assert z.shape == (8, 16, 8)
    assert torch.equal(z[:2], by_size(None, batch.images)) and torch.equal(z[2:], by_size(None, batch.local_images))
    ntxent = NTXentLoss(0.5)
    assert ntxent.training_loss(None, batch, BatchShare.split(16), by_size).item() == \
        pytest.approx(ntxent(z).item(), rel=1e-6)
    swav = SwAVLoss(epochs=1, num_prototypes=5, queue_size=0)
    swav.setup(type("E", (), {"output_dim": 8})(), 16)
    assert swav.training_loss(None, batch, BatchShare.split(16), by_size).item() == \
        pytest.approx(swav(z).item(), rel=1e-6)
    assert DINOLoss.local_views and SwAVLoss.local_views and not DINOLoss.two_views


def test_impossible_multicrop_settings_are_refused_in_one_line(tmp_path, capfd):
    code, _, err = run_main(["loss=byol", "aug=multicrop", "pairing.local_views=6"], tmp_path, capfd)
    assert code != 0 and err.strip().splitlines()[-1] == (
        "cl-run: error: loss=byol takes no multi-crop local views: set pairing.local_views=0 (the losses that "
        "take them: swav, dino, ntxent, supcon)")
    code, _, err = run_main(["loss=dino", "aug=multicrop", "pairing.local_views=6", "dataset=digits"], tmp_path, capfd)
    assert code != 0 and "gives 8 features for multi-crop local views of 16x16" in err.strip().splitlines()[-1]
    code, _, err = run_main(["loss=swav", "aug=multicrop"], tmp_path, capfd)  # 8 pipelines, 2 views
    assert code != 0 and "pairing.views and pairing.local_views say how many" in err.strip().splitlines()[-1]
    with pytest.raises(ValueError, match="pairing.local_views must be an integer >= 0"):
        MultiViewSampler(local_views=-1)


@pytest.mark.slow
def test_dino_and_swav_train_on_multicrop_views_in_a_whole_run(tmp_path):
    for loss in ("dino", "swav"):
        result = run_cli([f"loss={loss}", "aug=multicrop", "pairing.local_views=6", "encoder=resnet18",
                          "dataset=cifar10", "dataset.train_subset=64", "dataset.test_subset=100", "epochs=1",
                          "batch_size=32", "eval.protocols=[standard]", "eval.tsne_points=0", "eval.baseline=false",
                          f"hydra.run.dir={loss}"], tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        metrics = json.loads((tmp_path / loss / "metrics.json").read_text())
        assert metrics["train"]["images"] == 8 * 64  # 2 global and 6 local views of every image
