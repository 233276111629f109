"""The sweep report on hand-made job folders: scenarios by seed, intervals, paired comparisons, flags."""
import csv
import json
from pathlib import Path

import pytest
import yaml

from cl_runner import report
from cl_runner.intervals import mean_interval, paired_difference

PAIRING = {"cosine_embedding": "pair", "triplet": "triplet"}


def write_job(sweep: Path, number: int, seed: int, loss: str, paper: float, baseline: float,
              aug: str = "simclr", status: str = "completed") -> None:
    scenario = {"dataset": "mnist", "aug": aug, "pairing": PAIRING[loss], "loss": loss, "encoder": "pami_cnn"}
    folder = sweep / f"{number}_aug={aug},loss={loss}"
    folder.mkdir(parents=True)
    (folder / "status.json").write_text(json.dumps({"status": status, "scenario": scenario}))
    (folder / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "epochs": 2}))
    (folder / "overrides.yaml").write_text(yaml.safe_dump([f"aug={aug}", f"loss={loss}", f"seed={seed}"]))
    if status != "completed":
        return
    standard = paper + 0.01
    metrics = {"scenario": scenario, "seed": seed,
               "paper": {"linear_top1": paper, "knn_top1": paper - 0.02},
               "standard": {"linear_top1": standard, "knn_top1": standard, "cosine_knn_top1": standard},
               "baseline": {"paper": {"linear_top1": baseline}, "standard": {"linear_top1": baseline}},
               "gain": {"paper": {"linear_top1": paper - baseline}, "standard": {"linear_top1": standard - baseline}}}
    (folder / "metrics.json").write_text(json.dumps(metrics))


PAPER = {"cosine_embedding": [0.80, 0.86, 0.83], "triplet": [0.82, 0.885, 0.852]}
BASELINE = [0.77, 0.78, 0.76]


@pytest.fixture
def sweep(tmp_path) -> Path:
    number = 0
    for loss, values in PAPER.items():
        for seed, value in enumerate(values):
            write_job(tmp_path, number, seed, loss, value, BASELINE[seed])
            number += 1
    return tmp_path


def rows_of(markdown: str, first_cell: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines()
            if line.startswith(f"| {first_cell} |")]


def test_scenarios_carry_their_mean_and_t_interval_over_seeds(sweep):
    text = report.build_report(sweep).read_text()
    header = rows_of(text, "dataset")[0]
    scenarios = rows_of(text, "mnist")[:2]
    for row, loss in zip(scenarios, PAPER):
        cells = dict(zip(header, row))
        expected = mean_interval(PAPER[loss])
        assert cells["loss"] == loss and cells["seeds"] == "3"
        assert cells["paper linear"] == f"{expected.mean:.4f} ± {expected.half_width:.4f}"
        gain = mean_interval([p - b for p, b in zip(PAPER[loss], BASELINE)])
        assert cells["gain, paper linear"] == f"{gain.mean:+.4f} ± {gain.half_width:.4f}"
        assert cells["random init, paper linear"].startswith("0.7700 ± ")
        assert cells["note"] == ""
    assert "Student t" in text and "no interval is possible" not in text


def test_the_loss_comparison_is_paired_by_seed(sweep):
    text = report.build_report(sweep).read_text()
    assert "## loss: paired differences within dataset x aug" in text
    assert "## pairing" not in text  # the pairing follows the loss: not a comparison of its own
    header = rows_of(text, "dataset")[1]
    (row,) = [r for r in rows_of(text, "mnist") if "triplet − cosine_embedding" in r]
    cells = dict(zip(header, row))
    paired = paired_difference(PAPER["cosine_embedding"], PAPER["triplet"])  # +0.02, +0.025, +0.022
    assert cells["paired Δ paper linear"] == f"{paired.mean:+.4f} ± {paired.half_width:.4f} *"
    assert float(cells["unpaired ±"]) > 5 * paired.half_width  # the seeds' shared luck dominates unpaired
    with open(sweep / "comparisons.csv") as fh:
        (saved,) = list(csv.DictReader(fh))
    assert saved["factor"] == "loss" and saved["difference"] == "triplet − cosine_embedding"


