import pickle

import pytest
import torch
from hydra.utils import instantiate

from cl_runner.data.datasets import (MNIST, MNIST_SAMPLE, MnistSample, read_cifar10, read_digits, read_mnist,
                                    read_mnist_sample, verify_md5)
from cl_runner.errors import UserError
from conftest import Planted


def test_mnist_reader_gives_the_documented_first_labels(data_root):
    train, test = read_mnist(data_root, "train"), read_mnist(data_root, "test")
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28)
    assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_cifar10_reader_gives_the_documented_first_labels_and_statistics(data_root):
    train, test = read_cifar10(data_root, "train"), read_cifar10(data_root, "test")
    assert train.images.shape == (50000, 3, 32, 32) and test.images.shape == (10000, 3, 32, 32)
    assert train.labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert torch.bincount(train.labels).tolist() == [5000] * 10
    mean = train.images[:, :, ::4, ::4].float().mean(dim=(0, 2, 3)) / 255  # a subsample is close enough
    assert torch.allclose(mean, torch.tensor([0.4914, 0.4822, 0.4465]), atol=0.01)


def test_the_shipped_mnist_sample_is_the_first_images_of_mnist(data_root):
    for split, size in (("train", 10_000), ("test", 2_000)):
        sample, full = read_mnist_sample(split), read_mnist(data_root, split)
        assert len(sample) == size and sample.images.dtype == torch.uint8 and sample.labels.dtype == torch.int64
        assert torch.equal(sample.images, full.images[:size]) and torch.equal(sample.labels, full.labels[:size])
    assert MNIST_SAMPLE.stat().st_size < 3_000_000
    assert (MNIST_SAMPLE.parent / "MNIST_SAMPLE_NOTICE").read_text().count("CC BY-SA 3.0") >= 1


def test_the_bare_run_uses_the_embedded_sample():
    from hydra import compose, initialize_config_dir

    from conftest import REPO

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config")
    dataset = instantiate(cfg.dataset)
    assert isinstance(dataset, MnistSample) and len(dataset.load().test) == 2000


def test_digits_is_embedded_upsampled_and_stratified():
    train, test = read_digits("train"), read_digits("test")
    assert len(train) + len(test) == 1797 and len(test) == 360
    assert train.images.shape[1:] == (1, 28, 28) and train.images.dtype == torch.uint8
    assert train.images.max() == 255
    assert torch.bincount(test.labels).min() >= 35


def test_truncated_mnist_file_is_named_in_the_error(data_root, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes((data_root / "MNIST" / "raw" / name).read_bytes())
    image_file = raw / "t10k-images-idx3-ubyte"
    image_file.write_bytes(image_file.read_bytes()[:5000])
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte.*truncated"):
        read_mnist(tmp_path, "test")
    image_file.write_bytes(b"not an idx file at all")
    with pytest.raises(UserError, match="not a uint8 IDX file"):
        read_mnist(tmp_path, "test")


def test_corrupt_cifar_batch_is_named_in_the_error(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({"data": [1, 2, 3]})[:10])
    with pytest.raises(UserError, match="test_batch.*not a readable CIFAR-10 batch"):
        read_cifar10(tmp_path, "test")


def test_a_cifar_batch_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    import pickle

    import numpy as np

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "ran"
    batch = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1], "batch_label": Planted(marker)}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=4))
    with pytest.raises(UserError, match=r"test_batch is not a CIFAR-10 batch: it names pathlib\..*nothing in it was "
                                        r"run"):
        read_cifar10(tmp_path, "test")
    assert not marker.exists()
    batch["batch_label"] = "testing batch 1 of 1"  # the same file without the planted object reads, either protocol
    for protocol in (2, 4):
        (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=protocol))
        assert read_cifar10(tmp_path, "test").labels.tolist() == [0, 1]


def test_gzipped_idx_files_read_as_torchvision_downloads_them(data_root, tmp_path):
    import gzip

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / f"{name}.gz").write_bytes(gzip.compress((data_root / "MNIST" / "raw" / name).read_bytes()))
    zipped, plain = MNIST(str(tmp_path)).read("test"), MNIST(str(data_root)).read("test")
    assert torch.equal(zipped.images, plain.images) and torch.equal(zipped.labels, plain.labels)
    damaged = bytearray(gzip.decompress((raw / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    damaged[100] = (damaged[100] + 1) % 10
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(damaged)))
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte is damaged"):  # its content's MD5 is checked
        MNIST(str(tmp_path)).read("test")


def test_a_damaged_file_fails_its_checksum(data_root, tmp_path):
    for name in ("t10k-labels-idx1-ubyte", "train-labels-idx1-ubyte"):
        verify_md5(data_root / "MNIST" / "raw" / name)  # the intact files pass
    damaged = tmp_path / "t10k-labels-idx1-ubyte"
    raw = bytearray((data_root / "MNIST" / "raw" / damaged.name).read_bytes())
    raw[100] = (raw[100] + 1) % 10  # one label changed: the header and size still look right
    damaged.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte is damaged.*dataset.verify=false"):
        verify_md5(damaged)


def test_a_run_folder_that_cannot_be_created_is_one_clear_error(tmp_path):
    from omegaconf import OmegaConf

    from cl_runner import run_folder

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot write into the run folder"):
        run_folder.claim(blocker / "run", {}, OmegaConf.create({}), [])
