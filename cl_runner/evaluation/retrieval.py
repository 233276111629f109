"""Retrieval metrics on frozen test embeddings, as Musgrave, Belongie & Lim define them ("A Metric Learning Reality
Check", ECCV 2020): leave-one-out over the test set, each test embedding a query against all the other test
embeddings, ranked by cosine similarity (the embeddings l2-normalized). Recall@k is metric learning's usual one
(Song et al. 2016, "Deep Metric Learning via Lifted Structured Feature Embedding"): a hit when any of the k nearest
has the query's class; MAP@R is the paper's mean average precision at R."""
from __future__ import annotations

import torch
import torch.nn.functional as F

KS = (1, 2, 4, 8)


def retrieval_metrics(x: torch.Tensor, y: torch.Tensor, ks: tuple[int, ...] = KS, chunk: int = 1024
                      ) -> dict[str, float]:
    """Recall@k for each k of `ks` (key `recall_at_{k}`) and MAP@R (key `map_at_r`) of embeddings x [N, D] with
    labels y [N] (int64, on x's device), as plain floats. For a query q with R = the number of other items of its
    class and c(i) = 1 when its i-th nearest other item has its class:
        Recall@k(q) = max over i <= min(k, N - 1) of c(i)   (k beyond N - 1 is capped),
        MAP@R(q) = (1/R) * sum over i = 1..R of P(i) * c(i),   P(i) = (1/i) * sum over j <= i of c(j),
    each averaged over the queries. A query whose class has no other item (R = 0) is left out of both averages (it
    still counts as an item the other queries retrieve); with no query left the result is an empty dict.

    Computed on x's device, in x's precision (float32 at least), `chunk` queries at a time against all N items, so
    that memory grows with chunk x N, not N^2; each query's own similarity is set to -inf; hits and precisions are
    accumulated in float64. Ties in similarity are ranked in torch.topk's order, which torch leaves unspecified
    (it can differ between devices): on tied embeddings the metrics may depend on it; continuous ones almost never
    tie."""
    if min(ks, default=1) < 1:
        raise ValueError(f"retrieval_metrics: every k must be at least 1, got ks={ks}")
    n = len(x)
    _, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
    r = counts[inverse] - 1  # per query: the other items of its class
    queries = int((r > 0).sum())  # a query with R = 0 has no correct item: it adds 0 to every sum below
    if queries == 0:
        return {}
    u = F.normalize(x.to(torch.promote_types(x.dtype, torch.float32)), dim=1)
    capped = [min(k, n - 1) for k in ks]
    hits = torch.zeros(len(ks), dtype=torch.float64, device=x.device)
    precision_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(start + chunk, n), device=x.device)
        similarity = u[rows] @ u.T  # queries x N
        similarity[rows - start, rows] = -float("inf")
        depth = max([*capped, int(r[rows].max())])  # both at most N - 1
        neighbours = similarity.topk(depth, dim=1).indices  # queries x depth, nearest first
        correct = y[neighbours] == y[rows, None]
        # Recall@k: any correct among the first min(k, N - 1).
        found = correct.cummax(1).values[:, [k - 1 for k in capped]]  # queries x len(ks)
        hits += found.sum(0, dtype=torch.float64)
        # MAP@R: the first R positions of each query only; P(i) there is the running share of correct items.
        position = torch.arange(1, depth + 1, device=x.device)
        relevant = correct & (position <= r[rows, None])
        precision = relevant.cumsum(1, dtype=torch.float64) / position
        average = (precision * relevant).sum(1) / r[rows].clamp(min=1)  # R = 0: 0 / 1
        precision_sum += average.sum()
    recalls = (hits / queries).tolist()
    return {**{f"recall_at_{k}": recall for k, recall in zip(ks, recalls)}, "map_at_r": float(precision_sum / queries)}
