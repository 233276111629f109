"""The pipeline benchmark runs with tiny settings and prints one valid JSON line (no timing assertions). The
scripts run as real processes, as a user runs them (the slow tier)."""
import json
import subprocess
import sys

import pytest

from conftest import DATA_ROOT, REPO

FIELDS = {"study_tuples_per_s", "floor_tuples_per_s", "cl_runner_tuples_per_s", "study_images_per_s",
          "floor_images_per_s", "cl_runner_images_per_s", "c_over_a", "c_over_b", "dataset", "aug", "loss",
          "pairing", "batch_size", "steps", "precision", "device", "device_name", "threads", "torch"}


@pytest.mark.slow
@pytest.mark.parametrize("loss, extra, pairing", [
    ("triplet", [], "triplet"), ("cosine_embedding", [], "pair"),
    ("ntxent", ["--encoder", "resnet18", "--optimizer", "lars"], "multiview")])
def test_bench_pipeline_prints_a_table_and_json(tmp_path, loss, extra, pairing):
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_pipeline.py"), "--dataset", "digits", "--aug", "guo",
         "--loss", loss, "--batch-size", "32", "--steps", "2", "--warmup", "1", "--workers", "1",
         "--data-root", str(DATA_ROOT), *extra], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert "(c) cl-runner training loop" in result.stdout
    figures = json.loads(lines[-1])
    assert FIELDS <= figures.keys()
    assert figures["pairing"] == pairing
    assert figures["compile_batch"] is False and figures["compile_encoder"] is False  # auto, on a CPU
    assert all(figures[k] > 0 for k in FIELDS if k.endswith("_per_s") or k.startswith("c_over"))


@pytest.mark.slow
def test_profile_step_counts_the_operators_of_both_halves_of_a_step(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "profile_step.py"), "--steps", "2", "--warmup", "1", "--",
         "dataset=digits", "aug=simclr", "loss=triplet", "batch_size=16"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "convolution" in result.stdout  # the model step's operators are listed
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    ops = figures["ops_per_step"]
    # SimCLR's colour jitter alone calls dozens of operators per view; a 3-layer CNN's step far fewer than 1000
    assert ops["build batch"] > 100 and 20 < ops["model step"] < 1000
    assert figures["ops_per_step_total"] == ops["build batch"] + ops["model step"]
