"""Evaluate a frozen encoder: embeddings of clean images, linear probe, kNN, top-k, confusion, diagnostics.

Two protocols, each named in the output:
- `paper`: the study's; the test embeddings split 80/20 (stratified, seeded), fitted on 80%, scored on 20%.
- `standard`: the field's linear probe; fitted on the training-set embeddings, scored on the whole test set.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix, top_k_accuracy_score
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from cl_runner import distributed
from cl_runner.data.augment import normalize, to_unit
from cl_runner.distributed import BatchShare, World

PROTOCOLS = ("paper", "standard")


@torch.inference_mode()
def embed(encoder: nn.Module, images: torch.Tensor, features: str = "backbone", batch_size: int = 1024,
          world: World = World()) -> np.ndarray:
    """Embeddings [N, D] (float32, on the host) of clean uint8 images, the encoder in eval mode (BatchNorm
    uses its running statistics, nothing is updated); `features`: the backbone's, or the projector's output.
    In a distributed run (`world`) each process embeds its contiguous shard and every process receives all."""
    if world.is_distributed:
        share = BatchShare.split(len(images), world)
        mine = torch.from_numpy(embed(encoder, images[share.rows], features, batch_size))
        return distributed.gather_constant(mine, sizes=share.sizes).numpy()
    was_training = encoder.training
    encoder.train(False)  # eval mode: BatchNorm uses its running statistics
    device = next(encoder.parameters()).device  # images kept in host memory travel a batch at a time
    chunks = [encoder.features(normalize(to_unit(images[i:i + batch_size].to(device))), features).float().cpu()
              for i in range(0, len(images), batch_size)]
    encoder.train(was_training)
    return torch.cat(chunks).numpy()


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 num_classes: int) -> dict:
    """Multinomial logistic regression on standardized frozen features (the encoder is not touched).
    Returns top-1 and top-3 accuracy and the confusion matrix (rows: true class, columns: predicted)."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    probe.fit(train_x, train_y)
    classes = np.arange(num_classes)
    scores = _full_scores(probe.predict_proba(test_x), probe.classes_, num_classes)
    return {
        "linear_top1": float(top_k_accuracy_score(test_y, scores, k=1, labels=classes)),
        "linear_top3": float(top_k_accuracy_score(test_y, scores, k=3, labels=classes)),
        "confusion_matrix": confusion_matrix(test_y, scores.argmax(1), labels=classes).tolist(),
    }


def _full_scores(proba: np.ndarray, fitted: np.ndarray, num_classes: int) -> np.ndarray:
    """Class scores [N, num_classes], zero for classes absent from the probe's training labels."""
    scores = np.zeros((len(proba), num_classes))
    scores[:, fitted] = proba
    return scores


def knn_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 k: int = 5) -> float:
    """Plain k-nearest-neighbour accuracy, Euclidean distance, majority vote (scikit-learn)."""
    knn = KNeighborsClassifier(n_neighbors=min(k, len(train_x)))
    return float((knn.fit(train_x, train_y).predict(test_x) == test_y).mean())


def weighted_cosine_knn_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                                 test_y: np.ndarray, num_classes: int, k: int = 200, temperature: float = 0.07,
                                 chunk: int = 1024) -> float:
    """kNN on cosine similarity with votes weighted by exp(similarity / T) (Wu et al. 2018, InstDisc)."""
    bank = F.normalize(torch.from_numpy(train_x), dim=1)
    bank_labels = torch.from_numpy(train_y).long()
    k = min(k, len(bank))
    correct = 0
    for i in range(0, len(test_x), chunk):
        queries = F.normalize(torch.from_numpy(test_x[i:i + chunk]), dim=1)
        similarity, neighbours = (queries @ bank.T).topk(k, dim=1)  # both: queries x k
        votes = torch.zeros(len(queries), num_classes)
        votes.scatter_add_(1, bank_labels[neighbours], torch.exp(similarity / temperature))
        correct += int((votes.argmax(1) == torch.from_numpy(test_y[i:i + chunk])).sum())
    return correct / len(test_x)


def is_collapsed(x: np.ndarray) -> bool:
    """Every embedding the same, up to float rounding: the representation has collapsed to one point."""
    spread = float(np.ptp(x, axis=0).max()) if len(x) else 0.0
    return spread <= 1e-6 * max(1.0, float(np.abs(x).max(initial=0.0)))


