"""The pipeline benchmark runs with tiny settings and prints one valid JSON line (no timing assertions)."""
import json
import subprocess
import sys

from conftest import DATA_ROOT, REPO

FIELDS = {"study_tuples_per_s", "floor_tuples_per_s", "cl_runner_tuples_per_s", "study_images_per_s",
          "floor_images_per_s", "cl_runner_images_per_s", "c_over_a", "c_over_b", "dataset", "aug", "loss",
          "pairing", "batch_size", "steps", "precision", "device", "device_name", "threads", "torch"}


def test_bench_pipeline_prints_a_table_and_json(tmp_path):
    for loss in ("triplet", "cosine_embedding"):
        result = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "bench_pipeline.py"), "--dataset", "digits", "--aug", "guo",
             "--loss", loss, "--batch-size", "32", "--steps", "2", "--warmup", "1", "--workers", "1",
             "--data-root", str(DATA_ROOT)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        lines = result.stdout.strip().splitlines()
        assert "(c) cl-runner training loop" in result.stdout
        figures = json.loads(lines[-1])
        assert FIELDS <= figures.keys()
        assert figures["pairing"] == ("triplet" if loss == "triplet" else "pair")
        assert all(figures[k] > 0 for k in FIELDS if k.endswith("_per_s") or k.startswith("c_over"))
