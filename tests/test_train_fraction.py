"""dataset.train_fraction (#31): a seeded, stratified share of the training images, not the first N, for
experiments on the size of the data set (i-Mix's small-data claim)."""
import json

import pytest
import torch

from cl_runner.data.datasets import ImageSet, Splits
from cl_runner.data.splits import hold_out, keep_fraction
from cl_runner.errors import UserError
from conftest import run_main
from test_validation_split import indices, numbered


def test_the_kept_images_are_a_stratified_seeded_share_in_their_order():
    data = numbered(1000, classes=7)
    kept = keep_fraction(data, 0.25, seed=5)
    chosen = indices(kept.train)
    assert chosen == sorted(chosen) and len(set(chosen)) == len(chosen)
    assert chosen != list(range(len(chosen)))  # not the first N
    assert torch.bincount(kept.train.labels, minlength=7).tolist() == [
        round(0.25 * c) for c in torch.bincount(data.train.labels).tolist()]
    assert torch.equal(kept.train.labels, torch.tensor(chosen) % 7)
    assert kept.probe is kept.train and kept.test is data.test  # the probes fit on the same images; test untouched
    assert indices(keep_fraction(data, 0.25, seed=5).train) == chosen
    assert indices(keep_fraction(data, 0.25, seed=6).train) != chosen
    assert keep_fraction(data, 1.0, seed=5) is data


def test_the_fraction_is_drawn_from_what_the_validation_split_leaves():
    split = hold_out(numbered(1000, classes=5), 0.2, seed=0)
    kept = keep_fraction(split, 0.5, seed=1)
    assert kept.val is split.val and set(indices(kept.train)) <= set(indices(split.train))
    assert len(kept.train) == 400


def test_a_fraction_that_empties_a_class_is_refused_in_one_line():
    with pytest.raises(UserError, match="train_fraction=0.01 keeps no image of some class"):
        keep_fraction(numbered(70, classes=7), 0.01, seed=0)


def test_a_separate_probe_set_is_kept_whole():
    data = numbered(200, classes=2)
    unlabelled = ImageSet(data.train.images, None, [])
    kept = keep_fraction(Splits(unlabelled, data.test, data.train), 0.5, seed=0)
    assert len(kept.train) == 100 and kept.probe is data.train


def test_a_run_trains_on_its_fraction_and_refuses_a_bad_one(tmp_path, capfd):
    common = ["dataset=digits", "epochs=1", "batch_size=64", "eval.tsne_points=0", "eval.baseline=false"]
    code, _, err = run_main([*common, "dataset.train_fraction=0.5", "hydra.run.dir=half"], tmp_path, capfd)
    assert code == 0, err
    metrics = json.loads((tmp_path / "half" / "metrics.json").read_text())
    assert metrics["train"]["tuples"] == round(0.5 * 1437)  # one triplet per kept training image
    code, _, err = run_main([*common, "dataset.train_fraction=0", "hydra.run.dir=bad"], tmp_path, capfd)
    assert code == 2 and err.strip().splitlines()[-1] == (
        "cl-run: error: dataset.train_fraction=0 is not allowed: dataset.train_fraction must be a number in (0, 1]")
