"""A folder of the user's own images as a data set (cl-run dataset=image_folder dataset.path=DIR): its layout
(folder_layout.py) gives the files and labels, the cache (image_cache.py) their pixels, decoded once."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cl_runner.data.datasets import DataSet, ImageSet, Splits
from cl_runner.data.folder_layout import Listing, list_splits, split_off
from cl_runner.data.image_cache import cached_pixels, check_memory
from cl_runner.errors import UserError

log = logging.getLogger(__name__)

class ImageFolder(DataSet):
    """The user's folder of images (see the module's docstring for the layouts); `eval_path`: a labelled folder
    whose images give the probes of an unlabelled one. `channels` (1 or 3; None: what most images have) and
    `image_size` (None: the images' own common square size) say what every image is converted to; `subsets`:
    `DataSet`'s train_subset, test_subset, val_fraction and train_fraction."""

    def __init__(self, path: str, eval_path: str | None = None, labels: bool | None = None,
                 test_fraction: float = 0.2, channels: int | None = None, image_size: int | None = None,
                 skip_corrupt: bool = False, **subsets):
        super().__init__(**subsets)
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
        train, test = self.subset(train, "train"), self.subset(test, "test")
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
