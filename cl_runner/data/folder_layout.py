"""Which files of a user's folder are images, and how its layout splits them: DIR/train/<class>/* with
DIR/test/<class>/* (or val/); DIR/<class>/* (a seeded, stratified split); images directly in DIR, or any layout
with labels=false (unlabelled: a seeded split, no classes). Nothing here reads a pixel."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cl_runner.errors import UserError

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
TEST_FOLDERS = ("test", "val")


@dataclass
class Listing:
    """The image files of one split (paths inside the data folder, in its sorted order), their class indices
    (None: unlabelled) and the class names."""

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
