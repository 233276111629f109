"""Classifiers fitted on frozen embeddings: the linear probe (multinomial logistic regression with L2, C=1, on
standardized features), plain kNN and cosine-weighted kNN. `eval.solver=torch` (the default) computes them on the
run's device, full-batch, chunked over the queries so that memory stays bounded; `eval.solver=sklearn` runs
scikit-learn's own estimators on the host, the reference the torch solvers are tested against."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

SOLVERS = ("torch", "sklearn")


@dataclass(frozen=True)
class Probes:
    """How the embeddings are classified: `solver` (torch on `device`, or sklearn on the host), kNN's `knn_k`,
    cosine kNN's `cosine_knn_k` and vote temperature. Each method takes host arrays and returns plain numbers."""

    solver: str = "torch"
    device: torch.device = torch.device("cpu")
    knn_k: int = 5
    cosine_knn_k: int = 200
    cosine_knn_temperature: float = 0.07

    def tensors(self, *arrays: np.ndarray) -> list[torch.Tensor]:
        return [torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in arrays]

    def linear(self, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
               num_classes: int) -> dict:
        """The linear probe's `classification_figures` on the test embeddings (`linear_top1`, ...)."""
        if self.solver == "sklearn":
            scores = self.tensors(sklearn_probe_scores(train_x, train_y, test_x, num_classes))[0]
        else:
            train_x, train_y, test_x = self.tensors(train_x, train_y.astype(np.int64), test_x)
            scores = linear_probe_scores(train_x, train_y, test_x, num_classes)
        return classification_figures(scores, self.tensors(test_y.astype(np.int64))[0], num_classes, "linear_")

    def knn(self, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
            num_classes: int) -> float:
        """Plain kNN accuracy: Euclidean distance, majority vote of the `knn_k` nearest."""
        if self.solver == "sklearn":
            return sklearn_knn_accuracy(train_x, train_y, test_x, test_y, self.knn_k)
        train_x, train_y, test_x, test_y = self.tensors(train_x, train_y.astype(np.int64), test_x,
                                                        test_y.astype(np.int64))
        return float((knn_predictions(train_x, train_y, test_x, self.knn_k, num_classes) == test_y).float().mean())

    def cosine_knn(self, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                   num_classes: int) -> float:
        """Cosine kNN accuracy with exp(similarity / T)-weighted votes (torch with either solver: scikit-learn
        has no weighted cosine vote)."""
        train_x, train_y, test_x, test_y = self.tensors(train_x, train_y.astype(np.int64), test_x,
                                                        test_y.astype(np.int64))
        return weighted_cosine_knn_accuracy(train_x, train_y, test_x, test_y, num_classes, self.cosine_knn_k,
                                            self.cosine_knn_temperature)


