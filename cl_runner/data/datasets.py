"""The data sets cl-run knows by name, one class each (conf/dataset/NAME.yaml instantiates it), reading their
files into uint8 image tensors: one `ImageSet` per split, loaded once. A folder of one's own: image_folder.py."""
from __future__ import annotations

import gzip
import hashlib
import pickle
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from cl_runner.errors import ConfigError, UserError

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR10_FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
CIFAR100_FOLDER = "cifar-100-python"
CIFAR100_FILES = {"train": "train", "test": "test", "meta": "meta"}
# CIFAR-100's label kinds: the key of the labels in its train/test files and of the class names in its meta file
CIFAR100_LABEL_KINDS = {"fine": ("fine_labels", "fine_label_names"), "coarse": ("coarse_labels", "coarse_label_names")}
CIFAR100_LABEL_KIND_CHOICES = "fine (its 100 classes) or coarse (its 20 superclasses)"
# MD5 sums of intact files: the official distribution's, and for CIFAR-10 also those of the offline copy in
# ../shared/data (same pixels and labels, pickled without `filenames`; see its README). A generic file name is
# keyed with its folder (cifar-100-python/train), so that it names one data set's file only.
KNOWN_MD5 = {
    "train-images-idx3-ubyte": {"6bbc9ace898e44ae57da46a324031adb"},
    "train-labels-idx1-ubyte": {"a25bea736e30d166cdddb491f175f624"},
    "t10k-images-idx3-ubyte": {"2646ac647ad5339dbf082846283269ea"},
    "t10k-labels-idx1-ubyte": {"27ae3e4e09519cfbb04c329615203637"},
    "data_batch_1": {"c99cafc152244af753f735de768cd75f", "7f1f526485e0896e8e9c1c8c9f951755"},
    "data_batch_2": {"d4bba439e000b95fd0a9bffe97cbabec", "47c23102244263dc7f95da85d6b075da"},
    "data_batch_3": {"54ebc095f3ab1f0389bbae665268c751", "72e214ffabc10dca971b4ff387d3c35f"},
    "data_batch_4": {"634d18415352ddfa80567beed471001a", "3c7c2ec87d3f6edc1b50c6e6a05abea3"},
    "data_batch_5": {"482c414d41f54cd18b22e5b47cb7c3cb", "c4b90936d1fbca583bd66dbab1de1df3"},
    "test_batch": {"40351d587109b95175f43aff81a1287e", "8fb64598be51e09880de37da69388ac6"},
    "cifar-100-python/train": {"16019d7e3df5f24257cddd939b257f8d"},
    "cifar-100-python/test": {"f0ef6b0ae62326f3e7ffdfab6717acfc"},
    "cifar-100-python/meta": {"7973b15100ade9c7d40fb424638fde48"},
}
MNIST_CLASSES = [str(d) for d in range(10)]
# The embedded default: the first images of MNIST's splits, shipped in the package (scripts/make_mnist_sample.py)
MNIST_SAMPLE = Path(__file__).with_name("mnist_sample.npz")
MNIST_SAMPLE_SIZES = {"train": 10_000, "test": 2_000}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass
class ImageSet:
    """One split: `images` uint8 [N, C, H, W], `labels` int64 [N] (None: an unlabelled set), the class names."""

    images: torch.Tensor
    labels: torch.Tensor | None
    classes: list[str]

    @classmethod
    def from_numpy(cls, images: np.ndarray, labels: np.ndarray | None, classes: list[str]) -> "ImageSet":
        return cls(torch.from_numpy(np.ascontiguousarray(images)),
                   None if labels is None else torch.from_numpy(np.asarray(labels, dtype=np.int64)), classes)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def to(self, device: torch.device, pin: bool = False) -> "ImageSet":
        """On `device`; with `pin`, in the host's page-locked memory instead (copied to a GPU faster)."""
        images = self.images.pin_memory() if pin else self.images.to(device)
        return ImageSet(images, None if self.labels is None else self.labels.to(device), self.classes)

    def take(self, indices: torch.Tensor) -> torch.Tensor:
        """The images at `indices`, on the indices' device (gathered in host memory first when the images are
        kept there)."""
        if self.images.device == indices.device:
            return self.images.index_select(0, indices)
        return self.images.index_select(0, indices.cpu()).to(indices.device, non_blocking=True)

    def head(self, n: int | None) -> "ImageSet":
        """The first `n` images (all of them when `n` is None)."""
        if n is None:
            return self
        return ImageSet(self.images[:n], None if self.labels is None else self.labels[:n], self.classes)


