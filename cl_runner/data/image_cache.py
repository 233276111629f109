"""Image files -> one uint8 array, decoded once in parallel worker processes into a cache outside the data, and
read memory-mapped afterwards. Conversion follows PIL's (and torchvision's ImageFolder's) `convert`: alpha is
dropped, a palette applied, CMYK converted naively, RGB to one channel by ITU-R 601-2 luma; 16-bit images are
scaled to 8 bits."""
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

from cl_runner.data.folder_layout import Listing
from cl_runner.errors import UserError
from cl_runner.runtime import available_cores, host_memory_available

log = logging.getLogger(__name__)

ONE_BAND_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
CACHE_FORMAT = 1  # bump when the cached pixels of the same files would change


def cache_home() -> Path:
    """CL_CACHE_DIR, else $XDG_CACHE_HOME/cl-runner, else ~/.cache/cl-runner."""
    if os.environ.get("CL_CACHE_DIR"):
        return Path(os.environ["CL_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cl-runner"


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
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
            headers.append(Header(None, None, describe(err)))  # a bomb is refused from its header: nothing decoded
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


CHUNK = 256  # files per task of a worker process


def chunked(files: list[Path]) -> list[list[str]]:
    return [[str(f) for f in files[i:i + CHUNK]] for i in range(0, len(files), CHUNK)]


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