def diagnostics(x: np.ndarray) -> dict:
    """Collapse indicators: RankMe (Garrido et al. 2023), the effective rank exp(entropy) of the normalized
    singular values; the mean per-dimension std of l2-normalized embeddings (Chen & He 2021; about 1/sqrt(D)
    when spread out, 0 when collapsed); and uniformity (Wang & Isola 2020)."""
    t = torch.from_numpy(x).double()
    singular = torch.linalg.svdvals(t)
    p = singular / singular.sum() + 1e-12
    rankme = float(torch.exp(-(p * torch.log(p)).sum()))
    std = float(F.normalize(t, dim=1).std(dim=0).mean())
    return {"rankme": rankme, "normalized_std": std, "uniformity": uniformity(x), "embedding_dim": int(x.shape[1]),
            "collapsed": is_collapsed(x)}


def uniformity(x: np.ndarray, t: float = 2.0) -> float:
    """log E exp(-t ||u - v||^2) over all pairs of l2-normalized embeddings (Wang & Isola 2020, eq. 4; lower is
    more uniform on the sphere, 0 when collapsed to one point)."""
    u = F.normalize(torch.from_numpy(x).double(), dim=1)
    return float(torch.pdist(u).square().mul(-t).exp().mean().log())


def alignment(x: np.ndarray, y: np.ndarray, alpha: float = 2.0) -> float:
    """E ||f(x) - f(x+)||^alpha over positive pairs of l2-normalized embeddings (Wang & Isola 2020, eq. 3;
    lower means augmented views land closer to their image)."""
    u = F.normalize(torch.from_numpy(x).double(), dim=1)
    v = F.normalize(torch.from_numpy(y).double(), dim=1)
    return float((u - v).norm(dim=1).pow(alpha).mean())


def paper_protocol(test_x: np.ndarray, test_y: np.ndarray, num_classes: int, *, seed: int,
                   test_fraction: float = 0.2, knn_k: int = 5) -> dict:
    """The study's protocol: split the test embeddings (stratified, seeded), fit on one part, score the other."""
    fit_x, held_x, fit_y, held_y = train_test_split(test_x, test_y, test_size=test_fraction, stratify=test_y,
                                                    random_state=seed)
    result = linear_probe(fit_x, fit_y, held_x, held_y, num_classes)
    result["knn_top1"] = knn_accuracy(fit_x, fit_y, held_x, held_y, knn_k)
    result["scored_images"] = len(held_y)
    return result


def standard_protocol(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                      num_classes: int, *, knn_k: int = 5, cosine_knn_k: int = 200,
                      cosine_knn_temperature: float = 0.07) -> dict:
    """The field's protocol: fit on the training set's embeddings, score on the whole test set."""
    result = linear_probe(train_x, train_y, test_x, test_y, num_classes)
    result["knn_top1"] = knn_accuracy(train_x, train_y, test_x, test_y, knn_k)
    result["cosine_knn_top1"] = weighted_cosine_knn_accuracy(train_x, train_y, test_x, test_y, num_classes,
                                                             cosine_knn_k, cosine_knn_temperature)
    result["scored_images"] = len(test_y)
    return result


def metrics_without_figures(metrics: dict) -> dict:
    """The protocols' numbers and the diagnostics of `metrics` (no confusion matrices)."""
    kept = {"diagnostics": {k: v for k, v in metrics["diagnostics"].items() if k != "alignment"}}
    for protocol in PROTOCOLS:
        if protocol in metrics:
            kept[protocol] = {k: v for k, v in metrics[protocol].items() if k != "confusion_matrix"}
    return kept


def gains(trained: dict, initial: dict) -> dict:
    """Trained minus initial, for every accuracy of every protocol: what pretraining added."""
    return {protocol: {name: trained[protocol][name] - value for name, value in initial[protocol].items()
                       if isinstance(value, float)}
            for protocol in PROTOCOLS if protocol in initial}


def final_figures(metrics: dict) -> dict[str, float]:
    """Every accuracy as `eval/PROTOCOL/NAME`, and its gain over the initialization as `gain/PROTOCOL/NAME`."""
    figures = {}
    for protocol in PROTOCOLS:
        for prefix, source in (("eval", metrics), ("gain", metrics.get("gain", {}))):
            figures.update({f"{prefix}/{protocol}/{name}": value
                            for name, value in source.get(protocol, {}).items() if isinstance(value, float)})
    return figures
