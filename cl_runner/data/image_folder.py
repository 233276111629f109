"""A folder of the user's own images as a data set: its layout read from the folder, every image decoded once (in
parallel) into a uint8 cache outside the data, later loads read memory-mapped from the cache in seconds.

Layouts: DIR/train/<class>/* with DIR/test/<class>/* (or val/); DIR/<class>/* (a seeded, stratified split);
images directly in DIR, or any layout with labels=false (unlabelled: a seeded split, no classes).
Conversion follows PIL's (and torchvision's ImageFolder's) `convert`: alpha is dropped, a palette applied, CMYK
converted naively, RGB to one channel by ITU-R 601-2 luma; 16-bit images are scaled to 8 bits."""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from cl_runner.data.datasets import DataSet, ImageSet, Splits
from cl_runner.errors import UserError
from cl_runner.runtime import available_cores, host_memory_available

log = logging.getLogger(__name__)

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
TEST_FOLDERS = ("test", "val")
ONE_BAND_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
CACHE_FORMAT = 1  # bump when the cached pixels of the same files would change


def cache_home() -> Path:
    """CL_CACHE_DIR, else $XDG_CACHE_HOME/cl-runner, else ~/.cache/cl-runner."""
    if os.environ.get("CL_CACHE_DIR"):
        return Path(os.environ["CL_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cl-runner"


@dataclass
class Listing:
    """The image files of one split, as paths relative to the data folder, with their class indices (None:
    unlabelled) and the class names."""

    files: list[Path]
    labels: list[int] | None
    classes: list[str]


def image_files(folder: Path) -> tuple[list[Path], int]:
    """Every image file under `folder`, recursively and in sorted order (symlinks followed, a loop refused),
    and how many other files were passed over."""
    found, others, seen = [], 0, set()
    for current, dirs, files in os.walk(folder, followlinks=True, onerror=_walk_error):
        identity = os.stat(current)
        if (identity.st_dev, identity.st_ino) in seen:
            raise UserError(f"{current} is a symlink loop (it leads back to a folder above it); remove the link")
        seen.add((identity.st_dev, identity.st_ino))
        dirs.sort()
        for name in sorted(files):
            if Path(name).suffix.lower() in SUFFIXES:
                found.append(Path(current) / name)
            else:
                others += 1
    return found, others


def _walk_error(err: OSError) -> None:
    raise UserError(f"cannot read {err.filename}: {err.strerror}")


def class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_classes(folder: Path, classes: list[str] | None = None) -> tuple[Listing, int]:
    """The images of `folder`/<class>/*; `classes`: the class names a test split must draw from."""
    names = [p.name for p in class_folders(folder)]
    if classes is not None and set(names) - set(classes):
        raise UserError(f"{folder} has classes that the training images lack: "
                        f"{', '.join(sorted(set(names) - set(classes)))}")
    classes = classes if classes is not None else names
    files, labels, others = [], [], 0
    for name in names:
        found, skipped = image_files(folder / name)
        if not found:
            raise UserError(f"{folder / name} holds no images (class '{name}'); remove the folder or add images")
        files += found
        labels += [classes.index(name)] * len(found)
        others += skipped
    return Listing(files, labels, classes), others


def list_splits(path: Path, labels: bool | None) -> tuple[Listing, Listing | None, int]:
    """The training listing, the test listing (None: to be split off the training one) and how many non-image
    files were ignored, from the folder's layout."""
    if not path.is_dir():
        raise UserError(f"dataset.path={path}: no such folder")
    test_dir = next((path / t for t in TEST_FOLDERS if (path / t).is_dir()), None)
    if (path / "train").is_dir() and test_dir is not None:
        if labels is False:
            (train, skipped), (test, more) = image_files(path / "train"), image_files(test_dir)
            return Listing(train, None, []), Listing(test, None, []), skipped + more
        train, skipped = list_classes(path / "train")
        test, more = list_classes(test_dir, train.classes)
        return train, test, skipped + more
    direct = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES]
    folders = class_folders(path)
    if labels is False or (labels is None and direct and not folders):
        files, skipped = image_files(path)
        return Listing(files, None, []), None, skipped
    if direct and folders:
        raise UserError(f"{path} holds images beside its class folders ({direct[0].name}, ...); move them into a "
                        "class folder, or set dataset.labels=false to use them all without labels")
    if direct:
        raise UserError(f"dataset.labels=true, but {path} holds its images without class folders")
    if not folders:
        raise UserError(f"{path} holds no images and no class folders")
    train, skipped = list_classes(path)
    return train, None, skipped


def split_off(listing: Listing, fraction: float, seed: int) -> tuple[Listing, Listing]:
    """A seeded split of `listing` into train and test, stratified by class when it is labelled; both keep the
    folder's order."""
    rng = np.random.default_rng(seed)
    groups = np.asarray(listing.labels) if listing.labels is not None else np.zeros(len(listing.files), int)
    test = np.zeros(len(groups), bool)
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        count = int(round(len(members) * fraction))
        if len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        test[rng.choice(members, count, replace=False)] = True

    def part(mask: np.ndarray) -> Listing:
        labels = None if listing.labels is None else [listing.labels[i] for i in np.flatnonzero(mask)]
        return Listing([listing.files[i] for i in np.flatnonzero(mask)], labels, listing.classes)

    return part(~test), part(test)


@dataclass
class Header:
    """What an image file's header says, without decoding its pixels (None: the file cannot be opened)."""

    mode: str | None
    size: tuple[int, int] | None
    error: str | None = None


def read_headers(files: list[Path]) -> list[Header]:
    headers = []
    for path in files:
        try:
            with Image.open(path) as image:
                headers.append(Header(image.mode, image.size))
        except (OSError, UnidentifiedImageError, ValueError) as err:
            headers.append(Header(None, None, describe(err)))
    return headers


def describe(err: BaseException) -> str:
    reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return reason.splitlines()[0]


def to_array(image, channels: int, side: int | None) -> np.ndarray:
    """One PIL image -> uint8 [channels, H, W]: 8 bits, `channels` bands, shorter side resized to `side` and
    centre-cropped to a square (when `side` is given)."""
    image.seek(0)  # an animation's first frame
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16-bit (PIL reads 16-bit PNGs as I or I;16)
        wide = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.round(wide / 257.0), 0, 255).astype(np.uint8))
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.round(np.asarray(image) * 255.0), 0, 255).astype(np.uint8))
    image = image.convert("L" if channels == 1 else "RGB")
    if side is not None:
        width, height = image.size
        scale = side / min(width, height)
        resized = (max(side, round(width * scale)), max(side, round(height * scale)))
        if resized != image.size:
            image = image.resize(resized, Image.Resampling.BILINEAR)
        left, top = (resized[0] - side) // 2, (resized[1] - side) // 2
        image = image.crop((left, top, left + side, top + side))
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def decode_into(cache_file: str, start: int, files: list[str], channels: int,
                side: int | None) -> list[tuple[int, str]]:
    """Decode `files` into rows start.. of the .npy at `cache_file` (a worker process's share); returns the
    (row, reason) of each file that would not decode."""
    pixels = np.lib.format.open_memmap(cache_file, mode="r+")
    failed = []
    for row, path in enumerate(files, start):
        try:
            with Image.open(path) as image:
                pixels[row] = to_array(image, channels, side)
        except Exception as err:  # noqa: BLE001 - PIL raises many types for a damaged file; each is reported
            failed.append((row, describe(err)))
    pixels.flush()
    return failed


