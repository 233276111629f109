"""encoder=torchvision: any torchvision classification model as the backbone (issue #24), small and on CPU: the CIFAR
stem and the pooled features of three families, a training step, resume's state_dict round trip, seeded weights,
batch norm over the global batch, the settings and image sizes refused in one line, and a whole cl-run."""
import copy
import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from cl_runner import distributed, randomness
from cl_runner.batch import TupleBatch
from cl_runner.config import check_image_size
from cl_runner.data.augment import normalize, to_unit
from cl_runner.data.datasets import ImageSet
from cl_runner.errors import ConfigError, UserError
from cl_runner.losses import NTXentLoss
from cl_runner.models import Encoder, TorchvisionBackbone
from cl_runner.parts import Objective, build_encoder
from cl_runner.runtime import Compute, make_grad_scaler
from cl_runner.train import train_step
from conftest import REPO, run_main

CPU = torch.device("cpu")
FEATURES = {"resnet50": 2048, "mobilenet_v3_small": 576, "convnext_tiny": 768}
CLASSIFIERS = {"resnet50": "fc", "mobilenet_v3_small": "classifier", "convnext_tiny": "classifier.2"}


def pixels(n: int, channels: int = 3, side: int = 32) -> torch.Tensor:
    """Random uint8 images [n, channels, side, side]."""
    return torch.randint(0, 256, (n, channels, side, side), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0))


def inputs(n: int, channels: int = 3, side: int = 32) -> torch.Tensor:
    """Random images as the encoder sees them (normalized to [-1, 1])."""
    return normalize(to_unit(pixels(n, channels, side)))


def weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("name", FEATURES)
def test_the_cifar_stem_takes_32x32_images_of_1_or_3_channels_and_gives_the_pooled_features(name):
    for channels in (3, 1):
        backbone = TorchvisionBackbone(name, in_channels=channels, cifar_stem=True)
        stem = next(m for m in backbone.modules() if isinstance(m, nn.Conv2d))
        assert (stem.in_channels, stem.kernel_size, stem.stride, stem.padding) == (channels, (3, 3), (1, 1), (1, 1))
        assert not any(isinstance(m, nn.MaxPool2d) for m in backbone.modules())  # ResNet's stem max-pool went
        classifier = backbone.net.get_submodule(CLASSIFIERS[name])  # mobilenet_v3's Linear-Hardswish-Dropout too
        assert all(isinstance(m, (nn.Identity, nn.Sequential)) for m in classifier.modules())
        assert backbone.embedding_dim == FEATURES[name] and backbone.training  # the probe left it training
        features = backbone(inputs(4, channels))
        assert features.shape == (4, FEATURES[name]) and features.isfinite().all()


@pytest.mark.parametrize("name,precision", [("resnet50", "fp32"), ("mobilenet_v3_small", "bf16")])
def test_a_training_step_changes_the_weights_and_a_fresh_model_loads_them_for_equal_outputs(name, precision):
    """One NT-Xent step on two views of 4 images (channels_last; bf16 autocast for one), then the state_dict into
    a model built from another seed, as resume does: the same outputs, to the bit."""
    with randomness.seeded(0, "init"):
        encoder = Encoder(TorchvisionBackbone(name, in_channels=3, cifar_stem=True), projector=[64, 16])
    before = weights(encoder)
    optimizer = torch.optim.SGD(encoder.parameters(), lr=0.1)
    loss = train_step(Objective(encoder, NTXentLoss()), optimizer, make_grad_scaler(CPU, precision),
                      TupleBatch(inputs(8), views=2), Compute(CPU, precision, channels_last=True))
    assert torch.isfinite(loss)
    stem = next(k for k in before if k.endswith("weight"))
    assert not torch.equal(before[stem], encoder.state_dict()[stem])
    assert not torch.equal(before["projector.3.weight"], encoder.state_dict()["projector.3.weight"])
    with randomness.seeded(1, "init"):
        fresh = Encoder(TorchvisionBackbone(name, in_channels=3, cifar_stem=True), projector=[64, 16])
    assert not torch.equal(fresh.state_dict()[stem], encoder.state_dict()[stem])
    fresh.load_state_dict(encoder.state_dict())
    images = inputs(3)
    assert torch.equal(fresh.eval()(images), encoder.eval()(images))


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=["encoder=torchvision", *overrides])