def test_the_long_table_keeps_one_row_per_job_with_its_seed(sweep):
    report.build_report(sweep)
    with open(sweep / "results.csv") as fh:
        jobs = list(csv.DictReader(fh))
    assert [j["seed"] for j in jobs] == ["0", "1", "2"] * 2
    assert jobs[4]["paper.linear_top1"] == "0.8850" and jobs[4]["gain.paper.linear_top1"] == "0.1050"
    with open(sweep / "scenarios.csv") as fh:
        scenarios = list(csv.DictReader(fh))
    assert len(scenarios) == 2 and scenarios[1]["paper.linear_top1.n"] == "3"
    assert float(scenarios[1]["paper.linear_top1.low"]) == pytest.approx(mean_interval(PAPER["triplet"]).low,
                                                                        abs=1e-4)
    assert (sweep / "results.png").stat().st_size > 10000


def test_a_scenario_below_its_random_initialization_is_flagged(tmp_path):
    for seed, (paper, baseline) in enumerate([(0.70, 0.75), (0.72, 0.76), (0.71, 0.77)]):
        write_job(tmp_path, seed, seed, "cosine_embedding", paper, baseline, aug="none")
    text = report.build_report(tmp_path).read_text()
    (row,) = rows_of(text, "mnist")
    assert "below its random initialization by paper linear" in row[-1]


def test_one_seed_per_scenario_says_that_no_interval_is_possible(tmp_path):
    write_job(tmp_path, 0, 0, "cosine_embedding", 0.80, 0.77)
    write_job(tmp_path, 1, 0, "triplet", 0.84, 0.77)
    text = report.build_report(tmp_path).read_text()
    assert "One seed per scenario: no interval is possible" in text
    assert "±" not in "".join(line for line in text.splitlines() if line.startswith("| mnist |"))


def test_failed_jobs_stay_in_the_long_table_and_out_of_the_statistics(sweep):
    write_job(sweep, 6, 3, "triplet", 0.0, 0.0, status="failed")
    text = report.build_report(sweep).read_text()
    triplet = [r for r in rows_of(text, "mnist") if r[2] == "triplet" and r[3] == "triplet"][0]
    assert triplet[4] == "3" and "1 of 4 jobs not completed" in triplet[-1]
    assert (sweep / "results.csv").read_text().splitlines()[-1].endswith(",failed")


def test_compare_names_a_factor_of_the_sweep(sweep):
    with pytest.raises(ValueError, match="--compare bogus: not a factor of this sweep"):
        report.build_report(sweep, compare=["bogus"])


def test_comparisons_csv_keeps_each_factor_s_context_in_its_own_columns(sweep):
    for seed, value in enumerate(PAPER["triplet"]):
        write_job(sweep, 6 + seed, seed, "triplet", value - 0.05, BASELINE[seed], aug="none")
    report.build_report(sweep)
    with open(sweep / "comparisons.csv") as fh:
        rows = list(csv.DictReader(fh))
    (by_aug,) = [r for r in rows if r["factor"] == "aug"]  # within dataset x pairing x loss: triplet only
    assert (by_aug["loss"], by_aug["aug"], by_aug["difference"]) == ("triplet", "", "none − simclr")
    (by_loss,) = [r for r in rows if r["factor"] == "loss"]  # within dataset x aug
    assert (by_loss["aug"], by_loss["loss"]) == ("simclr", "")
    assert by_aug["unpaired ± paper linear"] and by_aug["unpaired ± standard linear"]


def test_a_sweep_without_labels_reports_its_diagnostics_with_intervals(tmp_path):
    rankmes, initial = [5.0, 6.0, 7.0], [3.0, 3.5, 4.0]
    for seed, (rankme, start) in enumerate(zip(rankmes, initial)):
        folder = tmp_path / f"loss=ntxent,seed={seed}"
        folder.mkdir()
        scenario = {"dataset": "image_folder", "aug": "simclr", "loss": "ntxent"}
        (folder / "status.json").write_text(json.dumps({"status": "completed", "scenario": scenario}))
        (folder / "overrides.yaml").write_text(yaml.safe_dump([f"seed={seed}"]))
        diagnostics = {"rankme": rankme, "uniformity": -2.0, "alignment": 0.5}
        (folder / "metrics.json").write_text(json.dumps({
            "scenario": scenario, "seed": seed, "diagnostics": diagnostics,
            "baseline": {"diagnostics": {"rankme": start, "uniformity": -1.0}}}))
    text = report.build_report(tmp_path).read_text()
    cells = dict(zip(rows_of(text, "dataset")[0], rows_of(text, "image_folder")[0]))
    expected, start = mean_interval(rankmes), mean_interval(initial)
    assert cells["diagnostics RankMe"] == f"{expected.mean:.4f} ± {expected.half_width:.4f}"
    assert cells["random init, diagnostics RankMe"] == f"{start.mean:.4f} ± {start.half_width:.4f}"
    assert "paper linear" not in cells
    with open(tmp_path / "results.csv") as fh:
        assert [row["diagnostics.rankme"] for row in csv.DictReader(fh)] == ["5.0000", "6.0000", "7.0000"]


