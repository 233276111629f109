"""The validation split (#24): a seeded, stratified slice of the training images, disjoint from what trains, never
touching the test set, scored in metrics.json's `val`."""
import json

import pytest
import torch

from cl_runner.data.datasets import ImageSet, Splits, read_digits
from cl_runner.data.splits import hold_out
from cl_runner.errors import UserError
from conftest import run_main


def numbered(n: int, classes: int) -> Splits:
    """Images whose first pixel pair spells their index, so every split's members can be named exactly."""
    index = torch.arange(n)
    images = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = index // 256, index % 256
    train = ImageSet(images, index % classes, [str(c) for c in range(classes)])
    test = ImageSet(images[:50].clone(), (index % classes)[:50].clone(), train.classes)
    return Splits(train, test, train)


def indices(split: ImageSet) -> list[int]:
    return (split.images[:, 0, 0, 0].long() * 256 + split.images[:, 0, 0, 1].long()).tolist()


def test_the_validation_images_are_a_stratified_seeded_slice_disjoint_from_training():
    data = numbered(1000, classes=7)  # class counts 143 (6 classes) and 142: rounding per class
    split = hold_out(data, 0.1, seed=3)
    train, val = indices(split.train), indices(split.val)
    assert not set(train) & set(val) and sorted(train + val) == list(range(1000))
    assert train == sorted(train)  # the training images keep their order
    assert split.probe is split.train and split.test is data.test  # the probes fit on what trains; test untouched
    counts = torch.bincount(split.val.labels, minlength=7)
    assert counts.tolist() == [round(0.1 * c) for c in torch.bincount(data.train.labels).tolist()]
    assert torch.equal(split.val.labels, torch.tensor(val) % 7)
    assert torch.equal(split.train.labels, torch.tensor(train) % 7)
    assert indices(hold_out(data, 0.1, seed=3).val) == val  # seeded
    assert indices(hold_out(data, 0.1, seed=4).val) != val
    assert hold_out(data, 0.0, seed=3) is data


def test_an_unlabelled_training_set_gives_a_random_slice_and_a_separate_probe_set_stays():
    data = numbered(200, classes=2)
    unlabelled = ImageSet(data.train.images, None, [])
    split = hold_out(Splits(unlabelled, data.test, data.train), 0.25, seed=0)
    assert len(split.val) == 50 and split.val.labels is None and split.probe is data.train


@pytest.mark.parametrize("fraction, message", [(0.001, "holds out no image of the 200 training images"),
                                               (0.999, "leaves a class without training images")])
def test_a_fraction_that_leaves_one_side_empty_is_refused(fraction, message):
    with pytest.raises(UserError, match=message):
        hold_out(numbered(200, classes=2), fraction, seed=0)


def test_a_run_with_a_validation_split_scores_it_apart_from_the_unchanged_test_set(tmp_path, capfd):
    common = ["dataset=digits", "epochs=1", "batch_size=64", "eval.tsne_points=0", "log_every=1"]
    runs = {}
    for name, extra in (("plain", []), ("validated", ["dataset.val_fraction=0.2"])):
        code, _, err = run_main([*common, *extra, f"hydra.run.dir={tmp_path / name}"], tmp_path, capfd)
        assert code == 0, err[-2000:]
        runs[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    plain, validated = runs["plain"], runs["validated"]
    assert "val" not in plain
    counts = torch.bincount(read_digits("train").labels).tolist()
    held = sum(round(0.2 * c) for c in counts)
    assert validated["val"]["scored_images"] == held  # scored on the held-out images
    assert plain["train"]["tuples"] == sum(counts) and validated["train"]["tuples"] == sum(counts) - held  # not trained on
    for protocol in ("paper", "standard"):  # the same test images are scored either way
        assert validated[protocol]["scored_images"] == plain[protocol]["scored_images"]
    assert 0 <= validated["val"]["linear_top1"] <= 1 and "val" in validated["gain"] and "val" in validated["baseline"]
    assert 1 <= validated["val"]["rankme"] <= validated["diagnostics"]["embedding_dim"]  # label-free, held-out images
    assert validated["val"]["rankme"] != validated["diagnostics"]["rankme"]  # not the test images' figure
