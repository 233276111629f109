"""A multirun over every option of every config group, found by glob (no hand-kept list), with tiny settings."""
import json
from pathlib import Path

import pytest

from conftest import REPO, run_cli

CONF = REPO / "conf"
SMOKE = ["epochs=1", "batch_size=32", "dataset.train_subset=96", "eval.tsne_points=40", "log_every=1",
         "eval.cosine_knn_k=20"]
# The pairing group is swept through the losses: each loss selects its own pairing, and a loss on a pairing it
# cannot use is refused (tested in test_cli.py). The coverage check below still demands every pairing option.
SWEPT_GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra", "pairing"))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def scenarios(sweep: Path) -> list[dict]:
    return [json.loads(p.read_text())["scenario"] for p in sorted(sweep.glob("*/metrics.json"))]


@pytest.mark.parametrize("group", SWEPT_GROUPS)
def test_every_option_of_the_group_runs(group, tmp_path, data_root):
    result = run_cli(["-m", f"{group}={','.join(options(group))}", *SMOKE, "hydra.sweep.dir=sweep"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    ran = scenarios(tmp_path / "sweep")
    if group == "experiment":  # an experiment is itself a sweep: paper_grid holds 12 scenarios
        assert len(ran) == 12 and all(s["experiment"] == "paper_grid" for s in ran)
    else:
        assert sorted(s[group] for s in ran) == options(group)
    assert (tmp_path / "sweep" / "results.md").exists()
    if group == "loss":
        assert {s["pairing"] for s in ran} == set(options("pairing"))
