"""The labels a protocol may use: `eval.label_fraction` of the probe set, drawn class by class (SimCLR's 1% and
10% ImageNet subsets are class-balanced: Chen et al. 2020, section 6 and appendix B.5)."""
from __future__ import annotations

import torch

from cl_runner.randomness import generator


def labelled_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted indices of `fraction` of the images of every class (rounded, at least one per class), drawn by a
    seeded shuffle of each class's images. The shuffle does not depend on `fraction`, so the subsets are nested:
    the 1% subset lies inside the 10% one of the same seed. 1.0 gives every index."""
    if fraction >= 1:
        return torch.arange(len(labels), device=labels.device)
    draw = generator(seed, "label_fraction")
    host = labels.cpu()
    chosen = []
    for cls in torch.unique(host):
        members = torch.nonzero(host == cls).flatten()
        shuffled = members[torch.randperm(len(members), generator=draw)]
        chosen.append(shuffled[:max(1, round(fraction * len(members)))])
    return torch.cat(chosen).sort().values.to(labels.device)
