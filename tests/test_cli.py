"""End to end: `cl-run` on the embedded data set, a two-job multirun, and every user mistake's message. They run
`cl-run`'s own function in this process (run_main); the tests marked slow start real processes where a process is
the point: the installed console script, a typed command's exit code, runs in two processes."""
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cl_runner import report
from cl_runner.models import Encoder, PamiCNN
from conftest import REPO, TINY, main_here, run_cli, run_main

PROMISED_FILES = ["config.yaml", "overrides.yaml", "metrics.json", "status.json", "confusion_matrix.png",
                  "tsne.csv", "tsne.png", "encoder.pt", "cl_run.log"]


def only_run_dir(root: Path) -> Path:
    runs = [p.parent for p in root.glob("outputs/runs/*/*/status.json")]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("run")
    assert main_here([*TINY, "aug=simclr", "loss=cosine_embedding"], cwd) == 0  # its traceback: in the output
    return only_run_dir(cwd)


def test_a_run_leaves_every_promised_file(digits_run):
    for name in PROMISED_FILES:
        assert (digits_run / name).is_file() and (digits_run / name).stat().st_size > 0, name
    assert json.loads((digits_run / "status.json").read_text())["status"] == "completed"
    assert not list(digits_run.glob(".*.tmp"))  # atomic writes leave no temporaries
    config = yaml.safe_load((digits_run / "config.yaml").read_text())
    assert config["epochs"] == 1 and config["aug"]["views"] == [["crop", "flip", "jitter", "grayscale", "blur"]]
    last = (digits_run / "cl_run.log").read_text().strip().splitlines()[-1]
    assert "done in" in last and "over its random initialization" in last and "paper linear 0." in last
    # one run takes every core torch would (the launcher's share of the cores is for a sweep's jobs)
    assert json.loads((digits_run / "metrics.json").read_text())["environment"]["threads"] == torch.get_num_threads()


def test_metrics_are_nested_by_protocol(digits_run):
    metrics = json.loads((digits_run / "metrics.json").read_text())
    for protocol in ("paper", "standard"):
        for name in ("linear_top1", "linear_top3", "knn_top1"):
            assert 0.0 <= metrics[protocol][name] <= 1.0, (protocol, name)
        assert metrics[protocol]["linear_top3"] >= metrics[protocol]["linear_top1"]
    assert 0.0 <= metrics["standard"]["cosine_knn_top1"] <= 1.0
    assert metrics["paper"]["scored_images"] == 72 and metrics["standard"]["scored_images"] == 360
    assert metrics["train"]["tuples_per_s"] > 0 and metrics["train"]["steps"] == 45  # ceil(2 * 1437 / 64)
    assert set(metrics["timing"]) >= {"data_s", "train_s", "eval_s", "baseline_s", "tsne_s", "export_s", "total_s"}
    assert set(metrics["diagnostics"]) >= {"rankme", "normalized_std", "uniformity", "alignment"}
    assert metrics["diagnostics"]["alignment"] >= 0 and metrics["diagnostics"]["uniformity"] <= 0
    assert metrics["scenario"] == {"dataset": "digits", "aug": "simclr", "pairing": "pair",
                                   "loss": "cosine_embedding", "encoder": "pami_cnn", "optimizer": "sgd",
                                   "schedule": "constant"}


def test_tsne_csv_holds_the_first_test_images(digits_run):
    lines = (digits_run / "tsne.csv").read_text().splitlines()
    assert lines[0] == "x,y,label,index" and len(lines) == 61
    assert [int(line.split(",")[3]) for line in lines[1:4]] == [0, 1, 2]