def standardized(train_x: torch.Tensor, test_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sets scaled by the training set's per-feature mean and (population) standard deviation, a constant
    feature left unscaled: scikit-learn's StandardScaler."""
    mean = train_x.mean(0)
    std = train_x.std(0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (train_x - mean) / std, (test_x - mean) / std


def softmax_regression(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, c: float = 1.0,
                       max_iter: int = 1000, tol: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights [D, K] and biases [K] minimizing mean cross-entropy + ||W||^2 / (2 C n) (the intercept is not
    penalized): scikit-learn's LogisticRegression(C=c) objective divided by n, as its lbfgs solver minimizes it.
    Solved full-batch by L-BFGS with a strong-Wolfe line search, stopped when every gradient entry is below `tol`
    (scikit-learn's criterion) or after `max_iter` iterations."""
    weights = train_x.new_zeros(train_x.shape[1], num_classes, requires_grad=True)
    bias = train_x.new_zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights, bias], lr=1, max_iter=max_iter, tolerance_grad=tol,
                                  tolerance_change=0.0, history_size=10, line_search_fn="strong_wolfe")
    penalty = 1.0 / (2 * c * len(train_x))

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(train_x @ weights + bias, train_y) + penalty * weights.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
    return weights.detach(), bias.detach()


def linear_probe_scores(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, num_classes: int
                        ) -> torch.Tensor:
    """Class probabilities [N_test, num_classes] of the multinomial logistic regression (C=1) fitted on the
    standardized training embeddings; a class absent from the training labels gets probability 0, as scikit-learn
    fits only the classes it sees."""
    present = torch.unique(train_y)
    train_x, test_x = standardized(train_x.float(), test_x.float())
    weights, bias = softmax_regression(train_x, torch.searchsorted(present, train_y), len(present))
    scores = test_x.new_zeros(len(test_x), num_classes)
    scores[:, present] = torch.softmax(test_x @ weights + bias, dim=1)
    return scores


def sklearn_probe_scores(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, num_classes: int
                         ) -> np.ndarray:
    """The same probe by scikit-learn (StandardScaler, LogisticRegression with lbfgs): class probabilities
    [N_test, num_classes], zero for classes absent from the training labels."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(train_x, train_y)
    scores = np.zeros((len(test_x), num_classes))
    scores[:, probe.classes_] = probe.predict_proba(test_x)
    return scores


def classification_figures(scores: torch.Tensor, labels: torch.Tensor, num_classes: int, prefix: str = "") -> dict:
    """A classifier's top-1 and top-3 accuracy (and top-5 with more than 5 classes, as CIFAR-100's figures are
    reported) and its confusion matrix (rows: true class, columns: predicted), from its `scores` [N, classes];
    the accuracies named `{prefix}top1` and so on."""
    top5 = {f"{prefix}top5": top_k_accuracy(scores, labels, 5)} if num_classes > 5 else {}
    return {f"{prefix}top1": top_k_accuracy(scores, labels, 1), f"{prefix}top3": top_k_accuracy(scores, labels, 3),
            **top5, "confusion_matrix": confusion_matrix(labels, scores.argmax(1), num_classes).tolist()}


def top_k_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Share of rows whose true label is among the k highest scores."""
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices
    return float((top == labels[:, None]).any(1).float().mean())


def confusion_matrix(labels: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts [true class, predicted class]."""
    return torch.bincount(labels * num_classes + predicted, minlength=num_classes ** 2).view(num_classes, -1)


def knn_predictions(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, k: int,
                    num_classes: int, chunk: int = 1024) -> torch.Tensor:
    """The majority class of each query's k nearest training embeddings (Euclidean); a tie goes to the smallest
    class index, as scikit-learn's KNeighborsClassifier breaks it. Both sets are first centred on the training
    mean: distances do not change, but cdist's matrix-product form then keeps float32's precision (uncentred
    embeddings far from the origin, such as a sigmoid's outputs, lost the true nearest neighbours of most queries
    to rounding)."""
    k = min(k, len(train_x))
    centre = train_x.mean(0)
    train_x, test_x = train_x - centre, test_x - centre
    predictions = []
    for start in range(0, len(test_x), chunk):
        distances = torch.cdist(test_x[start:start + chunk], train_x)  # queries x bank
        neighbours = distances.topk(k, dim=1, largest=False).indices
        votes = torch.zeros(len(neighbours), num_classes, device=test_x.device)
        votes.scatter_add_(1, train_y[neighbours], torch.ones(neighbours.shape, device=test_x.device))
        predictions.append(votes.argmax(1))
    return torch.cat(predictions)


def sklearn_knn_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                         k: int) -> float:
    """Plain kNN accuracy by scikit-learn's KNeighborsClassifier."""
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(n_neighbors=min(k, len(train_x)))
    return float((knn.fit(train_x, train_y).predict(test_x) == test_y).mean())


def weighted_cosine_knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                                 test_y: torch.Tensor, num_classes: int, k: int = 200, temperature: float = 0.07,
                                 chunk: int = 1024) -> float:
    """kNN on cosine similarity with votes weighted by exp(similarity / T) (Wu et al. 2018, InstDisc)."""
    bank = F.normalize(train_x.float(), dim=1)
    k = min(k, len(bank))
    correct = 0
    for i in range(0, len(test_x), chunk):
        queries = F.normalize(test_x[i:i + chunk].float(), dim=1)
        similarity, neighbours = (queries @ bank.T).topk(k, dim=1)  # both: queries x k
        votes = torch.zeros(len(queries), num_classes, device=queries.device)
        votes.scatter_add_(1, train_y[neighbours], torch.exp(similarity / temperature))
        correct += int((votes.argmax(1) == test_y[i:i + chunk]).sum())
    return correct / len(test_x)
