"""Recall@k and MAP@R of evaluation/retrieval.py (Musgrave et al. 2020, leave-one-out on the test embeddings):
hand-checked cases on the unit circle, and a brute-force numpy reference (the full N x N similarity, argsort, one
query at a time) on random data for several chunk sizes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cl_runner.evaluation.retrieval import retrieval_metrics

KEYS = ["recall_at_1", "recall_at_2", "recall_at_4", "recall_at_8", "map_at_r"]
CHUNKS = (1, 2, 4, 1024)


def on_circle(degrees: list[float]) -> torch.Tensor:
    """Unit vectors at these angles: cosine similarity falls with the angle between them (all under 180 degrees
    apart here), so the ranking of each query is by angular distance."""
    radians = torch.deg2rad(torch.tensor(degrees, dtype=torch.float64))
    return torch.stack([radians.cos(), radians.sin()], dim=1)


def reference(x: np.ndarray, y: np.ndarray, ks: tuple[int, ...] = (1, 2, 4, 8)) -> dict[str, float]:
    """The definitions, one query at a time on the full similarity matrix."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    similarity = u @ u.T
    np.fill_diagonal(similarity, -np.inf)
    hits, precisions = np.zeros(len(ks)), []
    for q in range(len(x)):
        r = int((y == y[q]).sum()) - 1
        if r == 0:
            continue
        order = np.argsort(-similarity[q], kind="stable")[:len(x) - 1]  # the others, nearest first; self last
        correct = y[order] == y[q]
        hits += [correct[:min(k, len(x) - 1)].any() for k in ks]
        precisions.append(sum(correct[:i + 1].mean() for i in range(r) if correct[i]) / r)
    return {**{f"recall_at_{k}": h / len(precisions) for k, h in zip(ks, hits)},
            "map_at_r": float(np.mean(precisions))}


@pytest.mark.parametrize("chunk", CHUNKS)
def test_hand_case_with_r_of_three_and_one(chunk):
    # Class A at 0, 10, 30, 62 degrees (R = 3 each), class B at 22, 45 (R = 1 each). Nearest others, by angle
    # (A/B, distance), and the first R of them (r: right class, w: wrong):
    #   q0  (A): 10A 10, 22B 22, 30A 30, 45B 45, 62A 62   R@1 hit,  R@2 hit,  r w r: (1/3)(1 + 2/3) = 5/9
    #   q10 (A):  0A 10, 22B 12, 30A 20, 45B 35, 62A 52   R@1 hit,  R@2 hit,  r w r: 5/9
    #   q22 (B): 30A  8, 10A 12,  0A 22, 45B 23, 62A 40   R@1 miss, R@2 miss, R@4 hit, w: 0
    #   q30 (A): 22B  8, 45B 15, 10A 20,  0A 30, 62A 32   R@1 miss, R@2 miss, w w r: (1/3)(1/3) = 1/9
    #   q45 (B): 30A 15, 62A 17, 22B 23, 10A 35,  0A 45   R@1 miss, R@2 miss, R@4 hit, w: 0
    #   q62 (A): 45B 17, 30A 32, 22B 40, 10A 52,  0A 62   R@1 miss, R@2 hit,  w r w: (1/3)(1/2) = 1/6
    # Recall@1 = 2/6, Recall@2 = 3/6, Recall@4 = Recall@8 (capped at 5) = 6/6,
    # MAP@R = (5/9 + 5/9 + 0 + 1/9 + 0 + 1/6) / 6 = 25/108.
    x = on_circle([0, 10, 22, 30, 45, 62])
    y = torch.tensor([0, 0, 1, 0, 1, 0])
    result = retrieval_metrics(x, y, chunk=chunk)
    assert list(result) == KEYS
    assert result == pytest.approx({"recall_at_1": 1 / 3, "recall_at_2": 1 / 2, "recall_at_4": 1.0,
                                    "recall_at_8": 1.0, "map_at_r": 25 / 108})
    assert all(type(value) is float for value in result.values())