def test_tensorboard_reads_the_event_files(digits_run):
    events = EventAccumulator(str(digits_run / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/tuples_per_s", "eval/paper/linear_top1"} <= scalars
    assert events.Scalars("train/lr")[0].value == pytest.approx(0.05)
    assert {"gain/paper/linear_top1", "gain/standard/knn_top1"} <= scalars


def test_tensorboard_hparams_hold_the_scenario_and_the_final_scores(digits_run):
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(digits_run / "tensorboard"))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} >= {"eval/paper/linear_top1", "gain/paper/linear_top1"}
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = session.session_start_info.hparams
    assert hparams["loss"].string_value == "cosine_embedding" and hparams["aug"].string_value == "simclr"
    assert hparams["seed"].number_value == 0 and hparams["lr"].number_value == pytest.approx(0.05)
    metrics = json.loads((digits_run / "metrics.json").read_text())
    logged = events.Scalars("gain/paper/linear_top1")[-1].value
    assert logged == pytest.approx(metrics["gain"]["paper"]["linear_top1"], abs=1e-6)


def test_saved_weights_load_into_the_encoder(digits_run):
    encoder = Encoder(PamiCNN(1))
    encoder.load_state_dict(torch.load(digits_run / "encoder.pt", weights_only=True))


@pytest.mark.slow
def test_the_installed_console_script_runs_from_any_folder(tmp_path):
    script = Path(sys.executable).with_name("cl-run")
    if not script.exists():
        pytest.skip("cl-run is not installed beside this interpreter")
    import subprocess

    result = subprocess.run([str(script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "dataset: cifar10, cifar100, digits, image_folder, mnist, mnist_sample" in result.stdout


@pytest.mark.slow
def test_same_seed_same_metrics_on_cpu(tmp_path):
    """Two processes (this one and a new one): the figures may hang on nothing that a process draws for itself
    (its hash seed, its addresses)."""
    metrics, args = [], [*TINY, "loss=triplet", "aug=guo", "eval.protocols=[paper]"]
    for name in ("a", "b"):
        cwd = tmp_path / name
        cwd.mkdir()
        assert (main_here(args, cwd) if name == "a" else run_cli(args, cwd).returncode) == 0
        metrics.append(json.loads((only_run_dir(cwd) / "metrics.json").read_text()))
    assert metrics[0]["train"]["epoch_losses"] == metrics[1]["train"]["epoch_losses"]
    assert metrics[0]["paper"] == metrics[1]["paper"]


@pytest.fixture(scope="module")
def two_job_sweep(tmp_path_factory) -> Path:
    """A sweep of two jobs (two losses), shared by the tests that read its report."""
    cwd = tmp_path_factory.mktemp("two_jobs")
    code = main_here(["-m", *TINY, "loss=cosine_embedding,triplet", "hydra.sweep.dir=sweep"], cwd)
    assert code == 0
    return cwd / "sweep"


def test_two_job_multirun_writes_the_report(two_job_sweep):
    sweep = two_job_sweep
    report = (sweep / "results.md").read_text()
    assert "One seed per scenario: no interval is possible" in report
    scenario_rows = [line for line in report.splitlines() if line.startswith("| digits |")]
    assert report.count("| dataset | aug | pairing | loss | seeds | paper linear |") == 1
    assert len(scenario_rows) == 3  # two scenarios, one loss comparison
    assert "## loss: paired differences within dataset x aug" in report
    assert "| triplet − cosine_embedding | 1 |" in scenario_rows[2] and "±" not in scenario_rows[2]
    rows = (sweep / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("job,dataset,aug,pairing,loss,seed,paper.linear_top1")
    assert rows[1].endswith(",completed") and ",baseline.paper.linear_top1," in rows[0]
    assert (sweep / "tsne_grid.png").stat().st_size > 10000 and (sweep / "results.png").stat().st_size > 10000
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())  # named by scenario and seed
    assert jobs == [f"batch_size=64,dataset=digits,epochs=1,eval.tsne_points=60,log_every=2,loss={loss},seed=0"
                    for loss in ("cosine_embedding", "triplet")]


def cl_report(args: list[str], capfd) -> tuple[int, str, str]:
    """`cl-report ARGS` in this process (cl_runner.report.main, the console script's function)."""
    capfd.readouterr()
    try:
        report.main(args)
        code = 0
    except SystemExit as stop:
        code = 0 if stop.code is None else stop.code if isinstance(stop.code, int) else 1
    out, err = capfd.readouterr()
    return code, out, err


def test_cl_report_rebuilds_the_report_of_a_sweep_folder(tmp_path, two_job_sweep, capfd):
    shutil.copytree(two_job_sweep, tmp_path / "s")
    (tmp_path / "s" / "results.md").unlink()
    code, out, _ = cl_report([str(tmp_path / "s"), "--compare", "loss"], capfd)
    assert code == 0 and "| triplet − cosine_embedding | 1 |" in out
    assert (tmp_path / "s" / "results.md").exists()
    assert (tmp_path / "s" / "results.csv").read_text().count(",completed") == 2
    code, _, err = cl_report([str(tmp_path / "nowhere")], capfd)
    assert code == 2 and "holds no cl-run job folders" in err
    code, _, err = cl_report([str(tmp_path / "s"), "--compare", "optimizer.lr"], capfd)
    assert code == 2 and "--compare optimizer.lr: not a factor of this sweep" in err


LOSSES = ", ".join(sorted(p.stem for p in (REPO / "conf" / "loss").glob("*.yaml")))
BAD_INPUTS = [
    (["loss=bogus"], f"Could not find 'loss/bogus'; choose one of: {LOSSES}"),
    (["dataset=imagenet"], "choose one of: cifar10, cifar100, digits, image_folder, mnist, mnist_sample"),
    (["epochs_typo=3"], "Could not override 'epochs_typo': Key 'epochs_typo' is not in struct"),
    (["optimizer.lrr=0.1"], "Could not override 'optimizer.lrr'"),
    (["epochs=abc"], "epochs='abc' is not allowed: epochs must be an integer >= 0"),
    (["seed=-1"], "seed=-1 is not allowed: seed must be an integer >= 0"),
    (["batch_size=1.5"], "batch_size must be an integer >= 1"),
    (["optimizer.lr=-0.1"], "optimizer.lr must be a number > 0"),
    (["device=tpu"], "device must be one of auto, cpu, cuda"),
    (["precision=fp64"], "precision must be one of auto, bf16, fp16, fp32"),
    (["device=cpu", "precision=fp16"], "precision=fp16 needs a CUDA device; on CPU use precision=bf16 or fp32"),
    (["loss=triplet", "pairing=pair"], "loss=triplet cannot train on pairing=pair: it needs pairing=triplet"),
    (["loss=cosine_embedding", "pairing=triplet"], "cannot train on pairing=triplet: it needs pairing=pair"),
    (["loss=cosine_embedding", "loss.margin=5"], "loss.margin must lie in [-1, 1], got 5"),
    (["loss=supcon", "pairing.negatives=random"], "loss=supcon uses the class labels: it needs pairing.negatives"),
    (["loss=ntxent", "pairing=triplet"], "loss=ntxent cannot train on pairing=triplet: it needs pairing=multiview"),
    (["loss=moco", "pairing.views=3"], "loss=moco compares two views of each image: it needs pairing.views=2, not 3"),
    (["loss=moco", "loss.queue_size=100"], "loss.queue_size=100 must hold at least one step's keys (2 x batch_size"),
    (["loss=byol", "loss.momentum=1.5"], "loss needs 0 <= momentum <= final_momentum <= 1, got 1.5, 1.0"),
    (["pairing.negatives=hard"], "pairing.negatives must be one of label_aware, random, got 'hard'"),
    (["loss=ntxent", "pairing.fixed_views=true"], "pairing.fixed_views is for pairs and triplets"),
    (["optimizer=lars", "optimizer.momentum=1.5"], "optimizer.momentum must be a number in [0, 1)"),
    (["optimizer.weight_decay=-1"], "optimizer.weight_decay must be a number >= 0"),
    (["aug=simclr", "aug.ops.flip.p=1.5"], "aug.ops.flip: p=1.5 is not allowed: p must be a probability in [0, 1]"),
    (["encoder.projector=[0]"], "encoder.projector=[0] is not allowed: encoder.projector must be null (no projector)"),
    (["dataset=image_folder"], "dataset=image_folder needs the folder: add dataset.path=DIR"),
    (["dataset=image_folder", "dataset.path=missing_folder"], "dataset.path=missing_folder: no such folder"),
    (["dataset=image_folder", "dataset.path=.", "dataset.channels=2"], "dataset.channels must be null (what most"),
    (["schedule.lr_scaling=cubic"], "schedule.lr_scaling must be one of none, linear, sqrt"),
    (["batch_size=50000"], "batch_size=50000 is larger than the training set (10000 images)"),
    (["eval.protocols=[paper,linear]"], "eval.protocols must be a non-empty list drawn from"),
    (["eval.tsne_points=5000"], "eval.tsne_points=5000 is more than the 2000 test images"),
    (["checkpoint_every=-1"], "checkpoint_every must be an integer >= 0"),
    (["resume=no_such_run"], "resume=no_such_run: not a cl-run run folder"),
    (["-m", "resume=a"], "job resume=a,seed=0: resume= continues one run; it cannot be part of a multirun"),
    (["dataset=mnist", "dataset.root=missing_data"], "dataset=mnist: files missing and download failed"),
    (["los=triplet"], "Could not override 'los': Key 'los' is not in struct; did you mean loss?"),
    (["loss=ntxent", "loss.temprature=0.2"], "Key 'temprature' is not in struct; did you mean loss.temperature"),
    (["eval.features=projector"], "eval.features=projector evaluates the projection head's output, and "
                                  "encoder=pami_cnn has none (encoder.projector=null)"),
    (["dataset.train_subset=20000"], "dataset.train_subset=20000 is more than the 10000 train images of "
                                     "mnist_sample: choose at most 10000, or null for all of them"),
    (["dataset.test_subset=5000"], "dataset.test_subset=5000 is more than the 2000 test images of mnist_sample"),
    (["aug=simclr", "aug.ops.crop.scale=0.5"], "aug.ops.crop: scale=0.5 is not allowed: scale must be [min, max]"),
    (["optimizer=adam", "optimizer.betas=0.5"], "optimizer.betas=0.5 is not allowed: optimizer.betas must be two "
                                                "numbers in [0, 1)"),
    (["encoder.projector=0.5"], "encoder.projector=0.5 is not allowed: encoder.projector must be null (no "
                                "projector) or a list of layer sizes"),
    (["hydra.run.dir=/proc/x"], "cannot create the folder /proc/x: No such file or directory"),
    (["-m", "hydra.sweep.dir=/proc/y"], "cannot create the folder /proc/y: No such file or directory"),
]


@pytest.mark.parametrize("args,message", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_gives_one_line_and_exit_code_2(tmp_path, args, message, capfd):
    code, out, err = run_main(args, tmp_path, capfd, launcher=None)  # in this process: the same function
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("cl-run: error: ") and message in lines[0], err
    assert "Traceback" not in err + out
    if "-m" not in args:  # a refused run leaves no folder behind
        assert not list(tmp_path.glob("outputs/runs/*/*"))


@pytest.mark.slow
@pytest.mark.parametrize("args,message", [BAD_INPUTS[2], BAD_INPUTS[-2]], ids=["typo", "unwritable folder"])
def test_bad_input_from_the_console_script_too(tmp_path, args, message):
    result = run_cli(args, tmp_path)  # a new process, as a user types it
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr


def test_a_full_or_read_only_disk_is_a_user_error_in_one_line():
    import errno

    from cl_runner.cli import is_user_error, one_line

    full = OSError(errno.ENOSPC, "No space left on device", "outputs/runs/x/metrics.json")
    assert is_user_error(full) and is_user_error(OSError(errno.EROFS, "Read-only file system"))
    assert one_line(full) == "[Errno 28] No space left on device: 'outputs/runs/x/metrics.json'"
    assert not is_user_error(ValueError("a bug"))


def test_full_traceback_only_on_request(tmp_path, capfd):
    code, _, err = run_main(["epochs=abc"], tmp_path, capfd, env={"HYDRA_FULL_ERROR": "1"})
    assert code != 0 and "Traceback" in err


def test_a_run_never_writes_into_another_runs_folder(digits_run, tmp_path, capfd):
    before = {p.name: p.read_bytes() for p in digits_run.iterdir() if p.is_file() and p.name != "cl_run.log"}
    code, _, err = run_main([f"hydra.run.dir={digits_run}", *TINY], tmp_path, capfd)
    assert code == 2 and "already holds another run's results" in err
    after = {p.name: p.read_bytes() for p in digits_run.iterdir() if p.is_file() and p.name != "cl_run.log"}
    assert before == after


def test_a_sweep_with_an_impossible_job_finishes_the_others(tmp_path, capfd):
    code, _, err = run_main(["-m", *TINY, "eval.protocols=[paper]", "pairing=pair", "loss=cosine_embedding,triplet",
                             "hydra.sweep.dir=s"], tmp_path, capfd)
    assert code == 2, err[-2000:]
    refused = r"^cl-run: error: job \S*loss=triplet\S*: loss=triplet cannot train on pairing=pair"
    assert re.search(refused, err, re.MULTILINE), err[-2000:]
    assert "1 of 1 jobs not completed" in (tmp_path / "s" / "results.md").read_text()
    jobs = (tmp_path / "s" / "results.csv").read_text()
    assert ",completed" in jobs and ",failed" in jobs


def test_every_package_of_the_source_tree_is_installed():
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "cl_runner").rglob("__init__.py")}
    assert found <= listed, f"add {sorted(found - listed)} to pyproject.toml's packages"


def test_a_job_folder_name_longer_than_a_file_name_may_be_is_shortened_by_a_hash_and_keeps_its_seed():
    from cl_runner.cli import NAME_MAX, job_folder

    long = ",".join(f"aug.ops.op{i}.strength=0.12{i}" for i in range(20))
    names = [job_folder(long, 3), job_folder(long.replace("0.120", "0.125"), 3), job_folder(long, 4)]
    assert all(len(n.encode()) <= NAME_MAX and n.startswith("aug.ops.op0.strength=0.120") for n in names[::2])
    assert names[0].endswith(",seed=3") and names[2].endswith(",seed=4") and len(set(names)) == 3
    assert job_folder(long, 3) == names[0]  # the same job, the same folder: a sweep run again finds it
    assert job_folder("aug=guo", 1) == "aug=guo,seed=1"


def test_a_sweep_whose_job_names_are_long_runs_each_job_in_its_own_folder(tmp_path, capfd):
    many = ["aug=simclr", "aug.ops.jitter.strength=0.125", "aug.ops.blur.p=0.0,1.0", "encoder.projector=[512,128]",
            "optimizer=adam", "optimizer.lr=0.001", "optimizer.weight_decay=0", "schedule=warmup_cosine",
            "schedule.warmup_epochs=1", "dataset.train_subset=128", "dataset.test_subset=100", "eval.knn_k=3",
            "eval.cosine_knn_k=20", "eval.cosine_knn_temperature=0.05", "eval.paper_test_fraction=0.25"]
    assert len(",".join([*TINY, *many]).encode()) > 255  # as experiment=simclr_color_strength's on a CPU scale
    code, _, err = run_main(["-m", *TINY, *many, "eval.tsne_points=0", "epochs=0", "hydra.sweep.dir=sweep"],
                            tmp_path, capfd)
    assert code == 0, err
    folders = sorted(p.name for p in (tmp_path / "sweep").iterdir() if (p / "metrics.json").exists())
    assert len(folders) == 2 and all(f.endswith(",seed=0") and "~" in f for f in folders)
