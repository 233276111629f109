"""Every check of a run's settings, each problem one sentence naming the key: `validate` checks the composed
config before any work (types, ranges, the combinations that cannot work, the split over the processes); the
`check_*` functions check what only the data can tell (labels, sizes, the encoder's image size), as soon as it
is read.

Hydra already refuses unknown groups, options and keys (the config stays in struct mode).
"""
from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from hydra.errors import InstantiationException
from hydra.utils import get_class, get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cl_runner import evaluation
from cl_runner.data.datasets import CIFAR100_LABEL_KIND_CHOICES, CIFAR100_LABEL_KINDS, ImageSet, Splits
from cl_runner.data.augment import Augmentation
from cl_runner.errors import UserError, first_line
from cl_runner.evaluation import PROTOCOLS
from cl_runner.evaluation.probes import SOLVERS
from cl_runner.optim import LR_SCALING
from cl_runner.runtime import COMPILE_AUTO

DEVICES = ("auto", "cpu", "cuda")
TARGETED = ("dataset", "aug", "pairing", "loss", "encoder", "encoder.backbone", "optimizer", "schedule")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_choice(value, options) -> bool:
    return isinstance(value, str) and value in options


def is_compile_choice(value) -> bool:
    return isinstance(value, bool) or value == "auto"


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


