"""A sweep's jobs as the report reads them: each job folder's status, metrics, seed and the factors that define
its scenario, in the sweep's own order."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cl_runner import run_folder

SCENARIO_GROUPS = ("dataset", "aug", "pairing", "loss", "encoder", "optimizer", "schedule", "experiment")
ALWAYS_SHOWN = ("dataset", "aug", "loss")
NOT_FACTORS = ("seed", "resume")  # overrides that do not define a scenario
METRICS = [("paper", "linear_top1"), ("paper", "linear_top3"), ("paper", "linear_top5"), ("paper", "knn_top1"),
           ("standard", "linear_top1"), ("standard", "linear_top3"), ("standard", "linear_top5"),
           ("standard", "knn_top1"), ("standard", "cosine_knn_top1"),
           ("retrieval", "recall_at_1"), ("retrieval", "recall_at_2"), ("retrieval", "recall_at_4"),
           ("retrieval", "recall_at_8"), ("retrieval", "map_at_r"),
           ("linear_aug", "linear_top1"), ("linear_aug", "linear_top5"), ("finetune", "top1"), ("finetune", "top5")]
# the protocols that train on labels: compared with their random initialization as the headline ones are
TRAINED_HEADLINE = [("linear_aug", "linear_top1"), ("finetune", "top1")]
SUMMARY = [("paper", "linear_top1"), ("paper", "knn_top1"), ("standard", "linear_top1"), ("standard", "knn_top1"),
           ("standard", "cosine_knn_top1"), ("retrieval", "recall_at_1"), ("retrieval", "map_at_r"),
           *TRAINED_HEADLINE]
HEADLINE = [("paper", "linear_top1"), ("standard", "linear_top1")]  # compared, gained, drawn
# label-free scores (the random initialization's have no alignment: it needs the run's augmentation)
DIAGNOSTICS = [("diagnostics", "rankme"), ("diagnostics", "uniformity"), ("diagnostics", "alignment")]
# the loss's own diagnostics at the last epoch of training (SimCLR's Table 5), where the loss has them
TRAINING = [("train", "contrastive_accuracy"), ("train", "contrastive_entropy")]
NAMES = {"linear_top1": "linear", "linear_top3": "top-3", "linear_top5": "top-5", "knn_top1": "kNN",
         "cosine_knn_top1": "cosine kNN", "top1": "top-1", "top5": "top-5", "map_at_r": "MAP@R",
         **{f"recall_at_{k}": f"Recall@{k}" for k in (1, 2, 4, 8)},
         "rankme": "RankMe", "contrastive_accuracy": "contrastive acc.", "contrastive_entropy": "entropy (nats)"}


@dataclass
class Job:
    """One job folder of the sweep: its status, metrics, seed and the factors that define its scenario (the
    config group choices and the command line's other overrides, the seed excluded)."""

    folder: Path
    status: str
    metrics: dict
    seed: int | None
    factors: dict[str, str] = field(default_factory=dict)
    started: str = ""

    @property
    def completed(self) -> bool:
        return self.status == "completed" and bool(self.metrics)

    def value(self, section: str, protocol: str, name: str) -> float | None:
        """metrics[protocol][name] (section ""), or the same score of `baseline` or `gain`."""
        source = self.metrics.get(section, {}) if section else self.metrics
        value = source.get(protocol, {}).get(name)
        return float(value) if isinstance(value, (int, float)) else None


def load_jobs(sweep_dir: Path) -> list[Job]:
    """Every job folder under `sweep_dir` (one holding a status.json), in the sweep's order of values (from its
    multirun.yaml), then by seed; jobs of no known order follow in the order they started."""
    jobs = []
    for status_file in sorted(sweep_dir.glob(f"*/{run_folder.STATUS_FILE}")):
        folder = status_file.parent
        status = run_folder.read_status(folder) or {}
        metrics = _read(folder / "metrics.json", json.loads) or {}
        choices = metrics.get("scenario") or status.get("scenario") or {}
        config = _read(folder / "config.yaml", yaml.safe_load) or {}
        overrides = _read(folder / "overrides.yaml", yaml.safe_load) or []
        factors = dict(choices)
        for override in overrides:
            key, _, value = override.lstrip("+~").partition("=")
            if key not in choices and key not in NOT_FACTORS and not key.startswith("hydra."):
                factors[key] = value
        jobs.append(Job(folder, status.get("status", "unknown"), metrics, metrics.get("seed", config.get("seed")),
                        factors, status.get("started", "")))
    jobs.sort(key=lambda j: (j.started or "~", j.folder.name))  # never started (a refused config): last
    order = sweep_order(sweep_dir)

    def place(job: Job) -> tuple:  # a stable sort: ties keep the order the jobs started in
        return (*(swept.index(job.factors.get(key)) if job.factors.get(key) in swept else len(swept)
                  for key, swept in order.items()), job.seed if isinstance(job.seed, int) else 0)

    return sorted(jobs, key=place) if order else jobs


def sweep_order(sweep_dir: Path) -> dict[str, list[str]]:
    """The values each swept key takes, in the order the sweep lists them (the experiment's sweeper params and
    the command line's `key=a,b,c`), from the multirun.yaml Hydra writes into the sweep folder."""
    hydra_cfg = sweep_config(sweep_dir).get("hydra", {})
    swept = dict(hydra_cfg.get("sweeper", {}).get("params") or {})
    for override in hydra_cfg.get("overrides", {}).get("task", []):
        key, _, value = override.partition("=")
        swept[key] = value
    return {key: [v.strip() for v in str(value).split(",")] for key, value in swept.items()
            if "," in str(value) and key not in NOT_FACTORS}


def sweep_config(sweep_dir: Path) -> dict:
    """The sweep's composed config, Hydra's part included, as Hydra wrote it into the folder (multirun.yaml)."""
    return _read(sweep_dir / "multirun.yaml", yaml.safe_load) or {}


def _read(path: Path, parse):
    try:
        return parse(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None


def factor_columns(jobs: list[Job]) -> list[str]:
    """The factors shown: dataset, aug and loss, and every other one that varies across the sweep."""
    names = [g for g in SCENARIO_GROUPS if any(g in j.factors for j in jobs)]
    names += sorted({k for j in jobs for k in j.factors} - set(names))
    return [n for n in names if n in ALWAYS_SHOWN or len({j.factors.get(n) for j in jobs}) > 1]


def scenarios(jobs: list[Job]) -> dict[tuple, list[Job]]:
    """Jobs grouped by scenario (all factors), in order of first appearance."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault(tuple(sorted(job.factors.items())), []).append(job)
    return groups


def values(jobs: list[Job], section: str, protocol: str, name: str) -> list[float]:
    found = [j.value(section, protocol, name) for j in jobs if j.completed]
    return [v for v in found if v is not None]




def label(protocol: str, name: str) -> str:
    return f"{protocol} {NAMES.get(name, name)}"


