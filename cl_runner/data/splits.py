"""How a run cuts the training images it reads: a validation split held out (`hold_out`) and a share kept for
training (`keep_fraction`), both stratified by class and seeded."""
from __future__ import annotations

import torch

from cl_runner.data.datasets import ImageSet, Splits
from cl_runner.errors import UserError


def stratified_draw(labels: torch.Tensor | None, size: int, fraction: float, seed: int) -> torch.Tensor:
    """The sorted indices of round(fraction x count) images of every class (of all `size` images when `labels` is
    None), each class's drawn uniformly by `seed`."""
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    labels = labels.cpu() if labels is not None else torch.zeros(size, dtype=torch.long)
    order = order[torch.argsort(labels[order], stable=True)]  # by class, each class in the seed's random order
    counts = torch.bincount(labels)
    starts, taken = torch.cumsum(counts, 0) - counts, torch.round(counts * fraction).long()
    return torch.cat([order[start:start + n] for start, n in zip(starts.tolist(), taken.tolist())]).sort().values


def _rows(images: ImageSet, indices: torch.Tensor) -> ImageSet:
    indices = indices.to(images.images.device)
    return ImageSet(images.images[indices], None if images.labels is None else images.labels[indices],
                    images.classes)


def hold_out(data: Splits, fraction: float, seed: int) -> Splits:
    """`data` with `fraction` of its training images set aside as `val`: per class (stratified; the whole set when
    unlabelled) round(fraction x the class's count) images drawn by `seed`, the rest kept in their order as the
    training (and, where it is the training set, probe) images. The test images are not touched. With fraction 0,
    `data` itself."""
    if not fraction:
        return data
    train = data.train
    held = stratified_draw(train.labels, len(train), fraction, seed)
    if len(held) == 0:
        raise UserError(f"dataset.val_fraction={fraction} holds out no image of the {len(train)} training images: "
                        "choose a larger fraction")
    kept = torch.ones(len(train), dtype=torch.bool)
    kept[held] = False
    if train.labelled and not torch.isin(train.labels.cpu().unique(), train.labels.cpu()[kept]).all():
        raise UserError(f"dataset.val_fraction={fraction} leaves a class without training images: choose a smaller "
                        "fraction")
    rest = _rows(train, torch.nonzero(kept).squeeze(1))
    return Splits(rest, data.test, rest if data.probe is data.train else data.probe, _rows(train, held))


def keep_fraction(data: Splits, fraction: float, seed: int) -> Splits:
    """`data` with only `fraction` of its training images (after `hold_out`), for experiments on the size of the
    data set (i-Mix's, Lee et al. 2021): per class (stratified) round(fraction x the class's count) images drawn
    by `seed`, kept in their order; the probe trains on them too where it is the training set. The
    validation and test images are not touched. With fraction 1, `data` itself."""
    if fraction == 1:
        return data
    train = data.train
    kept = _rows(train, stratified_draw(train.labels, len(train), fraction, seed))
    if train.labelled and len(kept.labels.unique()) < len(train.labels.unique()):
        raise UserError(f"dataset.train_fraction={fraction} keeps no image of some class of the {len(train)} "
                        "training images: choose a larger fraction")
    if len(kept) < 2:
        raise UserError(f"dataset.train_fraction={fraction} keeps {len(kept)} of the {len(train)} training images: "
                        "choose a larger fraction")
    return Splits(kept, data.test, kept if data.probe is data.train else data.probe, data.val)