@dataclass
class Splits:
    """What a run reads: `train` (pretraining's images), `test` (the held-out images that evaluation embeds),
    `probe` (the standard protocol's training images: `train`, unless the data set has a labelled set of its own
    for an unlabelled one) and `val` (a slice held out of the training images, splits.hold_out; None without one)."""

    train: ImageSet
    test: ImageSet
    probe: ImageSet
    val: ImageSet | None = None


class DataSet(ABC):
    """A data set as a config group option instantiates it (`_target_` in conf/dataset/NAME.yaml): `load()`
    returns its splits, `train_subset` / `test_subset` keep only their first images, `val_fraction` is the share
    of the training images that splits.hold_out sets aside, `train_fraction` the share of the rest that
    splits.keep_fraction trains on; `labelled` is known before any image is read."""

    name = "data set"

    def __init__(self, train_subset: int | None = None, test_subset: int | None = None, val_fraction: float = 0.0,
                 train_fraction: float = 1.0):
        self.train_subset, self.test_subset, self.val_fraction = train_subset, test_subset, val_fraction
        self.train_fraction = train_fraction

    @property
    def labelled(self) -> bool:
        return True

    @abstractmethod
    def load(self) -> Splits:
        """The training, test and probe images (see `Splits`)."""

    def subset(self, images: ImageSet, split: str) -> ImageSet:
        """The first `train_subset` or `test_subset` images of the `split` (`train` or `test`); all without one.
        A subset larger than the split is refused: it would silently mean all of them."""
        size = getattr(self, f"{split}_subset")
        if size is not None and size > len(images):
            raise UserError(f"dataset.{split}_subset={size} is more than the {len(images)} {split} images of "
                            f"{self.name}: choose at most {len(images)}, or null for all of them")
        return images.head(size)


class SplitReader(DataSet):
    """A data set that ships its own train/test split: `read(split)` gives one of them."""

    def load(self) -> Splits:
        train = self.subset(self.read("train"), "train")
        return Splits(train, self.subset(self.read("test"), "test"), train)

    @abstractmethod
    def read(self, split: str) -> ImageSet:
        """Split `train` or `test`, whole."""


class MnistSample(SplitReader):
    """The embedded default: the first 10,000 training and 2,000 test images of MNIST, inside the package."""

    name = "mnist_sample"

    def read(self, split: str) -> ImageSet:
        return read_mnist_sample(split)


class Digits(SplitReader):
    """scikit-learn's bundled 8x8 digits, upsampled to 28x28 (see `read_digits`)."""

    name = "digits"

    def read(self, split: str) -> ImageSet:
        return read_digits(split)


class DownloadedDataSet(SplitReader):
    """A data set read from its files under `root` in torchvision's layout (downloaded there when absent);
    `verify` checks each file's MD5 against the known intact versions first."""

    def __init__(self, root: str, verify: bool = True, **subsets):
        super().__init__(**subsets)
        self.root, self.verify = Path(root), verify


class MNIST(DownloadedDataSet):
    """MNIST from ROOT/MNIST/raw (the IDX files plain or gzipped)."""

    name = "mnist"

    def read(self, split: str) -> ImageSet:
        return read_mnist(self.root, split, self.verify)


class CIFAR10(DownloadedDataSet):
    """CIFAR-10 from the python pickle batches under ROOT/cifar-10-batches-py."""

    name = "cifar10"

    def read(self, split: str) -> ImageSet:
        return read_cifar10(self.root, split, self.verify)


class CIFAR100(DownloadedDataSet):
    """CIFAR-100 from the python pickles under ROOT/cifar-100-python, labelled by `label_kind`: `fine` (its 100
    classes) or `coarse` (its 20 superclasses), with the class names of its meta file."""

    name = "cifar100"

    def __init__(self, root: str, verify: bool = True, label_kind: str = "fine", **subsets):
        if label_kind not in CIFAR100_LABEL_KINDS:
            raise ConfigError(f"dataset.label_kind={label_kind!r} is not allowed: dataset.label_kind must be "
                              f"{CIFAR100_LABEL_KIND_CHOICES}")
        super().__init__(root, verify, **subsets)
        self.label_kind = label_kind

    def read(self, split: str) -> ImageSet:
        return read_cifar100(self.root, split, self.label_kind, self.verify)


