"""CIFAR-100 (`dataset=cifar100`) from files written here in its exact format: ROOT/cifar-100-python/{train,test,
meta}, Python 2 protocol-2 pickles of dicts (their strings Python 2's, read back with encoding="latin1"). No
machine has the real files, so the pixels and labels read are compared with those written, and every refusal
(damaged, hostile, truncated, missing files, a bad label kind) is one line."""
from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from cl_runner.cli import config_dir
from cl_runner.data.datasets import CIFAR100, KNOWN_MD5, read_cifar100, verify_md5
from cl_runner.errors import ConfigError, UserError
from conftest import run_main

FINE = [f"fine_{i}" for i in range(100)]
COARSE = [f"coarse_{i}" for i in range(20)]
SIZES = {"train": 50, "test": 20}


class Python2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2's str (the BINSTRING opcodes), as the official files hold their keys,
    names and numpy's array bytes."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_python2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = save_python2_str
    dispatch[bytes] = save_python2_str


def python2_pickle(obj) -> bytes:
    """`obj` pickled with protocol 2 as Python 2 pickled it (cPickle.dump(obj, f, 2))."""
    import io

    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def write_cifar100(root: Path, fine_classes: int = 100, seed: int = 0) -> dict[str, dict]:
    """A small CIFAR-100 under ROOT/cifar-100-python (SIZES images; fine labels drawn from the first
    `fine_classes`, each in superclass fine % 20): what each split's file holds, as written."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, size in SIZES.items():
        fine = rng.integers(0, fine_classes, size).tolist()  # lists of ints, as in the official files
        written[split] = {"data": rng.integers(0, 256, (size, 3072), dtype=np.uint8), "fine_labels": fine,
                          "coarse_labels": [f % 20 for f in fine],
                          "filenames": [f"image_{i}.png" for i in range(size)],
                          "batch_label": f"{split}ing batch 1 of 1"}
        (folder / split).write_bytes(python2_pickle(written[split]))
    (folder / "meta").write_bytes(python2_pickle({"fine_label_names": FINE, "coarse_label_names": COARSE}))
    return written


@pytest.fixture
def fake(tmp_path) -> dict[str, dict]:
    return write_cifar100(tmp_path)


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


def test_the_fake_files_are_python2_pickles_that_numpy_reads_back(tmp_path, fake):
    raw = (tmp_path / "cifar-100-python" / "train").read_bytes()
    assert raw[:2] == b"\x80\x02" and b"\x8c" not in raw[:200]  # protocol 2, no protocol-4 SHORT_BINUNICODE
    with pytest.raises(UnicodeDecodeError):  # Python 2's str of the pixels: only latin1 decodes them
        pickle.loads(raw)


@pytest.mark.parametrize("split", ["train", "test"])
def test_pixels_and_fine_and_coarse_labels_read_back_exactly(tmp_path, fake, split):
    written = fake[split]
    fine = CIFAR100(str(tmp_path), verify=False).read(split)
    coarse = CIFAR100(str(tmp_path), verify=False, label_kind="coarse").read(split)
    assert fine.images.shape == (SIZES[split], 3, 32, 32) and fine.images.dtype == torch.uint8
    assert torch.equal(fine.images, torch.from_numpy(written["data"].reshape(-1, 3, 32, 32)))
    assert torch.equal(coarse.images, fine.images)
    # each row: the red plane's 1024 pixels (row-major), then green's, then blue's
    for i, c, y, x in ((0, 0, 0, 0), (1, 1, 5, 7), (SIZES[split] - 1, 2, 31, 31)):
        assert fine.images[i, c, y, x].item() == written["data"][i, c * 1024 + y * 32 + x]
    assert fine.labels.dtype == torch.int64 and fine.labels.tolist() == written["fine_labels"]
    assert coarse.labels.tolist() == written["coarse_labels"]
    assert fine.classes == FINE and coarse.classes == COARSE


def test_the_config_builds_it_and_subsets_and_label_kind_pass_through(tmp_path, fake):
    overrides = ["dataset=cifar100", f"dataset.root={tmp_path}", "dataset.verify=false",
                 "dataset.label_kind=coarse", "dataset.train_subset=10", "dataset.test_subset=20",
                 "dataset.train_fraction=0.5"]
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    assert cfg.dataset.label_kind == "coarse"
    dataset = instantiate(cfg.dataset)
    assert isinstance(dataset, CIFAR100) and dataset.name == "cifar100" and dataset.labelled
    assert dataset.train_fraction == 0.5  # the base's settings pass through (experiment.py draws the share)
    data = dataset.load()
    assert len(data.train) == 10 and len(data.test) == 20 and data.probe is data.train
    assert data.train.labels.tolist() == fake["train"]["coarse_labels"][:10] and data.train.classes == COARSE
    with initialize_config_dir(config_dir(), version_base="1.3"):
        default = compose("config", overrides=["dataset=cifar100"]).dataset
    assert default.label_kind == "fine" and default.verify is True


def test_the_md5_table_holds_the_official_sums():
    assert KNOWN_MD5["cifar-100-python/train"] == {"16019d7e3df5f24257cddd939b257f8d"}
    assert KNOWN_MD5["cifar-100-python/test"] == {"f0ef6b0ae62326f3e7ffdfab6717acfc"}
    assert KNOWN_MD5["cifar-100-python/meta"] == {"7973b15100ade9c7d40fb424638fde48"}
    assert "train" not in KNOWN_MD5 and "meta" not in KNOWN_MD5  # keyed with the folder, as CIFAR-100's only


def test_files_that_are_not_the_official_ones_are_refused_by_default(tmp_path, fake):
    with pytest.raises(UserError) as excinfo:
        CIFAR100(str(tmp_path)).read("test")
    message = one_line_error(excinfo)
    assert "cifar-100-python/meta is damaged or not the official file" in message
    assert "dataset.verify=false" in message
    (tmp_path / "cifar-100-python" / "meta").write_bytes(python2_pickle({"fine_label_names": FINE}))
    with pytest.raises(UserError, match="cifar-100-python/meta is damaged"):
        read_cifar100(tmp_path, "train", verify=True)
    other = tmp_path / "elsewhere" / "train"  # a file of the same name in another data set's folder: not checked
    other.parent.mkdir()
    other.write_bytes(b"anything")
    verify_md5(other)


class RunsACommand:
    """Unpickling it would call os.system (pickled as posix.system): a data file that runs code when read."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("hostile", ["train", "meta"])
