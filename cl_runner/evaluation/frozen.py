"""The protocols on frozen embeddings of clean images: the study's (`paper`), the field's linear probe and kNN
(`standard`), and metric learning's retrieval figures (`retrieval`). Their classifiers are in probes.py.

- `paper`: the test embeddings split 80/20 (stratified, seeded), fitted on 80%, scored on 20%.
- `standard`: fitted on the probe set's embeddings (the training set's, `eval.label_fraction` of them), scored on
  the whole test set.
- `retrieval`: every test image a query against the other test images (Musgrave et al. 2020).
"""
from __future__ import annotations

import numpy as np
import torch

from cl_runner import randomness
from cl_runner.evaluation.probes import Probes
from cl_runner.evaluation.protocol import Context, Encoded, Protocol
from cl_runner.evaluation.retrieval import retrieval_metrics


def paper_protocol(test_x: np.ndarray, test_y: np.ndarray, num_classes: int, *, seed: int,
                   test_fraction: float = 0.2, probes: Probes = Probes()) -> dict:
    """The study's protocol: split the test embeddings (stratified, seeded), fit on one part, score the other."""
    from sklearn.model_selection import train_test_split

    fit_x, held_x, fit_y, held_y = train_test_split(test_x, test_y, test_size=test_fraction, stratify=test_y,
                                                    random_state=seed)
    result = probes.linear(fit_x, fit_y, held_x, held_y, num_classes)
    result["knn_top1"] = probes.knn(fit_x, fit_y, held_x, held_y, num_classes)
    result["scored_images"] = len(held_y)
    return result


def standard_protocol(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                      num_classes: int, probes: Probes = Probes()) -> dict:
    """The field's protocol: fit on the training set's embeddings, score on the whole test set."""
    result = probes.linear(train_x, train_y, test_x, test_y, num_classes)
    result["knn_top1"] = probes.knn(train_x, train_y, test_x, test_y, num_classes)
    result["cosine_knn_top1"] = probes.cosine_knn(train_x, train_y, test_x, test_y, num_classes)
    result["scored_images"] = len(test_y)
    return result


class Paper(Protocol):
    name = "paper"
    summary = (("linear_top1", "paper linear"), ("knn_top1", "kNN"))

    def __init__(self, test_fraction: float = 0.2):
        self.test_fraction = test_fraction

    @classmethod
    def from_settings(cls, settings) -> "Paper":
        return cls(settings.paper_test_fraction)

    def evaluate(self, encoded: Encoded, context: Context) -> dict:
        return paper_protocol(encoded.test, context.data.test.labels.cpu().numpy(), context.num_classes,
                              seed=randomness.evaluation_seed(context.seed), test_fraction=self.test_fraction,
                              probes=context.probes)


class Standard(Protocol):
    name = "standard"
    summary = (("linear_top1", "standard linear"), ("knn_top1", "kNN"))
    uses_probe_embeddings = True

    def evaluate(self, encoded: Encoded, context: Context) -> dict:
        figures = fitted_on_probe(encoded.probe, encoded.test, context.data.test.labels, context)
        return {**figures, "labelled_images": len(context.labelled)}


def fitted_on_probe(probe_x: np.ndarray, scored_x: np.ndarray, scored_y: torch.Tensor, context: Context) -> dict:
    """The standard protocol fitted on the labelled share of the probe set's embeddings, scored on `scored_x`."""
    index = context.labelled.cpu().numpy()
    return standard_protocol(probe_x[index], context.data.probe.labels.cpu().numpy()[index], scored_x,
                             scored_y.cpu().numpy(), context.num_classes, context.probes)


class Retrieval(Protocol):
    name = "retrieval"
    summary = (("recall_at_1", "Recall@1"), ("map_at_r", "MAP@R"))

    def evaluate(self, encoded: Encoded, context: Context) -> dict:
        x = torch.from_numpy(encoded.test).to(context.device)
        figures = retrieval_metrics(x, context.data.test.labels.to(context.device))
        return {**figures, "scored_images": len(x)}