@pytest.mark.parametrize("chunk", CHUNKS)
def test_a_class_with_a_single_item_is_left_out_as_a_query_but_still_retrieved(chunk):
    # A at 0, 40, 100 (R = 2), C at 15 (alone: no query), B at 130, 150 (R = 1):
    #   q0   (A): 15C, 40A, 100A, 130B, 150B    R@1 miss, R@2 hit,  w r: (1/2)(1/2) = 1/4
    #   q40  (A): 15C (25), 0A (40), 100A (60)  R@1 miss, R@2 hit,  w r: 1/4
    #   q100 (A): 130B (30), 150B (50), 40A     R@1 miss, R@2 miss, R@4 hit, w w: 0
    #   q130 (B): 150B (20)                     R@1 hit,  1
    #   q150 (B): 130B (20)                     R@1 hit,  1
    # Over the 5 kept queries: Recall@1 = 2/5, Recall@2 = 4/5, Recall@4 = 1, MAP@R = (1/4 + 1/4 + 0 + 1 + 1)/5 = 1/2.
    x = on_circle([0, 15, 40, 100, 130, 150])
    y = torch.tensor([0, 7, 0, 0, 1, 1])
    assert retrieval_metrics(x, y, chunk=chunk) == pytest.approx(
        {"recall_at_1": 2 / 5, "recall_at_2": 4 / 5, "recall_at_4": 1.0, "recall_at_8": 1.0, "map_at_r": 1 / 2})


def test_no_query_with_a_classmate_gives_an_empty_dict():
    assert retrieval_metrics(on_circle([0, 30, 60]), torch.tensor([0, 1, 2])) == {}
    assert retrieval_metrics(on_circle([0]), torch.tensor([0])) == {}


def test_k_beyond_n_minus_one_is_capped():
    # Three points, A at 0 and 50, B at 20 (left out): each A query's nearest is B, then the other A.
    x, y = on_circle([0, 20, 50]), torch.tensor([0, 1, 0])
    result = retrieval_metrics(x, y, ks=(1, 2, 3, 100))
    assert result == pytest.approx({"recall_at_1": 0.0, "recall_at_2": 1.0, "recall_at_3": 1.0, "recall_at_100": 1.0,
                                    "map_at_r": 0.0})


def test_k_below_one_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        retrieval_metrics(on_circle([0, 20]), torch.tensor([0, 0]), ks=(0, 1))


@pytest.mark.parametrize("chunk", (1, 7, 16, 50, 53, 4096))  # 7 and 16 do not divide 53
def test_matches_a_brute_force_reference_on_random_data(chunk):
    rng = np.random.default_rng(0)
    y = np.concatenate([rng.integers(0, 5, 52), [9]])  # five classes of various sizes and one single item
    x = rng.normal(size=(len(y), 6)) + 0.8 * rng.normal(size=(5, 6))[y % 5]
    result = retrieval_metrics(torch.from_numpy(x), torch.from_numpy(y), chunk=chunk)
    assert result == pytest.approx(reference(x, y), rel=1e-12, abs=1e-12)
    assert 0 < result["map_at_r"] < result["recall_at_1"] < result["recall_at_8"] < 1  # neither trivial nor perfect


def test_float32_embeddings_agree_with_the_reference():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 40)
    x = (rng.normal(size=(40, 8)) + 1.5 * rng.normal(size=(4, 8))[y]).astype(np.float32)
    result = retrieval_metrics(torch.from_numpy(x), torch.from_numpy(y), chunk=9)
    assert result == pytest.approx(reference(x.astype(np.float64), y), abs=1e-9)


def test_perfectly_separated_classes_score_one_everywhere():
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(4), 10)
    x = 10 * np.eye(4, 5)[y] + 0.01 * rng.normal(size=(40, 5))
    result = retrieval_metrics(torch.from_numpy(x).float(), torch.from_numpy(y), chunk=7)
    assert result == pytest.approx(dict.fromkeys(KEYS, 1.0))


def test_invariant_to_scaling_the_embeddings():
    rng = np.random.default_rng(3)
    y = torch.from_numpy(rng.integers(0, 3, 30))
    x = torch.from_numpy(rng.normal(size=(30, 4)) + rng.normal(size=(3, 4))[y.numpy()])
    scales = torch.from_numpy(rng.uniform(0.01, 100, size=(30, 1)))  # cosine: any positive scale per embedding
    assert retrieval_metrics(x * scales, y, chunk=8) == pytest.approx(retrieval_metrics(x, y, chunk=8), abs=1e-12)
    assert retrieval_metrics(1000 * x, y) == pytest.approx(retrieval_metrics(x, y), abs=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_on_cuda_matches_the_reference():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 6, 300)
    x = rng.normal(size=(300, 16)) + rng.normal(size=(6, 16))[y]
    result = retrieval_metrics(torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda(), chunk=64)
    assert result == pytest.approx(reference(x, y), abs=1e-12)