Rule = tuple[str, Callable[[object], bool], str]  # a key (dotted), whether a value is allowed, what is allowed
RULES: list[Rule] = [
    ("seed", lambda v: is_int(v) and v >= 0, "an integer >= 0"),
    ("device", lambda v: is_choice(v, DEVICES), f"one of {', '.join(DEVICES)}"),
    ("precision", lambda v: is_choice(v, PRECISIONS), f"one of {', '.join(PRECISIONS)}"),
    ("epochs", lambda v: is_int(v) and v >= 0, "an integer >= 0 (0: evaluate the untrained encoder)"),
    ("batch_size", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
    ("channels_last", lambda v: isinstance(v, bool), "true or false"),
    ("compile", lambda v: is_compile_choice(v) or (isinstance(v, dict) and set(v) == set(COMPILE_AUTO) and
                                                 all(map(is_compile_choice, v.values()))),
     "auto, true or false: for every part, or for each of compile.batch and compile.encoder"),
    ("checkpoint_every", lambda v: is_int(v) and v >= 0, "an integer >= 0 (0: no checkpoints)"),
    ("resume", lambda v: v is None or isinstance(v, str), "null or the path of a run folder"),
    ("log_every", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
    ("distributed.sync_bn", lambda v: isinstance(v, bool), "true or false"),
    ("optimizer.lr", lambda v: is_number(v) and v > 0, "a number > 0"),
    ("optimizer.momentum", lambda v: v is None or (is_number(v) and 0 <= v < 1), "a number in [0, 1)"),
    ("optimizer.weight_decay", lambda v: v is None or (is_number(v) and v >= 0), "a number >= 0"),
    ("schedule.warmup_epochs", lambda v: v is None or (is_number(v) and v >= 0), "a number >= 0"),
    ("schedule.lr_scaling", lambda v: is_choice(v, LR_SCALING), f"one of {', '.join(LR_SCALING)}"),
    ("dataset.train_subset", lambda v: v is None or (is_int(v) and v >= 2), "null or an integer >= 2"),
    ("dataset.test_subset", lambda v: v is None or (is_int(v) and v >= 20), "null or an integer >= 20"),
    ("dataset.val_fraction", lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("dataset.train_fraction", lambda v: is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    ("eval.features", lambda v: is_choice(v, ("backbone", "projector")), "backbone or projector"),
    ("eval.protocols", lambda v: isinstance(v, list) and len(v) > 0 and set(v) <= set(PROTOCOLS),
     f"a non-empty list drawn from {list(PROTOCOLS)}"),
    ("eval.solver", lambda v: is_choice(v, SOLVERS), f"one of {', '.join(SOLVERS)}"),
    ("eval.baseline", lambda v: isinstance(v, bool), "true or false"),
    ("eval.knn_k", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
    ("eval.cosine_knn_k", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
    ("eval.cosine_knn_temperature", lambda v: is_number(v) and v > 0, "a number > 0"),
    ("eval.paper_test_fraction", lambda v: is_number(v) and 0 < v < 1, "a number between 0 and 1"),
    ("eval.tsne_points", lambda v: is_int(v) and v >= 0, "an integer >= 0 (0 skips t-SNE)"),
    ("eval.tsne_perplexity", lambda v: is_number(v) and v > 0, "a number > 0"),
    ("eval.monitor_every", lambda v: is_int(v) and v >= 0, "an integer >= 0 (0: no online monitoring)"),
    ("eval.monitor_bank", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
    ("eval.label_fraction", lambda v: is_number(v) and 0 < v <= 1, "a number in (0, 1] (1: every label)"),
    *[rule for name in ("linear_aug", "finetune") for rule in (
        (f"eval.{name}.epochs", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
        (f"eval.{name}.batch_size", lambda v: is_int(v) and v >= 2, "an integer >= 2"),
        (f"eval.{name}.lr", lambda v: is_number(v) and v > 0, "a number > 0"),
        (f"eval.{name}.momentum", lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
        (f"eval.{name}.weight_decay", lambda v: is_number(v) and v >= 0, "a number >= 0"),
        (f"eval.{name}.nesterov", lambda v: isinstance(v, bool), "true or false"))],
    ("train.stop_on_collapse", lambda v: isinstance(v, bool), "true or false"),
    ("export.embeddings", lambda v: isinstance(v, bool), "true or false"),
]
# keys of some options only (checked where the chosen ones have them; a class of ours checks its own settings)
OPTION_RULES: list[Rule] = [
    ("optimizer.betas", lambda v: isinstance(v, list) and len(v) == 2 and all(is_number(b) and 0 <= b < 1 for b in v),
     "two numbers in [0, 1), e.g. [0.9, 0.999]"),
    ("encoder.projector", lambda v: v is None or (isinstance(v, list) and len(v) > 0 and
                                                  all(is_int(n) and n >= 1 for n in v)),
     "null (no projector) or a list of layer sizes (integers >= 1), the last one the output's, e.g. [64, 32]"),
    ("dataset.verify", lambda v: isinstance(v, bool), "true or false"),
    ("dataset.path", lambda v: isinstance(v, str) and v != "", "the path of a folder of images"),
    ("dataset.eval_path", lambda v: v is None or (isinstance(v, str) and v != ""), "null or a folder's path"),
    ("dataset.labels", lambda v: v is None or isinstance(v, bool), "null (from the layout), true or false"),
    # CIFAR-100's (the key is not `labels`, which image_folder's rule above holds to null, true or false)
    ("dataset.label_kind", lambda v: is_choice(v, CIFAR100_LABEL_KINDS), CIFAR100_LABEL_KIND_CHOICES),
    ("dataset.test_fraction", lambda v: is_number(v) and 0 < v < 1, "a number between 0 and 1"),
    ("dataset.channels", lambda v: v is None or (is_int(v) and v in (1, 3)), "null (what most images have), 1 or 3"),
    ("dataset.image_size", lambda v: v is None or (is_int(v) and v >= 1), "null or an integer >= 1"),
    ("dataset.skip_corrupt", lambda v: isinstance(v, bool), "true or false"),
]


def validate(cfg: DictConfig, choices: dict[str, str] | None = None, processes: int = 1) -> None:
    """Raise UserError for the first problem found in `cfg`. `choices` maps group -> chosen option (Hydra's
    runtime choices), used to name options in messages; `processes`: how many share each batch (torchrun)."""
    choices = choices or {}
    check_targets(cfg)
    if OmegaConf.is_missing(cfg.dataset, "path"):
        raise UserError(f"dataset={choices.get('dataset', 'image_folder')} needs the folder: add dataset.path=DIR")
    check_rules(cfg, RULES)
    check_rules(cfg, OPTION_RULES, present_only=True)
    if cfg.eval.features == "projector" and not cfg.encoder.get("projector"):
        raise UserError(f"eval.features=projector evaluates the projection head's output, and encoder="
                        f"{choices.get('encoder', 'this encoder')} has none (encoder.projector=null): use "
                        "eval.features=backbone, or give it one (e.g. encoder.projector=[64,32])")
    if cfg.eval.monitor_every and not cfg.dataset.val_fraction:
        raise UserError("eval.monitor_every watches the validation split, which dataset.val_fraction=0 leaves empty: "
                        "set dataset.val_fraction (e.g. 0.1), so that nothing is watched on the test set")
    for name in ("linear_aug", "finetune"):
        if cfg.eval[name].nesterov and cfg.eval[name].momentum == 0:
            raise UserError(f"eval.{name}.nesterov=true needs eval.{name}.momentum > 0 (Nesterov's update is a "
                            "momentum's)")
    if cfg.train.stop_on_collapse and not cfg.eval.monitor_every:
        raise UserError("train.stop_on_collapse acts on the monitor's measurements: set eval.monitor_every too")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA device is visible; use device=auto or device=cpu")
    loss_name = choices.get("loss", cfg.loss._target_)
    pairing_name = choices.get("pairing", cfg.pairing._target_)
    accepted = get_class(cfg.loss._target_).pairings
    provided = get_class(cfg.pairing._target_).name
    if provided not in accepted:
        raise UserError(f"loss={loss_name} cannot train on pairing={pairing_name}: it needs pairing="
                        f"{' or '.join(accepted)} (leave pairing out and the loss picks its own)")
    loss_class = get_class(cfg.loss._target_)
    if loss_class.needs_labels and cfg.pairing.negatives != "label_aware":
        raise UserError(f"loss={loss_name} uses the class labels: it needs pairing.negatives=label_aware")
    if cfg.pairing.get("local_views") and not loss_class.local_views:
        raise UserError(f"loss={loss_name} takes no multi-crop local views: set pairing.local_views=0 (the losses "
                        f"that take them: swav, dino, ntxent, supcon)")
    if loss_class.two_views and cfg.pairing.views != 2:
        raise UserError(f"loss={loss_name} compares two views of each image: it needs pairing.views=2, "
                        f"not {cfg.pairing.views}")
    check_augmentation(cfg, choices)
    if cfg.batch_size % processes:
        lower = cfg.batch_size - cfg.batch_size % processes
        raise UserError(f"batch_size={cfg.batch_size} does not split evenly over {processes} processes: use a "
                        f"multiple of {processes} (e.g. {lower or processes} or {lower + processes})")


def check_augmentation(cfg: DictConfig, choices: dict[str, str]) -> None:
    """Build the augmentation (its operations check their settings) and check its pipelines against the views
    the pairing augments: cheap, and before any image is read."""
    try:
        augmentation = instantiate(cfg.aug)
        if isinstance(augmentation, Augmentation):
            pairing = instantiate(cfg.pairing)
            augmentation.check_views(pairing.augmented_views(), choices.get("pairing", pairing.name))
    except InstantiationException as err:
        if isinstance(err.__cause__, UserError):
            raise err.__cause__ from err
        raise UserError(f"aug or pairing: {first_line(err.__cause__ or err)}") from err


def check_rules(node: DictConfig, rules: list[Rule], prefix: str = "", present_only: bool = False) -> None:
    """Raise UserError for the first value of `node` that its rule refuses, naming the key (`prefix` + key) and
    what it must be; with `present_only`, keys that the chosen options lack are skipped."""
    for key, ok, allowed in rules:
        parent, _, leaf = key.rpartition(".")
        holder = OmegaConf.select(node, parent) if parent else node
        if present_only and not (OmegaConf.is_dict(holder) and leaf in holder):
            continue
        value = OmegaConf.select(node, key, throw_on_missing=True)
        value = OmegaConf.to_object(value) if OmegaConf.is_config(value) else value
        if not ok(value):
            raise UserError(f"{prefix}{key}={value!r} is not allowed: {prefix}{key} must be {allowed}")


def check_targets(cfg: DictConfig) -> None:
    """Every `_target_` (a group option's class, or one a user names) is a class or function that can be found,
    and Hydra's instantiation flags are booleans."""
    for group in TARGETED:
        target = OmegaConf.select(cfg, f"{group}._target_")
        try:
            located = get_object(target) if isinstance(target, str) and target else None
        except Exception:  # noqa: BLE001 - Hydra's locator raises ImportError, AttributeError, ValueError...
            located = None
        if not callable(located):
            raise UserError(f"{group}._target_={target!r} is not a class or function that can be imported")
        for flag in ("_partial_", "_recursive_"):  # Hydra's instantiation flags
            value = OmegaConf.select(cfg, f"{group}.{flag}")
            if value is not None and not isinstance(value, bool):
                raise UserError(f"{group}.{flag}={value!r} is not allowed: it must be true or false")


def check_labels_needed(cfg: DictConfig, dataset_name: str) -> None:
    """Refuse a training setup that draws on class labels, for a data set that has none (before any image is
    decoded)."""
    if cfg.pairing.get("negatives") == "label_aware":
        raise UserError(f"{dataset_name} has no labels, but pairing.negatives=label_aware draws negatives from "
                        "other classes; use pairing.negatives=random")


def check_data(cfg: DictConfig, data: Splits, overrides: list[str]) -> None:
    """Refuse settings larger than the data read: a batch beyond the training set, more t-SNE points asked for
    (on the command line) than there are test images."""
    if cfg.batch_size > len(data.train):
        raise UserError(f"batch_size={cfg.batch_size} is larger than the training set ({len(data.train)} images)")
    if any(o.startswith("eval.tsne_points=") for o in overrides) and cfg.eval.tsne_points > len(data.test):
        raise UserError(f"eval.tsne_points={cfg.eval.tsne_points} is more than the {len(data.test)} test images")


IMAGE_SIZE_FIX = "set dataset.image_size (image folders) or choose another encoder"
LOCAL_VIEW_FIX = "crop the local views larger (their pipelines' crop size, e.g. aug.ops.local_crop.size) or choose " \
                 "another encoder"


def check_image_size(encoder: nn.Module, images: ImageSet, what: str = "images", fix: str = IMAGE_SIZE_FIX) -> None:
    """Refuse images that the encoder cannot take: too small for its layers, or giving features of another size
    than its head was built for; the message says which sizes the chosen backbone takes and `fix`."""
    backbone = encoder.backbone
    name = getattr(backbone, "name", type(backbone).__name__)  # a torchvision backbone's model name
    side = "x".join(str(n) for n in images.images.shape[-2:])
    sample = images.take(torch.arange(1, device=next(encoder.parameters()).device))
    try:
        features = evaluation.embed(encoder, sample, "backbone")
    except (RuntimeError, AssertionError) as err:  # torch's shape errors; some models assert their input size
        raise UserError(f"{what} of {side} are too small for the encoder's {name} ({str(err).splitlines()[0]}): it "
                        f"takes {backbone.image_sizes}; {fix}") from err
    if features.shape[1] != backbone.embedding_dim:
        raise UserError(f"the encoder's {name} gives {features.shape[1]} features for {what} of {side}, not its "
                        f"{backbone.embedding_dim}: it takes {backbone.image_sizes}; {fix}")


def close_keys(key: str, conf: Path) -> list[str]:
    """The keys most like `key` (dotted, e.g. `los` or `eval.featurs`) among those that can stand where it does,
    in the config folder `conf`: conf/config.yaml's and, under a group (`loss.`), any of its options' keys; at
    the top, the groups themselves too. Read as plain YAML: nothing in the files runs."""
    parent, _, leaf = key.rpartition(".")
    trees = [_yaml(conf / "config.yaml")]
    group = parent.split(".", 1)[0]
    if (conf / group).is_dir():  # an option's keys stand under its group, unless it is a global package
        trees += [_yaml(option) if "# @package _global_" in option.read_text() else {group: _yaml(option)}
                  for option in sorted((conf / group).glob("*.yaml"))]
        trees += [{group: {option.parent.name: _yaml(option)}}  # a nested group's (aug/ops: aug.ops)
                  for option in sorted((conf / group).glob("*/*.yaml"))]
    candidates: set[str] = {g.name for g in conf.iterdir() if g.is_dir()} if not parent else set()
    for tree in trees:
        node = tree
        for part in parent.split(".") if parent else []:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            candidates |= {k for k in node if k != "defaults"}
    prefix = f"{parent}." if parent else ""
    return [prefix + match for match in difflib.get_close_matches(leaf, sorted(candidates), n=3, cutoff=0.6)]


def _yaml(path: Path) -> dict:
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return content if isinstance(content, dict) else {}
