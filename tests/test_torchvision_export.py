"""backbone_torchvision.pt: a run's ResNet or torchvision backbone as torchvision's own state dict, loaded by
torchvision's builder as the README shows, giving the same features to float rounding."""
from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from cl_runner import export
from cl_runner.models import Encoder, ResNet18, TorchvisionBackbone


def exported(encoder: nn.Module, folder: Path) -> dict:
    export.final_outputs(folder, {}, "standard", [], "", encoder)
    return torch.load(folder / export.TORCHVISION_FILE, weights_only=True)


def test_a_resnet18_loads_into_torchvision_s_builder_with_the_cifar_stem(tmp_path):
    torch.manual_seed(0)
    encoder = Encoder(ResNet18(in_channels=3), projector=[64, 16]).eval()
    state = exported(encoder, tmp_path)
    net = torchvision.models.resnet18()  # the README's recipe
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    net.load_state_dict(state)  # strict: every weight, nothing missing
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(net.eval()(images), encoder.features(images), atol=1e-5)
    classifier = torchvision.models.resnet18(num_classes=10)  # to fine-tune: the classifier stays as initialized
    classifier.conv1, classifier.maxpool = net.conv1, nn.Identity()
    missing = classifier.load_state_dict(state, strict=False).missing_keys
    assert missing == ["fc.weight", "fc.bias"]


def test_another_torchvision_backbone_loads_into_its_builder_but_for_its_classifier(tmp_path):
    torch.manual_seed(0)
    encoder = Encoder(TorchvisionBackbone("mobilenet_v3_small", in_channels=3)).eval()
    state = exported(encoder, tmp_path)
    net = torchvision.models.mobilenet_v3_small()
    result = net.load_state_dict(state, strict=False)
    assert result.unexpected_keys == [] and all(k.startswith("classifier.") for k in result.missing_keys)
    net.classifier = nn.Identity()
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(net.eval()(images), encoder.features(images), atol=1e-5)


def test_the_study_s_cnn_has_no_torchvision_file(tmp_path):
    from cl_runner.models import PamiCNN

    export.final_outputs(tmp_path, {}, "standard", [], "", Encoder(PamiCNN(1)))
    assert (tmp_path / "encoder.pt").is_file() and not (tmp_path / export.TORCHVISION_FILE).exists()