def read_mnist_sample(split: str) -> ImageSet:
    """The MNIST sample inside the package: the first 10,000 training and 2,000 test images of MNIST."""
    try:
        with np.load(MNIST_SAMPLE) as arrays:
            images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    except (OSError, KeyError, ValueError) as err:
        raise UserError(f"{MNIST_SAMPLE} is missing or damaged ({err}); reinstall cl-runner") from err
    return ImageSet(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)), MNIST_CLASSES)


def read_digits(split: str, test_fraction: float = 0.2, side: int = 28) -> ImageSet:
    """scikit-learn's bundled 8x8 digits (values 0-16), upsampled bilinearly to `side` and split
    stratified with a fixed seed, so the default run needs no download."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().unsqueeze(1) * (255.0 / 16.0)
    images = F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False)
    images = images.round().clamp(0, 255).to(torch.uint8)
    labels = torch.from_numpy(digits.target).long()
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=test_fraction,
                                           stratify=digits.target, random_state=0)
    idx = torch.from_numpy(np.sort(train_idx if split == "train" else test_idx))
    return ImageSet(images[idx].contiguous(), labels[idx], MNIST_CLASSES)


def read_idx(path: Path, expected_dims: int, verify: bool = False) -> np.ndarray:
    """An IDX file (LeCun's MNIST format): big-endian magic 0x0000 08 NDIM, dims, then uint8 data; `path` or,
    when only that exists, `path`.gz as downloaded. `verify` checks the (uncompressed) bytes' MD5 first."""
    zipped = path.with_name(path.name + ".gz")
    source = zipped if zipped.exists() and not path.exists() else path
    try:
        raw = gzip.decompress(source.read_bytes()) if source == zipped else source.read_bytes()
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise UserError(f"cannot read {source}: {err}") from err
    if verify:
        verify_md5(path, raw)
    if len(raw) < 4 or raw[0:2] != b"\x00\x00" or raw[2] != 0x08 or raw[3] != expected_dims:
        raise UserError(f"{source} is not a uint8 IDX file with {expected_dims} dimensions (corrupt or wrong file)")
    header = 4 + 4 * expected_dims
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(expected_dims))
    if len(raw) != header + int(np.prod(dims)):
        raise UserError(f"{source} has {len(raw)} bytes, its header promises {header + int(np.prod(dims))} "
                        "(truncated or corrupt)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def verify_md5(path: Path, content: bytes | None = None) -> None:
    """Refuse a file (or its `content`, read already) whose MD5 matches no known intact version of it (files we
    know nothing of pass; a file is looked up as FOLDER/NAME first, then as NAME)."""
    known = KNOWN_MD5.get(f"{path.parent.name}/{path.name}") or KNOWN_MD5.get(path.name)
    if not known:
        return
    digest = hashlib.md5()
    if content is not None:
        digest.update(content)
    else:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    if digest.hexdigest() not in known:
        raise UserError(f"{path} is damaged or not the official file (MD5 {digest.hexdigest()}); replace it, or "
                        "set dataset.verify=false to read it anyway")


def read_mnist(root: Path, split: str, verify: bool = False) -> ImageSet:
    """MNIST from ROOT/MNIST/raw/*-ubyte (or *-ubyte.gz), downloaded there with torchvision when absent."""
    folder = root / "MNIST" / "raw"
    image_file, label_file = (folder / f for f in MNIST_FILES[split])
    if not all(f.exists() or f.with_name(f.name + ".gz").exists() for f in (image_file, label_file)):
        _download("mnist", root, [folder / f for pair in MNIST_FILES.values() for f in pair])
    images = read_idx(image_file, 3, verify)
    labels = read_idx(label_file, 1, verify)
    if len(images) != len(labels):
        raise UserError(f"{image_file} holds {len(images)} images but {label_file} {len(labels)} labels")
    return ImageSet(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
                    MNIST_CLASSES)


class RefusedObject(pickle.UnpicklingError):
    """A pickle named a class or function that a data file has no use for."""


class ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles what CIFAR-10's batches and CIFAR-100's files hold (dicts, lists, strings, bytes, numbers and
    numpy arrays) and refuses every other class or function, so that a hostile file cannot run code: only numpy's
    array reconstruction (an array from its bytes) and the string-to-bytes encoding of protocol 2 pickles are
    looked up."""

    ADMITTED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # protocol 2's bytes

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ADMITTED:
            raise RefusedObject(f"it names {module}.{name}, which no data file needs")
        return super().find_class(module, name)


def read_cifar10(root: Path, split: str, verify: bool = False) -> ImageSet:
    """CIFAR-10 from the python pickle batches in ROOT/cifar-10-batches-py, downloaded there when absent.
    `verify` checks each batch's MD5 against the official file's and the offline copy's (../shared/data/README.md:
    equal pixels, other pickle bytes)."""
    folder = root / "cifar-10-batches-py"
    paths = [folder / f for f in CIFAR10_FILES[split]]
    if not all(p.exists() for p in paths):
        _download("cifar10", root, [folder / f for files in CIFAR10_FILES.values() for f in files])
    batches = [read_cifar_batch(path, "CIFAR-10 batch", "labels", verify) for path in paths]
    return ImageSet(torch.from_numpy(np.concatenate([images for images, _ in batches])),
                    torch.from_numpy(np.concatenate([labels for _, labels in batches])), CIFAR10_CLASSES)


def read_cifar100(root: Path, split: str, label_kind: str = "fine", verify: bool = False) -> ImageSet:
    """CIFAR-100 from the python pickles in ROOT/cifar-100-python (`split`'s file and `meta`), downloaded there when
    absent: the `label_kind` labels (fine: 100 classes, coarse: 20 superclasses) and that kind's class names."""
    folder = root / CIFAR100_FOLDER
    path, meta = folder / CIFAR100_FILES[split], folder / CIFAR100_FILES["meta"]
    if not (path.exists() and meta.exists()):
        _download("cifar100", root, [folder / f for f in CIFAR100_FILES.values()])
    label_key, names_key = CIFAR100_LABEL_KINDS[label_kind]
    classes = unpickle(meta, "CIFAR-100 meta file", lambda content: [str(n) for n in content[names_key]], verify)
    images, labels = read_cifar_batch(path, "CIFAR-100 file", label_key, verify)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise UserError(f"{path} has {label_kind} labels outside 0-{len(classes) - 1}, the {len(classes)} classes of "
                        f"{meta} (mismatched or corrupt files)")
    return ImageSet(torch.from_numpy(images), torch.from_numpy(labels), classes)


T = TypeVar("T")


def unpickle(path: Path, what: str, extract: Callable[[object], T], verify: bool = False) -> T:
    """`extract` applied to the python pickle at `path` (CIFAR's format; `what` it is, for the messages), read by
    `ArraysOnlyUnpickler` after the MD5 check with `verify`: a refused class, a truncated or corrupt pickle, or
    content that `extract` cannot use (a key missing, a wrong type or shape) is a one-line UserError."""
    if verify:
        verify_md5(path)
    try:
        with path.open("rb") as fh:
            content = ArraysOnlyUnpickler(fh, encoding="latin1").load()
        return extract(content)
    except RefusedObject as err:
        raise UserError(f"{path} is not a {what}: {err}; refused, and nothing in it was run") from err
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as err:
        raise UserError(f"{path} is not a readable {what} (truncated or corrupt: {err})") from err


def read_cifar_batch(path: Path, what: str, label_key: str, verify: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR pickle of images (`data`: uint8 rows of 3072, channel-major 32x32 planes) and their labels
    (`label_key`): uint8 [N, 3, 32, 32] and int64 [N], as many of each (see `unpickle` for the checks)."""
    def arrays(batch) -> tuple[np.ndarray, np.ndarray]:
        return (np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32),
                np.asarray(batch[label_key], dtype=np.int64))

    images, labels = unpickle(path, what, arrays, verify)
    if len(images) != len(labels):
        raise UserError(f"{path} holds {len(images)} images but {len(labels)} labels")
    return images, labels


def _download(name: str, root: Path, needed: list[Path]) -> None:
    """Fetch a data set with torchvision's downloader (it verifies the archive's MD5)."""
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
    try:
        root.mkdir(parents=True, exist_ok=True)
        cls(str(root), train=True, download=True)
    except Exception as err:  # network, disk or checksum failure: say what must go where
        missing = ", ".join(str(p) for p in needed if not p.exists())
        raise UserError(f"dataset={name}: files missing and download failed ({type(err).__name__}); "
                        f"place {missing} there, or point dataset.root (or CL_DATA_ROOT) at a folder "
                        "that holds them") from err
