"""config.py's checks in-process: the static ones on the composed config, and the ones that need the data."""
from __future__ import annotations

import re

import pytest
import torch
from hydra import compose, initialize_config_dir

from cl_runner.config import check_data, check_image_size, validate
from cl_runner.data.datasets import ImageSet, Splits
from cl_runner.errors import UserError
from cl_runner.models import Encoder, PamiCNN, ResNet18
from conftest import REPO


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def images(n: int, side: int, channels: int = 1) -> ImageSet:
    return ImageSet(torch.zeros(n, channels, side, side, dtype=torch.uint8), torch.arange(n) % 2, ["a", "b"])


def test_a_batch_that_does_not_split_over_the_processes_is_refused_with_two_sizes_that_do():
    cfg = composed("batch_size=127")
    validate(cfg, processes=1)
    with pytest.raises(UserError, match=r"^batch_size=127 does not split evenly over 2 processes: use a multiple "
                                        r"of 2 \(e.g. 126 or 128\)$"):
        validate(cfg, processes=2)
    validate(composed("batch_size=128"), processes=4)


def test_settings_larger_than_the_data_are_refused_once_it_is_read():
    data = Splits(images(100, 28), images(30, 28), images(100, 28))
    check_data(composed("batch_size=100"), data, [])
    with pytest.raises(UserError, match=r"batch_size=101 is larger than the training set \(100 images\)"):
        check_data(composed("batch_size=101"), data, [])
    check_data(composed("batch_size=8", "eval.tsne_points=1000"), data, [])  # the default: all there are
    with pytest.raises(UserError, match="eval.tsne_points=31 is more than the 30 test images"):
        check_data(composed("batch_size=8", "eval.tsne_points=31"), data, ["eval.tsne_points=31"])


@pytest.mark.parametrize("side, accepted", [(17, False), (18, True), (33, True), (34, False)])
def test_the_studys_cnn_takes_18_to_33_pixels_and_says_so(side, accepted):
    encoder = Encoder(PamiCNN(in_channels=1))
    if accepted:
        check_image_size(encoder, images(1, side))
        return
    with pytest.raises(UserError, match=f"the encoder's PamiCNN gives .* for images of {side}x{side}, not its 32: it "
                                        "takes images of 18x18 to 33x33"):
        check_image_size(encoder, images(1, side))


def test_an_encoder_that_takes_any_size_takes_small_images():
    check_image_size(Encoder(ResNet18(in_channels=3)), images(1, 8, channels=3))


def test_a_target_that_cannot_be_imported_or_a_flag_that_is_not_a_bool_is_refused_in_one_line():
    validate(composed("loss._target_=cl_runner.losses.TripletMarginLoss"))
    for override, message in [("loss._target_=cl_runner.losses.NoSuchLoss", "loss._target_='cl_runner.losses.NoSuchLoss'"
                               " is not a class or function that can be imported"),
                              ("aug._target_=0", "aug._target_=0 is not a class or function"),
                              ("optimizer._partial_=0", "optimizer._partial_=0 is not allowed: it must be true or "
                                                        "false")]:
        with pytest.raises(UserError, match=f"^{re.escape(message)}"):
            validate(composed(override))


def test_compile_takes_one_choice_for_every_part_or_one_per_part():
    for overrides in ([], ["compile=true"], ["compile=false"], ["compile=auto"], ["compile.batch=true"],
                      ["compile.encoder=false", "compile.batch=auto"]):
        validate(composed(*overrides))
    for override in ("compile=maybe", "compile.batch=1", "compile.encoder=yes"):
        with pytest.raises(UserError, match=r"^compile=.* is not allowed: compile must be auto, true or false: for "
                                            r"every part, or for each of compile.batch and compile.encoder$"):
            validate(composed(override))