def test_a_two_factor_sweep_is_drawn_as_a_matrix_with_intervals_seeds_and_the_random_init(tmp_path):
    number = 0
    scores = {("guo", "cosine_embedding"): [0.70, 0.72, 0.74], ("guo", "triplet"): [0.80, 0.81],
              ("simclr", "cosine_embedding"): [0.60, 0.66, 0.63], ("simclr", "triplet"): [0.90]}
    for (aug, loss), values in scores.items():
        for seed, paper in enumerate(values):
            write_job(tmp_path, number, seed, loss, paper, BASELINE[seed], aug=aug)
            number += 1
    report.build_report(tmp_path)
    text = (tmp_path / "results.md").read_text()
    assert "## Matrix: aug (rows) x loss (columns)" in text
    guo_cosine = mean_interval([0.70, 0.72, 0.74])
    assert f"| guo | {guo_cosine.mean:.3f} ± {guo_cosine.half_width:.3f} (3) |" in text
    assert f"| 0.900 (1) |" in text  # one seed: no interval
    assert f"random init {sum(BASELINE) / 3:.3f}" in text
    assert (tmp_path / "matrix.png").stat().st_size > 10_000


def test_a_sweep_over_one_factor_draws_no_matrix(sweep):
    report.build_report(sweep)
    assert not (sweep / "matrix.png").exists() and "## Matrix" not in (sweep / "results.md").read_text()


def test_a_loss_s_contrastive_figures_join_the_tables_only_where_jobs_have_them(sweep):
    report.build_report(sweep)
    assert "contrastive" not in (sweep / "results.csv").read_text()  # the pair and triplet losses report none
    for folder in sorted(sweep.glob("*_aug=simclr,loss=triplet"))[:1]:
        metrics = json.loads((folder / "metrics.json").read_text())
        metrics["train"] = {"contrastive_accuracy": 0.625, "contrastive_entropy": 3.5}
        (folder / "metrics.json").write_text(json.dumps(metrics))
    report.build_report(sweep)
    with open(sweep / "results.csv") as fh:
        jobs = list(csv.DictReader(fh))
    assert [j["train.contrastive_accuracy"] for j in jobs].count("0.6250") == 1
    header = next(line for line in (sweep / "results.md").read_text().splitlines() if line.startswith("| "))
    assert "train contrastive acc." in header and "train entropy (nats)" in header


def test_the_figure_draws_only_the_protocols_the_jobs_ran(sweep):
    from PIL import Image

    report.build_report(sweep)
    both = Image.open(sweep / "results.png").size
    for path in sweep.glob("*/metrics.json"):  # as eval.protocols=[standard] leaves them
        metrics = json.loads(path.read_text())
        metrics.pop("paper"), metrics["baseline"].pop("paper"), metrics["gain"].pop("paper")
        path.write_text(json.dumps(metrics))
    report.build_report(sweep)
    one = Image.open(sweep / "results.png").size
    assert one[1] == both[1] and one[0] < 0.6 * both[0]  # one panel, not an empty one beside it


def test_a_sweep_grown_by_jobs_with_another_override_keeps_its_matrix(tmp_path):
    """A job that does not set a factor the others set (a sweep grown with another override) is that factor's
    default level, not None (which broke the matrix's table with a TypeError)."""
    number = 0
    for aug, loss in [("guo", "cosine_embedding"), ("guo", "triplet"), ("simclr", "cosine_embedding")]:
        for seed in range(2):
            write_job(tmp_path, number, seed, loss, 0.7 + 0.01 * number, BASELINE[seed], aug=aug)
            number += 1
    for seed in range(2):  # grown: no aug= on its command line
        write_job(tmp_path, number, seed, "triplet", 0.9, BASELINE[seed])
        folder = next(tmp_path.glob(f"{number}_*"))
        (folder / "overrides.yaml").write_text(yaml.safe_dump(["loss=triplet", f"seed={seed}"]))
        for name in ("status.json", "metrics.json"):
            content = json.loads((folder / name).read_text())
            content["scenario"].pop("aug")
            (folder / name).write_text(json.dumps(content))
        number += 1
    report.build_report(tmp_path)
    text = (tmp_path / "results.md").read_text()
    assert "## Matrix: aug (rows) x loss (columns)" in text and "| (default) |" in text