def test_the_run_seed_gives_the_same_initial_weights():
    mobilenet = ["encoder.backbone.name=mobilenet_v3_small", "encoder.backbone.cifar_stem=true"]
    first, again = (weights(build_encoder(composed(*mobilenet), 1, CPU)) for _ in range(2))
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    other = weights(build_encoder(composed(*mobilenet, "seed=1"), 1, CPU))
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_batch_norm_over_the_global_batch_replaces_every_batch_norm_layer():
    encoder = Encoder(TorchvisionBackbone("mobilenet_v3_small", in_channels=3, cifar_stem=True), projector=[64, 16])
    norms = sum(isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) for m in encoder.modules())
    images = inputs(4)
    expected = encoder.eval()(images)
    on_cuda = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(encoder))  # what a GPU run gets
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in on_cuda.modules()) == norms
    synced = distributed.sync_batch_norm(encoder, CPU)  # a CPU run: plain batch norm outside a distributed run
    assert sum(isinstance(m, distributed.CPUSyncBatchNorm) for m in synced.modules()) == norms
    assert torch.equal(synced.eval()(images), expected)


def test_an_unknown_model_or_stem_setting_is_refused_naming_valid_ones():
    with pytest.raises(ConfigError, match=r"^encoder.backbone.name='resnet5' is not a torchvision classification "
                                          r"model: e.g. resnet50, .*list_models"):
        TorchvisionBackbone("resnet5")
    with pytest.raises(ConfigError, match="name='fcn_resnet50' is not a torchvision classification model"):
        TorchvisionBackbone("fcn_resnet50")  # a segmentation model
    with pytest.raises(ConfigError, match="cifar_stem='yes' is not allowed: it must be true or false"):
        TorchvisionBackbone("resnet18", cifar_stem="yes")


def test_the_smallest_image_a_model_takes_is_named_when_smaller_ones_are_refused():
    encoder = Encoder(TorchvisionBackbone("squeezenet1_1", in_channels=1))
    check_image_size(encoder, ImageSet(pixels(1, 1, 17), None, []))
    with pytest.raises(UserError, match=r"images of 16x16 are too small for the encoder's squeezenet1_1 .*: it "
                                        r"takes images of any size from 17x17 \(squeezenet1_1: its last feature map "
                                        r"is pooled\)"):
        check_image_size(encoder, ImageSet(pixels(1, 1, 16), None, []))


BAD = [(["encoder.backbone.name=1"], "encoder.backbone.name=1 is not a torchvision classification model: e.g. "),
       (["encoder.backbone.name=''"], "encoder.backbone.name='' is not a torchvision classification model"),
       (["encoder.backbone.name=[1,2]"], "encoder.backbone.name=[1, 2] is not a torchvision classification model"),
       (["encoder.backbone.cifar_stem=null"], "encoder.backbone.cifar_stem=None is not allowed"),
       (["encoder.backbone.name=vit_b_16", "encoder.backbone.cifar_stem=true"],
        "encoder.backbone.cifar_stem=true does not fit vit_b_16: a transformer built for 224x224 images"),
       (["encoder.backbone.name=vit_b_32"], "images of 28x28 are too small for the encoder's vit_b_32 "
                                            "(vit_b_32 takes 224x224 images, not 28x28): it takes images of exactly "
                                            "224x224 (vit_b_32: a transformer built for one size)")]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_a_setting_or_image_size_a_model_cannot_take_is_one_line_from_cl_run(tmp_path, capfd, args, message):
    code, out, err = run_main(["encoder=torchvision", "dataset=digits", *args], tmp_path, capfd, launcher=None)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err + out


def test_cl_run_trains_and_evaluates_a_torchvision_backbone(tmp_path, capfd):
    args = ["encoder=torchvision", "encoder.backbone.name=resnet18", "encoder.backbone.cifar_stem=true",
            "dataset=digits", "dataset.train_subset=64", "dataset.test_subset=100", "epochs=1", "batch_size=32",
            "eval.tsne_points=0", "eval.baseline=false"]
    code, _, err = run_main(args, tmp_path, capfd)
    assert code == 0, err
    metrics = json.loads(next(tmp_path.glob("outputs/runs/*/*/metrics.json")).read_text())
    assert metrics["train"]["steps"] == 2 and metrics["diagnostics"]["embedding_dim"] == 512
