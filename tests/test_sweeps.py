"""A multirun over every option of every config group, found by glob (no hand-kept list), with tiny settings.
The sweeps run one job after another in this process (`cl-run`'s own function, Hydra's basic launcher); they take
minutes, so they are marked slow, and the composed configs are checked in the fast tier."""
import json
import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from test_cifar100 import write_cifar100
from conftest import REPO, run_main

CONF = REPO / "conf"
SMOKE = ["epochs=1", "batch_size=32", "dataset.train_subset=96", "dataset.test_subset=200", "eval.tsne_points=40",
         "log_every=1", "eval.cosine_knn_k=20"]
# The pairing group is swept through the losses: each loss selects its own pairing, and a loss on a pairing it
# cannot use is refused (tested in test_cli.py). The coverage check below still demands every pairing option.
# An experiment is a sweep of its own: each runs in a multirun of its own (below).
SWEPT_GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra", "pairing", "experiment"))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def scenarios(sweep: Path) -> list[dict]:
    return [json.loads(p.read_text())["scenario"] for p in sorted(sweep.glob("*/metrics.json"))]


@pytest.mark.slow
@pytest.mark.parametrize("group", SWEPT_GROUPS)
def test_every_option_of_the_group_runs(group, tmp_path, data_root, capfd):
    # a folder of one's own needs its path, CIFAR-100 files that no machine here has: both join the sweep below
    own_settings = {"dataset": ("image_folder", "cifar100"), "aug": ("multicrop",)}.get(group, ())
    folder_free = [o for o in options(group) if o not in own_settings]
    # a pipeline per view (byol, targeted_pair) needs both views augmented: the default triplet's anchor too
    both_views = ["pairing.augment_anchor=true"] if group == "aug" else []
    code, _, err = run_main(["-m", f"{group}={','.join(folder_free)}", *SMOKE, *both_views, "hydra.sweep.dir=sweep"],
                            tmp_path, capfd)
    assert code == 0, err[-3000:]
    if group == "dataset":  # a folder of one's own needs its path: the same sweep, grown by that job
        folder = image_folder(tmp_path / "images")
        code, _, err = run_main(["-m", "dataset=image_folder", f"dataset.path={folder}", *SMOKE,
                                 "hydra.sweep.dir=sweep"], tmp_path, capfd)
        assert code == 0, err[-3000:]
        write_cifar100(tmp_path / "cifar100", fine_classes=4)  # files in its exact format (test_cifar100.py)
        code, _, err = run_main(["-m", "dataset=cifar100", f"dataset.root={tmp_path / 'cifar100'}",
                                 "dataset.verify=false", *SMOKE, "dataset.train_subset=null", "dataset.test_subset=null",
                                 "eval.tsne_points=10",
                                 "hydra.sweep.dir=sweep"], tmp_path, capfd)
        assert code == 0, err[-3000:]
    if group == "aug":  # multi-crop's local views need a loss that takes them, and a size the encoder takes
        code, _, err = run_main(["-m", "aug=multicrop", "loss=ntxent", "pairing.local_views=6",
                                 "aug.ops.local_crop.size=20", *SMOKE, "hydra.sweep.dir=sweep"], tmp_path, capfd)
        assert code == 0, err[-3000:]
    ran = scenarios(tmp_path / "sweep")
    assert sorted(s[group] for s in ran) == options(group)
    assert (tmp_path / "sweep" / "results.md").exists()
    if group == "loss":
        assert {s["pairing"] for s in ran} == set(options("pairing"))


def image_folder(root: Path) -> Path:
    """The embedded sample's first 200 training and test images as PNGs in class folders."""
    from PIL import Image

    from cl_runner.data.datasets import MnistSample

    data = MnistSample().load()
    for split, images in (("train", data.train), ("test", data.test)):
        for i in range(200):
            path = root / split / images.classes[int(images.labels[i])] / f"{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images.images[i, 0].numpy()).save(path)
    return root


def leaves(tree: dict, prefix: str = "") -> dict:
    """{"a.b": value} for every leaf of a nested dict."""
    flat = {}
    for key, value in tree.items():
        flat.update(leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


@pytest.mark.parametrize("experiment", options("experiment"))
def test_an_experiment_s_own_values_win_over_the_defaults(experiment):
    own = OmegaConf.to_container(OmegaConf.load(CONF / "experiment" / f"{experiment}.yaml"))
    own.pop("defaults", None), own.pop("hydra", None)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        composed = OmegaConf.to_container(compose("config", overrides=[f"experiment={experiment}"]))
    assert leaves(own) and leaves(own).items() <= leaves(composed).items()


FULL_GRIDS = ("paper_grid",)  # run whole: the study's 12 scenarios are checked below


def smaller_grid(experiment: str, most: int = 4) -> list[str]:
    """Command-line values that shrink an experiment's grid of more than `most` jobs (the augmentation matrix's
    49, colour strength's 8) to 2: the first key's first two values, the first value of every other key (they
    replace the sweeper's). The grids of FULL_GRIDS stay whole; a search's space is not a grid."""
    params = OmegaConf.load(CONF / "experiment" / f"{experiment}.yaml").get("hydra", {}).get("sweeper", {})
    levels = {key: str(value).split(",") for key, value in (params.get("params") or {}).items()}
    searched = any("(" in str(value) for value in levels.values())  # a search's space (interval, tag): no grid
    if experiment in FULL_GRIDS or searched or math.prod(len(v) for v in levels.values()) <= most:
        return []
    return [f"{key}={','.join(values[:2] if i == 0 else values[:1])}" for i, (key, values) in enumerate(levels.items())]


@pytest.mark.slow
@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_runs(experiment, tmp_path, data_root, capfd):
    search = experiment.startswith("search_")  # an Optuna search: a few of its trials
    code, _, err = run_main(["-m", f"experiment={experiment}", *SMOKE, "hydra.sweep.dir=sweep",
                             *(["hydra.sweeper.n_trials=2"] if search else smaller_grid(experiment))], tmp_path,
                            capfd)
    assert code == 0, err[-3000:]
    ran = scenarios(tmp_path / "sweep")
    assert ran and all(s["experiment"] == experiment for s in ran)
    if search:
        assert len(ran) == 2 and "## Best setting" in (tmp_path / "sweep" / "results.md").read_text()
    if experiment == "paper_grid":  # the study's 12 scenarios
        assert {(s["dataset"], s["aug"], s["loss"]) for s in ran} == {
            (d, a, loss) for d in ("mnist", "cifar10") for a in ("none", "guo", "simclr")
            for loss in ("cosine_embedding", "triplet")}
    if experiment == "methods_grid":  # every loss, found by glob
        assert sorted(s["loss"] for s in ran) == options("loss")
    if smaller_grid(experiment):
        assert len(ran) == 2 and (tmp_path / "sweep" / "results.md").exists()
