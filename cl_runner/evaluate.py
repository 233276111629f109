"""Evaluate a frozen encoder: embeddings of clean images, the two protocols (their classifiers: probes.py), the
collapse diagnostics; and the random-initialization baseline, the same evaluation of the encoder as initialized.

Two protocols, each named in the output:
- `paper`: the study's; the test embeddings split 80/20 (stratified, seeded), fitted on 80%, scored on 20%.
- `standard`: the field's linear probe; fitted on the training-set embeddings, scored on the whole test set.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from cl_runner import distributed, randomness
from cl_runner.data.augment import normalize, to_unit
from cl_runner.data.datasets import ImageSet, Splits
from cl_runner.distributed import World
from cl_runner.probes import Probes

PROTOCOLS = ("paper", "standard")
SCORED = (*PROTOCOLS, "val")  # metrics.json's scored parts: the protocols' test figures, and the validation split's


@torch.inference_mode()
def embed(encoder: nn.Module, images: torch.Tensor, features: str = "backbone", batch_size: int = 1024,
          world: World = World()) -> np.ndarray:
    """Embeddings [N, D] (float32, on the host) of clean uint8 images, the encoder in eval mode (BatchNorm
    uses its running statistics, nothing is updated); `features`: the backbone's, or the projector's output.
    In a distributed run (`world`) each process embeds its contiguous shard and every process receives all."""
    if world.is_distributed:
        share = world.share(len(images))
        mine = torch.from_numpy(embed(encoder, images[share.rows], features, batch_size))
        return distributed.gather_constant(mine, sizes=share.sizes).numpy()
    was_training = encoder.training
    encoder.train(False)  # eval mode: BatchNorm uses its running statistics
    device = next(encoder.parameters()).device  # images kept in host memory travel a batch at a time
    chunks = [encoder.features(normalize(to_unit(images[i:i + batch_size].to(device))), features).float().cpu()
              for i in range(0, len(images), batch_size)]
    encoder.train(was_training)
    return torch.cat(chunks).numpy()


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
    """What the evaluation reads of the encoders: the trained encoder's embeddings of the test images, of the
    probe's training images (standard protocol, validation), of one augmented view of the first test images
    (alignment) and of the validation images; and, for the random-encoder baseline, the initialization's of the
    test, probe and validation images."""

    test: np.ndarray
    probe: np.ndarray | None
    views: np.ndarray
    val: np.ndarray | None = None
    initial_test: np.ndarray | None = None
    initial_probe: np.ndarray | None = None
    initial_val: np.ndarray | None = None


def embed_for_evaluation(settings: DictConfig, encoder: nn.Module, initial: nn.Module | None, augment: Callable,
                         data: Splits, seed: int, world: World = World()) -> Embeddings:
    """Every embedding the evaluation (`settings`: the config's `eval`) needs, in one phase: the trained
    `encoder`'s, and the `initial` encoder's for the baseline (None: no baseline, or an untrained run, which is
    its own). In a distributed run each process embeds its shard of every set and all receive the whole; the
    probes then run on rank 0."""
    validated = data.val is not None and data.val.labelled and data.test.labelled
    probed = ("standard" in settings.protocols and data.test.labelled) or validated

    def embed_all(model: nn.Module, images: torch.Tensor) -> np.ndarray:
        return embed(model, images, settings.features, world=world)

    views = alignment_views(augment, data.test, seed, next(encoder.parameters()).device)
    embedded = Embeddings(embed_all(encoder, data.test.images),
                          embed_all(encoder, data.probe.images) if probed else None, embed_all(encoder, views),
                          embed_all(encoder, data.val.images) if validated else None)
    if initial is not None:
        embedded.initial_test = embed_all(initial, data.test.images)
        embedded.initial_probe = embed_all(initial, data.probe.images) if probed else None
        embedded.initial_val = embed_all(initial, data.val.images) if validated else None
    return embedded


def alignment_views(augment: Callable, test: ImageSet, seed: int, device: torch.device, points: int = 2000
                    ) -> torch.Tensor:
    """One view (uint8), made on `device`, of each of the first test images, drawn by the run's own augmentation
    (`augment(images, generator)`, seeded, so it is the same for every run of that augmentation): their
    embeddings' alignment (Wang & Isola 2020) with the clean images' is a diagnostic."""
    images = test.take(torch.arange(min(points, len(test)), device=device))
    generator = randomness.generator(seed, "alignment", device)
    return augment(images, generator).mul(255).round_().to(torch.uint8)


def evaluate_trained(settings: DictConfig, data: Splits, embedded: Embeddings, seed: int, device: torch.device
                     ) -> dict:
    """The trained encoder's scores, confusion matrices and diagnostics, alignment included."""
    metrics = evaluate_embeddings(settings, data, embedded.test, embedded.probe, seed, device, embedded.val)
    metrics["diagnostics"]["alignment"] = alignment(embedded.test[:len(embedded.views)], embedded.views)
    return metrics


def add_baseline(metrics: dict, settings: DictConfig, data: Splits, embedded: Embeddings, seed: int,
                 device: torch.device) -> None:
    """The initial encoder's scores and diagnostics (`baseline`) and the trained encoder's gain over them (`gain`),
    into `metrics`; an untrained run (no initial embeddings) is its own baseline."""
    initial = metrics if embedded.initial_test is None else evaluate_embeddings(
        settings, data, embedded.initial_test, embedded.initial_probe, seed, device, embedded.initial_val)
    metrics["baseline"] = scores_only(initial)
    metrics["gain"] = gains(metrics, metrics["baseline"])


def evaluate_embeddings(settings: DictConfig, data: Splits, test_x: np.ndarray, probe_x: np.ndarray | None,
                        seed: int, device: torch.device, val_x: np.ndarray | None = None) -> dict:
    """Both protocols (as configured in `settings`) and the diagnostics, on the frozen encoder's embeddings of
    clean images: `test_x` the test set's, `probe_x` the probe set's (standard protocol), the probes fitted on
    `device` (torch's solvers); with `val_x`, the validation images' embeddings, also the standard protocol
    scored on them (`val`: fitted on the probe set, which the validation images were held out of). Unlabelled
    test images get the (label-free) diagnostics only."""
    metrics: dict = {"features": settings.features, "diagnostics": diagnostics(test_x, device)}
    if not data.test.labelled:  # load_data has said why
        return metrics
    num_classes, test_y = len(data.test.classes), data.test.labels.cpu().numpy()
    probes = Probes(settings.solver, device, settings.knn_k, settings.cosine_knn_k, settings.cosine_knn_temperature)
    if "paper" in settings.protocols:
        metrics["paper"] = paper_protocol(test_x, test_y, num_classes, seed=randomness.evaluation_seed(seed),
                                          test_fraction=settings.paper_test_fraction, probes=probes)
    if "standard" in settings.protocols:
        metrics["standard"] = standard_protocol(probe_x, data.probe.labels.cpu().numpy(), test_x, test_y,
                                                num_classes, probes)
    if val_x is not None:
        metrics["val"] = standard_protocol(probe_x, data.probe.labels.cpu().numpy(), val_x,
                                           data.val.labels.cpu().numpy(), num_classes, probes)
    return metrics


def summary_line(metrics: dict) -> str:
    """E.g. "paper linear 0.9250 (+0.1510 over its random initialization), kNN 0.9300 (+0.1000); standard ..."."""
    parts, explained = [], False
    for protocol in (p for p in PROTOCOLS if p in metrics):
        for name, label in (("linear_top1", f"{protocol} linear"), ("knn_top1", "kNN")):
            text = f"{label} {metrics[protocol][name]:.4f}"
            gain = metrics.get("gain", {}).get(protocol, {}).get(name)
            if gain is not None:
                text += f" ({gain:+.4f}{'' if explained else ' over its random initialization'})"
                explained = True
            parts.append(text)
    return ", ".join(parts)
