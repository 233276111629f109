"""A finished run's encoder in one's own code (cl_runner.load_encoder, cl_runner.embed), on a real run folder:
the same embeddings as the run's evaluation, the input convention enforced, nothing run from the folder."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

import cl_runner
from cl_runner import evaluation
from cl_runner.data.datasets import read_digits
from conftest import TINY, main_here, run_main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    assert main_here([*TINY, "encoder.projector=[16,8]", "eval.tsne_points=0", "hydra.run.dir=run"], root) == 0
    return root / "run"


def test_the_loaded_encoder_embeds_as_the_run_evaluated(run_dir):
    encoder = cl_runner.load_encoder(run_dir)
    assert isinstance(encoder, torch.nn.Module) and not encoder.training and encoder.channels == 1
    test = read_digits("test")
    rebuilt = encoder.encoder  # the run's own embedding code on the loaded weights
    expected = evaluation.embed(rebuilt, test.images)
    assert np.allclose(cl_runner.embed(run_dir, test.images), expected, atol=1e-6)
    as_floats = cl_runner.embed(encoder, test.images.float() / 255)  # torchvision's usual scaling: the same
    assert np.allclose(as_floats, expected, atol=1e-6)
    head = cl_runner.embed(encoder, test.images[:10], which="projector")
    assert head.shape == (10, 8) and expected.shape[1] == 32
    assert torch.allclose(encoder(test.images[:10]), torch.from_numpy(expected[:10]), atol=1e-6)


def test_a_wrong_input_convention_is_refused_in_one_line(run_dir):
    encoder = cl_runner.load_encoder(run_dir)
    images = read_digits("test").images[:4]
    with pytest.raises(ValueError, match=r"float images must lie in \[0, 1\] \(e.g. uint8 / 255\), got values in"):
        encoder(images.float() / 127.5 - 1)  # already normalized
    with pytest.raises(ValueError, match=r"float images must lie in \[0, 1\]"):
        encoder(images.float())  # 0-255 as floats
    with pytest.raises(ValueError, match=r"images must be \[N, 1, H, W\]"):
        encoder(images.repeat(1, 3, 1, 1))
    with pytest.raises(ValueError, match="which must be backbone or projector"):
        encoder.features(images, "head")


def test_a_folder_without_a_finished_run_or_with_a_foreign_class_is_refused(run_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no finished run: it needs encoder.pt and config.yaml"):
        cl_runner.load_encoder(tmp_path)
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    (tampered / "encoder.pt").write_bytes((run_dir / "encoder.pt").read_bytes())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    marker = tmp_path / "ran"
    config["encoder"]["backbone"] = {"_target_": "pathlib.Path.touch", "self": str(marker)}
    (tampered / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=r"names pathlib.Path.touch: an encoder config may only name cl-runner's"):
        cl_runner.load_encoder(tampered)
    assert not marker.exists()
    with pytest.raises(AttributeError, match="has no attribute 'load_encodr'"):
        cl_runner.load_encodr


def test_export_embeddings_writes_the_evaluated_embeddings_and_labels_as_plain_npy(tmp_path, capfd):
    code, _, err = run_main([*TINY, "eval.tsne_points=0", "eval.protocols=[paper]", "export.embeddings=true",
                             "hydra.run.dir=run"], tmp_path, capfd)
    assert code == 0, err[-2000:]
    run = tmp_path / "run"
    test = np.load(run / "embeddings_test.npy", allow_pickle=False)
    train = np.load(run / "embeddings_train.npy", allow_pickle=False)  # embedded for the export: no standard probe
    digits_test, digits_train = read_digits("test"), read_digits("train")
    assert test.shape == (360, 32) and train.shape == (1437, 32) and test.dtype == np.float32
    assert np.allclose(test, cl_runner.embed(run, digits_test.images), atol=1e-6)
    assert np.array_equal(np.load(run / "labels_test.npy"), digits_test.labels.numpy())
    assert np.array_equal(np.load(run / "labels_train.npy"), digits_train.labels.numpy())
    code, _, err = run_main([*TINY, "export.embeddings=yes", "hydra.run.dir=refused"], tmp_path, capfd)
    assert code != 0 and err.strip().splitlines()[-1].endswith("export.embeddings must be true or false")
