"""Folders of one's own images: the layouts, conversions, the decode-once cache, unlabelled folders, and every
bad input with its one line. Folders are written here from the first MNIST and CIFAR-10 images."""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from cl_runner import experiment
from cl_runner.cli import config_dir
from cl_runner.data import image_cache
from cl_runner.data.datasets import CIFAR10, DataSet, ImageSet, MnistSample, Splits
from cl_runner.data.image_cache import to_array
from cl_runner.data.image_folder import ImageFolder
from cl_runner.errors import UserError


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CL_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture
def untouched():
    """Folders registered with it must be exactly as they were when the test ends: nothing written into data."""
    folders: dict[Path, dict] = {}
    yield lambda folder: folders.setdefault(folder, listing(folder)) and folder
    for folder, before in folders.items():
        assert listing(folder) == before, f"{folder} changed"


def write_pngs(folder: Path, data: ImageSet, count: int, by_class: bool = True) -> Path:
    for i in range(count):
        array = data.images[i].numpy()
        image = Image.fromarray(array[0]) if array.shape[0] == 1 else Image.fromarray(array.transpose(1, 2, 0))
        path = folder / (data.classes[int(data.labels[i])] if by_class else "") / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
    return folder


def class_major(data: ImageSet, count: int) -> ImageSet:
    """The first `count` images, in the order of a class-folder layout: class by class, each in reader order."""
    order = torch.argsort(data.labels[:count], stable=True)
    return ImageSet(data.images[:count][order], data.labels[:count][order], data.classes)


def mnist_sample_folder(root: Path, train: int = 300, test: int = 100) -> Path:
    data = MnistSample().load()
    write_pngs(root / "train", data.train, train)
    write_pngs(root / "test", data.test, test)
    return root


def test_class_folders_load_to_the_readers_tensors(tmp_path, data_root, untouched):
    for reader, count in ((MnistSample(), 200), (CIFAR10(str(data_root)), 100)):
        data = reader.load()
        folder = tmp_path / reader.name
        write_pngs(folder / "train", data.train, count)
        write_pngs(folder / "val", data.test, count)  # val/ is accepted for test/
        loaded = ImageFolder(str(untouched(folder))).load()
        for split, original in ((loaded.train, data.train), (loaded.test, data.test)):
            expected = class_major(original, count)
            assert split.classes == sorted(set(expected.classes[i] for i in expected.labels.tolist()))
            names = [split.classes[i] for i in split.labels.tolist()]
            assert names == [expected.classes[i] for i in expected.labels.tolist()]
            assert torch.equal(split.images, expected.images)


def test_flat_unlabelled_folders_keep_the_readers_order(tmp_path, untouched):
    data = MnistSample().load()
    folder = tmp_path / "flat"
    write_pngs(folder / "train", data.train, 150, by_class=False)
    write_pngs(folder / "test", data.test, 50, by_class=False)
    loaded = ImageFolder(str(untouched(folder)), labels=False).load()
    assert not loaded.train.labelled and loaded.train.classes == []
    assert torch.equal(loaded.train.images, data.train.images[:150])
    assert torch.equal(loaded.test.images, data.test.images[:50])


class ClassMajorSample(DataSet):
    """The embedded sample's first images in a class-folder layout's order: what an image folder of them holds."""

    name = "class-major mnist_sample"

    def __init__(self, train: int, test: int):
        super().__init__()
        self.counts = train, test

    def load(self) -> Splits:
        data = MnistSample().load()
        train = class_major(data.train, self.counts[0])
        return Splits(train, class_major(data.test, self.counts[1]), train)


def run_config(*overrides: str):
    with initialize_config_dir(config_dir(), version_base="1.3"):
        return compose("config", overrides=["epochs=1", "batch_size=64", "eval.tsne_points=50", "log_every=5",
                                            *overrides])


