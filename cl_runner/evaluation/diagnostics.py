"""Label-free indicators of a representation's health: collapse, RankMe, uniformity and alignment."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def is_collapsed(x: np.ndarray) -> bool:
    """Every embedding the same, up to float rounding: the representation has collapsed to one point."""
    spread = float(np.ptp(x, axis=0).max()) if len(x) else 0.0
    return spread <= 1e-6 * max(1.0, float(np.abs(x).max(initial=0.0)))


def diagnostics(x: np.ndarray, device: torch.device = torch.device("cpu")) -> dict:
    """Collapse indicators, computed in float64 on `device`: RankMe (Garrido et al. 2023), the effective rank
    exp(entropy) of the normalized singular values; the mean per-dimension std of l2-normalized embeddings (Chen &
    He 2021; about 1/sqrt(D) when spread out, 0 when collapsed); and uniformity (Wang & Isola 2020)."""
    t = torch.from_numpy(x).to(device, torch.float64)
    singular = torch.linalg.svdvals(t)
    p = singular / singular.sum() + 1e-12
    rankme = float(torch.exp(-(p * torch.log(p)).sum()))
    std = float(F.normalize(t, dim=1).std(dim=0).mean())
    return {"rankme": rankme, "normalized_std": std, "uniformity": uniformity(x, device=device),
            "embedding_dim": int(x.shape[1]), "collapsed": is_collapsed(x)}


def uniformity(x: np.ndarray, t: float = 2.0, device: torch.device = torch.device("cpu"), chunk: int = 1024
               ) -> float:
    """log E exp(-t ||u - v||^2) over all pairs of l2-normalized embeddings (Wang & Isola 2020, eq. 4; lower is
    more uniform on the sphere, 0 when collapsed to one point). In float64 on `device`, `chunk` rows at a time
    against all (memory grows with chunk x N, not N^2): the sum over ordered pairs i != j, with
    ||u - v||^2 = 2 - 2 u.v for unit vectors, over their count."""
    u = F.normalize(torch.from_numpy(x).to(device, torch.float64), dim=1)
    total = u.new_zeros(())
    for start in range(0, len(u), chunk):
        rows = u[start:start + chunk]
        kernel = (2 - 2 * rows @ u.T).clamp_(min=0).mul_(-t).exp_()  # rows x N, each row's own pair included
        total += kernel.sum() - kernel.diagonal(offset=start).sum()
    return float((total / (len(u) * (len(u) - 1))).log())


def alignment(x: np.ndarray, y: np.ndarray, alpha: float = 2.0) -> float:
    """E ||f(x) - f(x+)||^alpha over positive pairs of l2-normalized embeddings (Wang & Isola 2020, eq. 3;
    lower means augmented views land closer to their image)."""
    u = F.normalize(torch.from_numpy(x).double(), dim=1)
    v = F.normalize(torch.from_numpy(y).double(), dim=1)
    return float((u - v).norm(dim=1).pow(alpha).mean())