def fingerprint(path: Path, listings: list[Listing], channels: int | None, side: int | None) -> str:
    """What the cached pixels depend on: each file's relative path, size and modification time, in order, and
    the conversion settings."""
    digest = hashlib.sha256(json.dumps([CACHE_FORMAT, channels, side]).encode())
    for listing in listings:
        for file in listing.files:
            try:
                stat = file.stat()
            except OSError as err:  # a dangling link, a link loop, no permission on the folder
                raise UserError(f"cannot read {file}: {err.strerror}") from err
            digest.update(f"{file.relative_to(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        digest.update(b"--split--\n")
    return digest.hexdigest()[:32]


def parallel_map(function, chunks: list[tuple], desc: str | None = None) -> list:
    """`function(*chunk)` for every chunk, in worker processes (one per core) when there is more than one chunk;
    results in the chunks' order, with a progress bar when `desc` is given."""
    if len(chunks) <= 1:
        return [function(*chunk) for chunk in chunks]
    # fork: the workers need nothing but the decoder, and start in milliseconds instead of importing torch again
    context = multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None
    with ProcessPoolExecutor(min(available_cores(), len(chunks)), mp_context=context) as pool:
        futures = [pool.submit(function, *chunk) for chunk in chunks]
        for future in tqdm(futures, desc=desc, unit="chunk", disable=desc is None, mininterval=1.0):
            future.result()
    return [future.result() for future in futures]


CHUNK = 256  # files per task of a worker process


def chunked(files: list[Path]) -> list[list[str]]:
    return [[str(f) for f in files[i:i + CHUNK]] for i in range(0, len(files), CHUNK)]


class ImageFolder(DataSet):
    """The user's folder of images (see the module's docstring for the layouts); `eval_path`: a labelled folder
    whose images give the probes of an unlabelled one. `channels` (1 or 3; None: what most images have) and
    `image_size` (None: the images' own common square size) say what every image is converted to."""

    def __init__(self, path: str, eval_path: str | None = None, labels: bool | None = None,
                 test_fraction: float = 0.2, channels: int | None = None, image_size: int | None = None,
                 skip_corrupt: bool = False, train_subset: int | None = None, test_subset: int | None = None):
        super().__init__(train_subset, test_subset)
        self.path = Path(path).expanduser()
        self.eval_path = Path(eval_path).expanduser() if eval_path else None
        self.labels, self.test_fraction, self.skip_corrupt = labels, test_fraction, skip_corrupt
        self.channels, self.image_size = channels, image_size
        self._listings: tuple[Listing, Listing] | None = None

    @property
    def name(self) -> str:
        return f"image_folder {self.path}"

    def listings(self) -> tuple[Listing, Listing]:
        """The training and test files (listed once; no pixel is read)."""
        if self._listings is None:
            train, test, ignored = list_splits(self.path, self.labels)
            if not train.files:
                raise UserError(f"{self.path} holds no images ({ignored} other files ignored)")
            if train.labels is not None and len(train.classes) < 2:
                raise UserError(f"{self.path} has one class only ({train.classes[0]}); contrastive probes need two "
                                "or more: add class folders, or set dataset.labels=false to train without labels")
            if test is None:
                train, test = split_off(train, self.test_fraction, seed=0)
            if ignored:
                log.info("%s: %d files that are not images ignored", self.path, ignored)
            self._listings = train, test
        return self._listings

    @property
    def labelled(self) -> bool:
        return self.listings()[0].labels is not None

    def load(self) -> Splits:
        train, test = self.decoded()
        train, test = train.head(self.train_subset), test.head(self.test_subset)
        if self.eval_path is None:
            return Splits(train, test, train)
        channels, side = train.images.shape[1], train.images.shape[-1]
        evaluation = ImageFolder(str(self.eval_path), labels=True, test_fraction=self.test_fraction,
                                 channels=channels, image_size=side, skip_corrupt=self.skip_corrupt)
        probe, held_out = evaluation.decoded()
        log.info("probes from %s: %d train, %d test images", self.eval_path, len(probe), len(held_out))
        return Splits(train, held_out, probe)

    def decoded(self) -> tuple[ImageSet, ImageSet]:
        """The training and test images, from the cache (decoded into it first when needed), in host memory."""
        path, listings = self.path, self.listings()
        pixels, meta = cached_pixels(path, list(listings), self.channels, self.image_size, self.skip_corrupt)
        keep = np.ones(len(pixels), bool)
        keep[meta["skipped"]] = False
        check_memory(path, int(keep.sum()), pixels.shape[1:])
        if meta["skipped"]:
            log.warning("%s: %d images that would not decode skipped (dataset.skip_corrupt=true)", path,
                        len(meta["skipped"]))
        sets, start = [], 0
        for listing in listings:
            rows = np.arange(start, start + len(listing.files))
            kept = keep[rows]
            labels = None if listing.labels is None else np.asarray(listing.labels)[kept]
            sets.append(ImageSet.from_numpy(pixels[rows[kept]], labels, listing.classes))
            start += len(listing.files)
        return sets[0], sets[1]


def cached_pixels(path: Path, listings: list[Listing], channels: int | None, side: int | None,
                  skip_corrupt: bool) -> tuple[np.ndarray, dict]:
    """The decoded images of `listings`, in order, memory-mapped from the cache (decoded first when the folder
    changed or was never decoded), and the cache's notes (channels, side, rows skipped)."""
    key = fingerprint(path, listings, channels, side)
    folder = cache_home() / "image_folders"
    pixels_file, meta_file = folder / f"{key}.npy", folder / f"{key}.json"
    try:
        meta = json.loads(meta_file.read_text())
        return np.load(pixels_file, mmap_mode="r"), meta
    except (OSError, ValueError):
        pass  # not cached yet, or an incomplete cache: decode
    files = [f for listing in listings for f in listing.files]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the image cache {folder}: {err.strerror}; set CL_CACHE_DIR to a writable "
                        "folder") from err
    meta = decode(path, files, channels, side, skip_corrupt, pixels_file)
    temporary = meta_file.with_name(f"{meta_file.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(meta))
    os.replace(temporary, meta_file)  # the marker that the pixels are complete
    return np.load(pixels_file, mmap_mode="r"), meta


def decode(path: Path, files: list[Path], channels: int | None, side: int | None, skip_corrupt: bool,
           target: Path) -> dict:
    """Decode `files` (of the folder `path`) into the .npy `target` (written beside it and renamed, so that two
    runs decoding the same folder at once never leave a half-written cache); returns the channels, side and
    skipped rows."""
    headers = [h for part in parallel_map(read_headers, [(c,) for c in chunked(files)]) for h in part]
    for file, header in zip(files, headers):
        if header.error and not (skip_corrupt and not _unreadable(file)):
            raise UserError(f"{file}: cannot read it as an image ({header.error})"
                            + ("" if _unreadable(file) else "; set dataset.skip_corrupt=true to skip such files"))
    good = [h for h in headers if h.error is None]
    if not good:
        raise UserError(f"{path}: none of its {len(files)} image files could be read")
    if channels is None:
        one_band = sum(h.mode in ONE_BAND_MODES for h in good)
        channels = 1 if one_band * 2 > len(good) else 3
    if side is None:
        sizes = Counter(h.size for h in good)
        if len(sizes) > 1 or next(iter(sizes))[0] != next(iter(sizes))[1]:
            found = ", ".join(f"{w}x{h} ({n})" for (w, h), n in sizes.most_common(4))
            more = ", ..." if len(sizes) > 4 else ""
            raise UserError(f"{path}: the images are not all of one square size ({found}{more}); set "
                            "dataset.image_size=S to resize each one's shorter side to S and crop the centre")
        side = next(iter(sizes))[0]
    shape = (len(files), channels, side, side)
    check_memory(path, len(files), shape[1:])  # before the decoding, not after it
    temporary = target.with_name(f"{target.name}.{os.getpid()}.tmp.npy")
    try:
        np.lib.format.open_memmap(temporary, mode="w+", dtype=np.uint8, shape=shape)
        chunks = [(str(temporary), i * CHUNK, c, channels, side) for i, c in enumerate(chunked(files))]
        log.info("decoding %d images into the cache %s (once; later runs read it)", len(files), target)
        failed = [f for part in parallel_map(decode_into, chunks, desc="decoding images") for f in part]
        failed += [(row, h.error) for row, h in enumerate(headers) if h.error]
        if failed and not skip_corrupt:
            row, reason = min(failed)
            raise UserError(f"{files[row]}: cannot decode it (truncated or corrupt: {reason}); "
                            f"{len(failed)} such file(s); set dataset.skip_corrupt=true to skip them")
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return {"channels": channels, "side": side, "skipped": sorted({row for row, _ in failed})}


def check_memory(path: Path, count: int, shape: tuple[int, ...]) -> None:
    """Refuse `count` images of `shape` (uint8) that would not fit in the host memory available."""
    needed, available = count * int(np.prod(shape)), host_memory_available()
    if available is not None and needed > available:
        raise UserError(f"{path}: its {count} images need {size(needed)} of memory, {size(available)} are "
                        "available; set dataset.image_size smaller or use a part of the folder")


def size(nbytes: float) -> str:
    """E.g. 7.7 KiB, 1.5 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            break
        nbytes /= 1024
    return f"{nbytes:.0f} B" if unit == "B" else f"{nbytes:.1f} {unit}"


def _unreadable(file: Path) -> bool:
    return not os.access(file, os.R_OK) or not file.exists()