def test_a_folder_gives_the_same_metrics_as_the_reader_for_a_fixed_seed(tmp_path, untouched):
    folder = untouched(mnist_sample_folder(tmp_path / "digits", train=300, test=100))
    from_folder = experiment.run(run_config("dataset=image_folder", f"dataset.path={folder}"), tmp_path / "a",
                                 {}, [])
    cfg = run_config()
    cfg.dataset = {"_target_": f"{__name__}.ClassMajorSample", "train": 300, "test": 100}
    from_reader = experiment.run(cfg, tmp_path / "b", {}, [])
    for key in ("paper", "standard", "diagnostics", "baseline"):
        assert from_folder[key] == from_reader[key], key
    assert from_folder["train"]["epoch_losses"] == from_reader["train"]["epoch_losses"]
    assert from_folder["classes"] == [str(d) for d in range(10)]


def test_image_modes_convert_as_specified():
    rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    rgba = Image.fromarray(np.dstack([rgb, np.full((6, 5), 7, np.uint8)]))
    assert np.array_equal(to_array(rgba, 3, None), rgb.transpose(2, 0, 1))  # alpha dropped
    luma = np.asarray(Image.fromarray(rgb).convert("L"))
    assert np.array_equal(to_array(Image.fromarray(rgb), 1, None)[0], luma)  # ITU-R 601-2 luma, as PIL
    gray = rgb[..., 0]
    assert np.array_equal(to_array(Image.fromarray(gray), 3, None), np.stack([gray] * 3))  # replicated
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    assert np.array_equal(to_array(palette, 3, None), np.asarray(palette.convert("RGB")).transpose(2, 0, 1))
    wide = (gray.astype(np.uint16) * 257)  # 16-bit: value v*257 is 8-bit v
    assert np.array_equal(to_array(Image.fromarray(wide), 1, None)[0], gray)
    cmyk = Image.fromarray(rgb).convert("CMYK")
    assert np.array_equal(to_array(cmyk, 3, None), np.asarray(cmyk.convert("RGB")).transpose(2, 0, 1))
    big = Image.fromarray(np.zeros((40, 60), np.uint8))
    assert to_array(big, 1, 32).shape == (1, 32, 32)  # shorter side to 32, centre crop


def test_mixed_formats_and_modes_load_into_one_tensor(tmp_path, untouched):
    rng = np.random.default_rng(1)
    folder = tmp_path / "mixed"
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True)
        rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(folder / cls / "1.jpg", quality=95)
        Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(folder / cls / "2.png")
        Image.fromarray(rgb).convert("P").save(folder / cls / "3.gif")
        Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(folder / cls / "4.png")
        Image.fromarray(rgb).convert("CMYK").save(folder / cls / "5.tif")
        Image.fromarray(rgb).save(folder / cls / "6.bmp")
        Image.fromarray(rgb).save(folder / cls / "7.webp", lossless=True)
        (folder / cls / "notes.txt").write_text("not an image")
    loaded = ImageFolder(str(untouched(folder)), test_fraction=0.3).load()
    assert loaded.train.images.shape[1:] == (3, 16, 16) and len(loaded.train) + len(loaded.test) == 14
    assert sorted(torch.bincount(torch.cat([loaded.train.labels, loaded.test.labels])).tolist()) == [7, 7]


def test_the_second_load_reads_the_cache_and_a_changed_file_is_decoded_again(tmp_path, monkeypatch):
    folder = mnist_sample_folder(tmp_path / "f", train=60, test=30)
    before = listing(folder)
    calls = []
    original = image_cache.decode
    monkeypatch.setattr(image_cache, "decode", lambda *a, **k: calls.append(1) or original(*a, **k))
    first = ImageFolder(str(folder)).load()
    second = ImageFolder(str(folder)).load()
    assert len(calls) == 1 and torch.equal(first.train.images, second.train.images)
    assert listing(folder) == before  # the cache lives outside the data
    changed = sorted((folder / "train").rglob("*.png"))[0]  # the first image of the first class
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(changed)
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    third = ImageFolder(str(folder)).load()
    assert len(calls) == 2 and third.train.images[0].sum() == 0


