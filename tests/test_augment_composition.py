"""Compositions (issue #30): pipelines named in YAML, one per view, the ablation's targeted pair, overrides and
sweeps from the command line, one-line refusals, and a user's own compositions on Hydra's search path."""
import json

import pytest
import torch
import yaml

from cl_runner.data.augment import Augmentation, to_unit
from cl_runner.data.augment.colour import Solarize
from cl_runner.data.augment.filters import GaussianBlur
from cl_runner.data.datasets import ImageSet
from cl_runner.data.pairing import MultiViewSampler, PairSampler, TripletSampler
from cl_runner.errors import ConfigError
from cl_runner.randomness import TrainingStreams

from conftest import REPO, TINY, preset, run_main


def images(channels: int = 3, n: int = 64, side: int = 16) -> torch.Tensor:
    return torch.randint(0, 256, (n, channels, side, side), generator=torch.Generator().manual_seed(0),
                         dtype=torch.uint8)


def test_byol_gives_its_two_views_their_own_pipelines():
    byol = preset("byol")
    first, second = byol.view(0), byol.view(1)
    assert first.names == ("crop", "flip", "jitter", "grayscale", "blur")
    assert second.names == ("crop", "flip", "jitter", "grayscale", "blur_rare", "solarize")
    blur_first, blur_second = first.ops[-1], second.ops[-2]
    assert isinstance(blur_first, GaussianBlur) and isinstance(blur_second, GaussianBlur)
    assert (blur_first.p, blur_second.p) == (1.0, 0.1) and blur_first.sigma == blur_second.sigma
    assert isinstance(second.ops[-1], Solarize) and second.ops[-1].p == 0.2
    jitter = first.ops[1]
    assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == pytest.approx((0.4, 0.4, 0.2, 0.1))


def test_a_multiview_batch_puts_each_view_through_its_own_pipeline():
    train = ImageSet(images(n=200), torch.arange(200) % 4, list("abcd"))
    augmentation = Augmentation({"solarize": {"_target_": "cl_runner.data.augment.colour.Solarize", "p": 1.0}},
                                [[], ["solarize"]])
    sampler = MultiViewSampler(views=2)
    sampler.setup(train, augmentation, TrainingStreams.from_seed(0))
    ids = torch.arange(32)
    batch = sampler.batch(ids, TrainingStreams.from_seed(1)).images
    clean = to_unit(train.images[ids])
    assert torch.equal(batch[:32], clean * 2 - 1)  # view 0: nothing but the normalization
    assert torch.equal(batch[32:], torch.where(clean >= 0.5, 1 - clean, clean) * 2 - 1)  # view 1: solarized


def test_the_targeted_pair_crops_every_view_and_adds_the_targeted_operations_to_one():
    pair = preset("targeted_pair", "aug.first=color", "aug.second=blur")
    assert pair.view(0).names == ("crop",)
    assert pair.view(1).names == ("crop", "jitter", "grayscale", "blur")
    diagonal = preset("targeted_pair", "aug.first=sobel", "aug.second=sobel")
    assert diagonal.view(1).names == ("crop", "sobel")  # one operation alone
    crop_row = preset("targeted_pair", "aug.first=crop", "aug.second=noise")
    assert crop_row.view(1).names == ("crop", "noise")  # the base's crop is not repeated
    both = preset("targeted_pair", "aug.base=[]", "aug.branches=both", "aug.first=rotate", "aug.second=color")
    assert len(both.pipelines) == 1 and both.view(0).names == ("rotate", "jitter", "grayscale")


def test_an_operations_key_is_overridden_from_the_command_line_and_a_pipeline_written_inline():
    aug = preset("simclr", "aug.ops.blur.p=0.5", "aug.ops.jitter.strength=0.25", "aug.views=[crop,blur]")
    assert aug.view(1).names == ("crop", "blur") and aug.view(1).ops[-1].p == 0.5
    assert preset("simclr", "aug.ops.jitter.strength=0.25").view(1).ops[1].hue == pytest.approx(0.05)