def test_a_file_that_would_run_code_is_refused_and_runs_nothing(tmp_path, fake, hostile):
    marker = tmp_path / "ran"
    content = fake["train"] if hostile == "train" else {"fine_label_names": FINE, "coarse_label_names": COARSE}
    content = {**content, "batch_label": RunsACommand(marker)}
    (tmp_path / "cifar-100-python" / hostile).write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(UserError) as excinfo:
        CIFAR100(str(tmp_path), verify=False).read("train")
    message = one_line_error(excinfo)
    assert f"cifar-100-python/{hostile} is not a CIFAR-100 " in message
    assert f"it names {os.system.__module__}.system" in message and "nothing in it was run" in message
    assert not marker.exists()


@pytest.mark.parametrize("damaged", ["test", "meta"])
def test_a_truncated_file_is_one_line_naming_it(tmp_path, fake, damaged):
    path = tmp_path / "cifar-100-python" / damaged
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(UserError) as excinfo:
        CIFAR100(str(tmp_path), verify=False).read("test")
    assert f"cifar-100-python/{damaged} is not a readable CIFAR-100 " in one_line_error(excinfo)
    assert "truncated or corrupt" in str(excinfo.value)
    path.write_bytes(b"")
    with pytest.raises(UserError, match=f"{damaged} is not a readable CIFAR-100 .*truncated or corrupt"):
        CIFAR100(str(tmp_path), verify=False).read("test")