@pytest.mark.slow
def test_two_processes_decoding_one_folder_at_once_leave_one_whole_cache(tmp_path, cache, untouched):
    import subprocess
    import sys

    folder = untouched(mnist_sample_folder(tmp_path / "f", train=300, test=100))  # 400 files: worker processes
    load = "import sys; from cl_runner.data.image_folder import ImageFolder; ImageFolder(sys.argv[1]).load()"
    runs = [subprocess.Popen([sys.executable, "-c", load, str(folder)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert sorted(p.suffix for p in (cache / "image_folders").iterdir()) == [".json", ".npy"]  # no temporaries
    again = ImageFolder(str(folder)).load()
    assert torch.equal(again.train.images, class_major(MnistSample().load().train, 300).images)


def test_an_unlabelled_folder_trains_with_ntxent_and_reports_diagnostics(tmp_path, untouched):
    data = MnistSample().load()
    folder = untouched(write_pngs(tmp_path / "unlabelled", data.train, 300, by_class=False))
    cfg = run_config("dataset=image_folder", f"dataset.path={folder}", "loss=ntxent", "aug=simclr")
    metrics = experiment.run(cfg, tmp_path / "run", {}, [])
    assert "paper" not in metrics and "standard" not in metrics and metrics["classes"] == []
    assert set(metrics["diagnostics"]) >= {"rankme", "uniformity", "alignment", "collapsed"}
    assert (tmp_path / "run" / "tsne.png").is_file() and not (tmp_path / "run" / "confusion_matrix.png").exists()
    with pytest.raises(UserError, match="has no labels, but pairing.negatives=label_aware"):
        experiment.run(run_config("dataset=image_folder", f"dataset.path={folder}"), tmp_path / "refused", {}, [])


def test_an_eval_path_gives_the_probes_of_an_unlabelled_folder(tmp_path, untouched):
    data = MnistSample().load()
    folder = untouched(write_pngs(tmp_path / "unlabelled", data.train, 200, by_class=False))
    labelled = untouched(mnist_sample_folder(tmp_path / "labelled", train=200, test=100))
    cfg = run_config("dataset=image_folder", f"dataset.path={folder}", f"dataset.eval_path={labelled}",
                     "loss=ntxent", "aug=simclr")
    metrics = experiment.run(cfg, tmp_path / "run", {}, [])
    assert 0.0 <= metrics["standard"]["linear_top1"] <= 1.0 and len(metrics["classes"]) == 10


def png(path: Path, side: int = 28, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((side, side), value, np.uint8)).save(path)


def two_classes(root: Path, per_class: int = 5, side: int = 28) -> Path:
    for cls in ("a", "b"):
        for i in range(per_class):
            png(root / cls / f"{i}.png", side, 40 * i)
    return root


def bad_folders(tmp_path: Path) -> dict[str, tuple[Path, dict, str]]:
    """name -> (folder, ImageFolder options, the message expected)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("x")
    one_class = two_classes(tmp_path / "one")
    for f in (one_class / "b").iterdir():
        f.unlink()
    (one_class / "b").rmdir()
    empty_class = two_classes(tmp_path / "empty_class")
    (empty_class / "c").mkdir()
    extra = tmp_path / "extra"
    two_classes(extra / "train")
    two_classes(extra / "test")
    png(extra / "test" / "z" / "0.png")
    corrupt = two_classes(tmp_path / "corrupt")
    noise = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(noise).save(corrupt / "a" / "9.png")
    (corrupt / "a" / "9.png").write_bytes((corrupt / "a" / "9.png").read_bytes()[:400])  # truncated
    sizes = two_classes(tmp_path / "sizes")
    png(sizes / "a" / "big.png", side=40)
    small = two_classes(tmp_path / "small", side=8)
    dangling = two_classes(tmp_path / "dangling")
    (dangling / "a" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    loop = two_classes(tmp_path / "loop")
    (loop / "a" / "again").symlink_to(loop / "a")
    loose = two_classes(tmp_path / "loose")
    png(loose / "stray.png")
    flat = tmp_path / "flat"
    for i in range(3):
        png(flat / f"{i}.png")
    bomb = two_classes(tmp_path / "bomb")
    png(bomb / "a" / "huge.png")
    claim_size(bomb / "a" / "huge.png", 40_000, 40_000)
    return {
        "missing": (tmp_path / "nothing", {}, "no such folder"),
        "empty": (empty, {}, "holds no images and no class folders"),
        "unlabelled empty": (empty, {"labels": False}, "holds no images (1 other files ignored)"),
        "one class": (one_class, {}, "has one class only (a)"),
        "empty class": (empty_class, {}, "empty_class/c holds no images (class 'c')"),
        "test classes": (extra, {}, "has classes that the training images lack: z"),
        "corrupt": (corrupt, {}, "corrupt/a/9.png: cannot decode it (truncated or corrupt"),
        "sizes": (sizes, {}, "not all of one square size (28x28 (10), 40x40 (1)); set dataset.image_size=S"),
        "unreadable": (dangling, {}, "cannot read " + str(tmp_path / "dangling/a/gone.png: No such file or directory")),
        "symlink loop": (loop, {}, "is a symlink loop"),
        "loose images": (loose, {}, "holds images beside its class folders (stray.png, ...)"),
        "labels without classes": (flat, {"labels": True}, "dataset.labels=true, but"),
        "small": (small, {}, None),
        "decompression bomb": (bomb, {}, "bomb/a/huge.png: cannot read it as an image (Image size (1600000000 pixels) "
                                         "exceeds"),
    }


def claim_size(path: Path, width: int, height: int) -> None:
    """Rewrite a PNG's header to claim another size (its CRC kept valid): a decompression bomb's header, with
    none of its gigabytes."""
    data = bytearray(path.read_bytes())
    start = data.index(b"IHDR")
    data[start + 4:start + 12] = struct.pack(">II", width, height)
    data[start + 17:start + 21] = struct.pack(">I", zlib.crc32(bytes(data[start:start + 17])))  # type + 13 bytes
    path.write_bytes(bytes(data))


def test_each_bad_folder_gets_its_one_line(tmp_path, untouched):
    for name, (folder, options, message) in bad_folders(tmp_path).items():
        if message is None:
            continue
        if folder.exists():
            untouched(folder)
        with pytest.raises(UserError) as caught:
            ImageFolder(str(folder), **options).load()
        assert message in str(caught.value) and "\n" not in str(caught.value), (name, str(caught.value))


def test_corrupt_images_can_be_skipped_and_counted(tmp_path, untouched, caplog):
    folder = untouched(bad_folders(tmp_path)["corrupt"][0])
    loaded = ImageFolder(str(folder), skip_corrupt=True).load()
    assert len(loaded.train) + len(loaded.test) == 10
    assert "1 images that would not decode skipped" in caplog.text


def test_images_too_small_for_the_encoder_are_refused_before_training(tmp_path, untouched):
    folder = untouched(bad_folders(tmp_path)["small"][0])
    with pytest.raises(UserError, match="the encoder's PamiCNN gives 8 features for images of 8x8, not its 32: it "
                                        "takes images of 18x18 to 33x33"):
        experiment.run(run_config("dataset=image_folder", f"dataset.path={folder}", "batch_size=4"),
                       tmp_path / "run", {}, [])


def test_a_folder_larger_than_the_memory_available_is_one_line_before_decoding(tmp_path, monkeypatch, untouched):
    folder = untouched(two_classes(tmp_path / "f"))
    monkeypatch.setattr(image_cache, "host_memory_available", lambda: 4096)
    monkeypatch.setattr(image_cache, "decode_into", lambda *args: pytest.fail("decoded anyway"))
    with pytest.raises(UserError, match=r"its 10 images need 7.7 KiB of memory, 4.0 KiB are available"):
        ImageFolder(str(folder)).load()