@pytest.mark.parametrize("overrides,message", [
    (["aug.views=[[crop,blurr]]"], "aug.views names 'blurr', which is not an operation of aug.ops: crop, flip,"),
    (["+aug.ops.blur.radius=2"], "aug.ops.blur has no setting 'radius': GaussianBlur takes sigma, kernel, p"),
    (["aug.ops.blur.p=2"], "aug.ops.blur: p=2 is not allowed: p must be a probability in [0, 1]"),
    (["aug.views=3"], "aug.views=3 is not allowed: aug.views must be a list of pipelines"),
    (["aug.ops.crop._target_=torch.nn.Linear"], "aug.ops.crop._target_='torch.nn.Linear' is not an augmentation"),
    (["aug.ops.color=[jitter,color]", "aug.views=[[crop,color]]"], "aug.ops.color names itself through color"),
])
def test_a_bad_composition_is_one_line_naming_what_exists(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", "\\[").replace("(", "\\(")):
        preset("simclr", *overrides)


@pytest.mark.parametrize("sampler,views", [(lambda: PairSampler(), 2), (lambda: TripletSampler(), 2),
                                           (lambda: MultiViewSampler(views=3), 2)])
def test_per_view_pipelines_that_do_not_match_the_augmented_views_are_refused(sampler, views):
    augmentation = preset("byol")
    train = ImageSet(images(n=40), torch.arange(40) % 4, list("abcd"))
    with pytest.raises(ConfigError, match="aug.views gives 2 pipelines, one per view, but pairing="):
        sampler().setup(train, augmentation, TrainingStreams.from_seed(0))


def test_cl_run_refuses_a_bad_composition_before_reading_any_image(tmp_path, capfd):
    code, out, err = run_main([*TINY, "aug=simclr", "aug.views=[[crop,colr]]"], tmp_path, capfd)
    assert code == 2 and "aug.views names 'colr', which is not an operation of aug.ops" in err
    assert len(err.strip().splitlines()) == 1 and "data:" not in out + err
    code, _, err = run_main([*TINY, "aug=simclr", "aug.ops.blur.pp=1"], tmp_path, capfd)
    assert code == 2 and "did you mean aug.ops.blur.p?" in err
    code, _, err = run_main([*TINY, "aug=byol", "loss=ntxent", "pairing.augment_anchor=false"], tmp_path, capfd)
    assert code == 2 and "aug.views gives 2 pipelines" in err


def test_a_users_own_composition_lives_in_their_folder_on_hydras_search_path(tmp_path, capfd):
    mine = tmp_path / "my_conf"
    (mine / "aug").mkdir(parents=True)
    (mine / "aug" / "crop_and_noise.yaml").write_text(
        "defaults:\n  - ops: default\n  - _self_\n"
        "_target_: cl_runner.data.augment.Augmentation\n_recursive_: false\n"
        "ops:\n  noise: {std: [0.1, 0.1]}\n  crop_noise: [crop, noise]\n"
        "views: [[crop_noise]]\n")
    code, out, err = run_main([*TINY, "epochs=0", f"hydra.searchpath=[file://{mine}]", "aug=crop_and_noise",
                               "hydra.run.dir=run"], tmp_path, capfd)
    assert code == 0, err
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["aug"]["views"] == [["crop_noise"]] and config["aug"]["ops"]["noise"]["std"] == [0.1, 0.1]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["scenario"]["aug"] == "crop_and_noise"


def test_a_sweep_over_two_operations_runs_a_job_each_and_reports_the_matrix(tmp_path, capfd):
    code, _, err = run_main(["-m", *TINY, "eval.tsne_points=0", "dataset.train_subset=128", "loss=ntxent",
                             "aug=targeted_pair", "aug.first=choice(color,rotate90)", "aug.second=noise,sobel",
                             "hydra.sweep.dir=sweep"], tmp_path, capfd)
    assert code == 0, err
    sweep = tmp_path / "sweep"
    folders = sorted(p.name for p in sweep.iterdir() if (p / "metrics.json").exists())
    assert len(folders) == 4 and any("aug.first=color,aug.second=sobel" in f for f in folders)
    report = (sweep / "results.md").read_text()
    assert "## Matrix: aug.first (rows) x aug.second (columns)" in report
    assert "| aug.first \\ aug.second | noise | sobel |" in report
    assert (sweep / "matrix.png").stat().st_size > 10_000


def test_the_fixed_views_of_a_pair_sampler_come_from_the_positives_pipeline():
    train = ImageSet(images(n=50), torch.arange(50) % 5, list("abcde"))
    augmentation = Augmentation({"solarize": {"_target_": "cl_runner.data.augment.colour.Solarize", "p": 1.0}},
                                [["solarize"]])
    sampler = PairSampler(fixed_views=True)
    sampler.setup(train, augmentation, TrainingStreams.from_seed(0))
    unit = to_unit(train.images)
    expected = torch.where(unit >= 0.5, 1 - unit, unit).mul(255).round().to(torch.uint8)
    assert torch.equal(sampler.stored_views, expected)


@pytest.mark.parametrize("channels", [1, 3])
def test_every_operation_of_the_library_builds_from_its_yaml_and_runs(channels):
    library = yaml.safe_load((REPO / "conf" / "aug" / "ops" / "default.yaml").read_text())
    x = images(channels, n=8, side=12)
    for name in library:
        out = preset("none", f"aug.views=[[{name}]]")(x, torch.Generator().manual_seed(0))
        assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1, name