def test_a_file_lacking_its_labels_or_with_a_count_mismatch_is_refused(tmp_path, fake):
    path = tmp_path / "cifar-100-python" / "test"
    path.write_bytes(python2_pickle({**fake["test"], "fine_labels": fake["test"]["fine_labels"][:-1]}))
    with pytest.raises(UserError) as excinfo:
        CIFAR100(str(tmp_path), verify=False).read("test")
    assert one_line_error(excinfo).endswith("cifar-100-python/test holds 20 images but 19 labels")
    assert CIFAR100(str(tmp_path), verify=False, label_kind="coarse").read("test").labels.shape == (20,)
    path.write_bytes(python2_pickle({k: v for k, v in fake["test"].items() if k != "coarse_labels"}))
    with pytest.raises(UserError, match=r"test is not a readable CIFAR-100 file \(truncated or corrupt: "
                                        r"'coarse_labels'\)"):
        CIFAR100(str(tmp_path), verify=False, label_kind="coarse").read("test")
    path.write_bytes(python2_pickle({**fake["test"], "data": fake["test"]["data"][:, :1000]}))
    with pytest.raises(UserError, match="test is not a readable CIFAR-100 file"):  # not rows of 3x32x32
        CIFAR100(str(tmp_path), verify=False).read("test")


def test_labels_beyond_the_meta_files_classes_are_refused(tmp_path, fake):
    (tmp_path / "cifar-100-python" / "meta").write_bytes(
        python2_pickle({"fine_label_names": FINE[:10], "coarse_label_names": COARSE}))
    labels = fake["train"]["fine_labels"]
    assert max(labels) >= 10
    with pytest.raises(UserError) as excinfo:
        CIFAR100(str(tmp_path), verify=False).read("train")
    assert "train has fine labels outside 0-9, the 10 classes of" in one_line_error(excinfo)


def test_missing_files_and_a_failed_download_are_one_line_naming_them(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    with pytest.raises(UserError) as excinfo:
        CIFAR100(str(tmp_path / "data")).read("train")
    message = one_line_error(excinfo)
    assert message.startswith("dataset=cifar100: files missing and download failed (OSError)")
    folder = tmp_path / "data" / "cifar-100-python"
    assert all(str(folder / name) in message for name in ("train", "test", "meta"))
    assert "dataset.root (or CL_DATA_ROOT)" in message
    write_cifar100(tmp_path / "data")
    (folder / "meta").unlink()  # one file missing: that one is named
    with pytest.raises(UserError, match=f"place {folder / 'meta'} there, or point dataset.root"):
        CIFAR100(str(tmp_path / "data"), verify=False).read("test")


def test_a_bad_label_kind_is_one_line(tmp_path, capfd):
    with pytest.raises(ConfigError) as excinfo:
        CIFAR100(str(tmp_path), label_kind="medium")
    assert one_line_error(excinfo) == ("dataset.label_kind='medium' is not allowed: dataset.label_kind must be fine "
                                       "(its 100 classes) or coarse (its 20 superclasses)")
    code, _, err = run_main(["dataset=cifar100", "dataset.label_kind=labels"], tmp_path, capfd, launcher=None)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "dataset.label_kind='labels' is not allowed" in lines[0], err


def test_a_run_through_cl_run_on_the_written_files(tmp_path, capfd):
    write_cifar100(tmp_path / "data", fine_classes=4)  # few classes, so that 20 test images split for the probes
    args = ["dataset=cifar100", f"dataset.root={tmp_path / 'data'}", "dataset.verify=false", "epochs=1",
            "batch_size=16", "eval.tsne_points=10", "log_every=1", "device=cpu"]
    code, _, err = run_main(args, tmp_path, capfd)
    assert code == 0, err
    (metrics,) = tmp_path.glob("outputs/runs/*/*/metrics.json")
    result = json.loads(metrics.read_text())
    assert result["scenario"]["dataset"] == "cifar100"
    assert 0.0 <= result["standard"]["linear_top1"] <= 1.0 and result["standard"]["scored_images"] == 20
