"""The evaluation phase of a run: every protocol of `eval.protocols` (each behind the contract of protocol.py)
and the label-free diagnostics, on the trained encoder and, for the baseline, on the encoder as initialized; and
the figures that metrics.json, TensorBoard and the log line make of them."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from cl_runner.data.datasets import Splits
from cl_runner.distributed import World
from cl_runner.evaluation.classifier_training import Finetune, LinearAug
from cl_runner.evaluation.diagnostics import alignment, diagnostics
from cl_runner.evaluation.embeddings import alignment_views, embed
from cl_runner.evaluation.frozen import Paper, Retrieval, Standard, fitted_on_probe
from cl_runner.evaluation.label_fraction import labelled_subset
from cl_runner.evaluation.protocol import Context, Encoded, Progress, Protocol
from cl_runner.runtime import Compute

PROTOCOLS: dict[str, type[Protocol]] = {p.name: p for p in (Paper, Standard, Retrieval, LinearAug, Finetune)}
SCORED = (*PROTOCOLS, "val")  # metrics.json's scored parts: the protocols' test figures, and the validation split's


def scores_only(metrics: dict) -> dict:
    """The protocols' scores and the diagnostics of `metrics`, without the confusion matrices."""
    kept = {"diagnostics": {k: v for k, v in metrics["diagnostics"].items() if k != "alignment"}}
    for protocol in SCORED:
        if protocol in metrics:
            kept[protocol] = {k: v for k, v in metrics[protocol].items() if k != "confusion_matrix"}
    return kept


def gains(trained: dict, initial: dict) -> dict:
    """Trained minus initial, for every accuracy of every protocol: what pretraining added."""
    return {protocol: {name: trained[protocol][name] - value for name, value in initial[protocol].items()
                       if isinstance(value, float)}
            for protocol in SCORED if protocol in initial}


def final_scores(metrics: dict) -> dict[str, float]:
    """Every accuracy as `eval/PROTOCOL/NAME` (`eval/val/NAME` for the validation split), and its gain over the
    initialization as `gain/PROTOCOL/NAME`."""
    scores = {}
    for protocol in SCORED:
        for prefix, source in (("eval", metrics), ("gain", metrics.get("gain", {}))):
            scores.update({f"{prefix}/{protocol}/{name}": value
                           for name, value in source.get(protocol, {}).items() if isinstance(value, float)})
    return scores


@dataclass
class Embeddings:
    """What the evaluation reads of the encoders: the `trained` encoder with its embeddings, the `initial` one with
    its own for the random-encoder baseline (None: no baseline, or an untrained run, which is its own), and the
    trained encoder's embeddings of one augmented view of the first test images (alignment)."""

    trained: Encoded
    views: np.ndarray
    initial: Encoded | None = None


def uses_probe_embeddings(settings: DictConfig, data: Splits) -> bool:
    """Whether a protocol, or the validation split's figures, fit on the probe set's embeddings."""
    return data.test.labelled and (data.val is not None and data.val.labelled or
                                   any(PROTOCOLS[name].uses_probe_embeddings for name in settings.protocols))


def embed_for_evaluation(settings: DictConfig, encoder: nn.Module, initial: nn.Module | None, augment: Callable,
                         data: Splits, seed: int, world: World = World()) -> Embeddings:
    """Every embedding the evaluation (`settings`: the config's `eval`) needs, in one phase: the trained
    `encoder`'s, and the `initial` encoder's for the baseline. In a distributed run each process embeds its shard
    of every set and all receive the whole; the protocols then run on rank 0."""
    validated = data.val is not None  # RankMe needs no labels; the probes, labels on the test set too
    probed = uses_probe_embeddings(settings, data)

    def encoded(tag: str, model: nn.Module) -> Encoded:
        return Encoded(tag, model, embed_all(model, data.test.images),
                       embed_all(model, data.probe.images) if probed else None,
                       embed_all(model, data.val.images) if validated else None)

    def embed_all(model: nn.Module, images: torch.Tensor) -> np.ndarray:
        return embed(model, images, settings.features, world=world)

    views = alignment_views(augment, data.test, seed, next(encoder.parameters()).device)
    trained = encoded("trained", encoder)
    return Embeddings(trained, embed_all(encoder, views), None if initial is None else encoded("baseline", initial))


def evaluate_trained(settings: DictConfig, data: Splits, embedded: Embeddings, seed: int, compute: Compute,
                     progress: Progress = Progress()) -> dict:
    """The trained encoder's scores, confusion matrices and diagnostics, alignment included."""
    metrics = evaluate_encoded(embedded.trained, evaluation_context(settings, data, seed, compute, progress))
    metrics["diagnostics"]["alignment"] = alignment(embedded.trained.test[:len(embedded.views)], embedded.views)
    return metrics


def add_baseline(metrics: dict, settings: DictConfig, data: Splits, embedded: Embeddings, seed: int,
                 compute: Compute, progress: Progress = Progress()) -> None:
    """The initial encoder's scores and diagnostics (`baseline`) and the trained encoder's gain over them (`gain`),
    into `metrics`; an untrained run (no initial encoder) is its own baseline."""
    initial = metrics if embedded.initial is None else evaluate_encoded(
        embedded.initial, evaluation_context(settings, data, seed, compute, progress))
    metrics["baseline"] = scores_only(initial)
    metrics["gain"] = gains(metrics, metrics["baseline"])


def evaluation_context(settings: DictConfig, data: Splits, seed: int, compute: Compute,
                       progress: Progress = Progress()) -> Context:
    """What the protocols read: `settings` (the config's `eval`), the data and the labels they may use (the
    probe set's `eval.label_fraction`), the run's seed and compute, where they checkpoint."""
    labels = data.probe.labels
    labelled = torch.zeros(0, dtype=torch.long) if labels is None else \
        labelled_subset(labels, settings.label_fraction, seed)
    return Context(settings, data, seed, compute, labelled, progress)


def evaluate_encoded(encoded: Encoded, context: Context) -> dict:
    """Every protocol of `eval.protocols`, in its order, and the diagnostics, on one encoder; with a validation
    split, also the standard protocol scored on its images (`val`: fitted on the probe set, which the validation
    images were held out of) and, labels or not, its RankMe. Unlabelled test images get the (label-free)
    diagnostics only."""
    settings, data = context.settings, context.data
    metrics: dict = {"features": settings.features, "diagnostics": diagnostics(encoded.test, context.device)}
    if encoded.val is not None:  # RankMe of the validation images: a search's label-free objective
        metrics["val"] = {"rankme": diagnostics(encoded.val, context.device)["rankme"]}
    if not data.test.labelled:  # load_data has said why
        return metrics
    for name in settings.protocols:
        metrics[name] = PROTOCOLS[name].from_settings(settings).evaluate(encoded, context)
    if encoded.val is not None and data.val.labelled:
        metrics["val"].update(fitted_on_probe(encoded.probe, encoded.val, data.val.labels, context))
    return metrics


def summary_line(metrics: dict) -> str:
    """E.g. "paper linear 0.9250 (+0.1510 over its random initialization), kNN 0.9300 (+0.1000), standard ...":
    each protocol's `summary` figures."""
    parts, explained = [], False
    for protocol in (p for p in PROTOCOLS if p in metrics):
        for name, label in PROTOCOLS[protocol].summary:
            text = f"{label} {metrics[protocol][name]:.4f}"
            gain = metrics.get("gain", {}).get(protocol, {}).get(name)
            if gain is not None:
                text += f" ({gain:+.4f}{'' if explained else ' over its random initialization'})"
                explained = True
            parts.append(text)
    return ", ".join(parts)
