"""Batched augmentation on the training device: uint8 [B, C, H, W] in, float [B, C, H, W] in [0, 1] out.

Every random parameter is drawn per sample from the caller's `torch.Generator`, and each operation is a few
tensor operations over the whole batch: one affine warp (`grid_sample`) for crop, rotation, scale and flip,
vectorized colour operations, separable sums of shifted views for blur. An augmentation is data: ordered
operations (`geometry`, `colour`, `filters`, behind the protocol of `base`) composed per view (`composition`).
"""
from cl_runner.data.augment.base import Operation, normalize, rows_of, to_unit
from cl_runner.data.augment.composition import Augmentation, Pipeline, TargetedPair

__all__ = ["Augmentation", "Operation", "Pipeline", "TargetedPair", "normalize", "rows_of", "to_unit"]
