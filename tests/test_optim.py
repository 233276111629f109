import math

import pytest
import torch
from torch import nn

from cl_runner.models import PamiCNN
from cl_runner.optim import LARS, constant_schedule, parameter_groups, warmup_cosine_schedule


def test_weight_decay_only_on_weights_with_two_or_more_dimensions():
    decayed, excluded = parameter_groups(PamiCNN(3), weight_decay=1e-4)
    assert decayed["weight_decay"] == 1e-4 and excluded["weight_decay"] == 0.0
    assert [p.ndim for p in decayed["params"]] == [4] * 5  # the five convolution weights
    assert len(excluded["params"]) == 6 and all(p.ndim == 1 for p in excluded["params"])  # BatchNorm
    assert excluded["exclude_from_adaptation"] and not decayed["exclude_from_adaptation"]


def test_lars_step_on_a_hand_computed_case():
    w = nn.Parameter(torch.tensor([3.0, 4.0]))  # ||w|| = 5
    w.grad = torch.tensor([0.6, 0.8])  # ||g|| = 1, no weight decay
    LARS([w], lr=0.1, momentum=0.9, eta=0.01).step()
    # trust = 0.01 * 5 / 1 = 0.05; v = 0.1 * 0.05 * g = 0.005 * g; w -= v
    assert torch.allclose(w.detach(), torch.tensor([3.0 - 0.003, 4.0 - 0.004]))


def test_lars_adds_weight_decay_before_the_trust_ratio():
    w = nn.Parameter(torch.tensor([1.0, 0.0]))
    w.grad = torch.tensor([0.0, 1.0])
    LARS([w], lr=1.0, momentum=0.0, weight_decay=1.0, eta=1.0).step()
    # d = g + w = (1, 1), ||d|| = sqrt 2; trust = 1 * 1 / sqrt 2; w -= d / sqrt 2
    assert torch.allclose(w.detach(), torch.tensor([1 - 1 / math.sqrt(2), -1 / math.sqrt(2)]))


def test_lars_leaves_excluded_parameters_unadapted():
    torch.manual_seed(0)
    ours, reference = PamiCNN(1), PamiCNN(1)
    reference.load_state_dict(ours.state_dict())
    lars = LARS(parameter_groups(ours, weight_decay=0.1), lr=0.05, momentum=0.9)
    sgd = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        for a, b in zip(ours.parameters(), reference.parameters()):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        lars.step()
        sgd.step()
    for (name, a), b in zip(ours.named_parameters(), reference.parameters()):
        if a.ndim < 2:  # BatchNorm weights and biases: exactly SGD with momentum, no decay
            assert torch.allclose(a, b, atol=1e-6), name
        else:  # convolution weights: adapted (trust ratio) and decayed, so not SGD's
            assert not torch.allclose(a, b, atol=1e-4), name


def test_lars_keeps_zero_parameters_moving():
    w = nn.Parameter(torch.zeros(3))
    w.grad = torch.ones(3)
    LARS([w], lr=0.1, momentum=0.0).step()  # ||w|| = 0: trust 1, not 0
    assert torch.allclose(w.detach(), torch.full((3,), -0.1))


def lrs(schedule_fn, steps: int, **kw) -> list[float]:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.4)
    schedule = schedule_fn(optimizer, **kw)
    values = []
    for _ in range(steps):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return values


def test_warmup_then_cosine_to_the_final_fraction():
    values = lrs(warmup_cosine_schedule, 20, steps_per_epoch=4, epochs=5, batch_size=512, lr_scaling="linear",
                 warmup_epochs=1, final_fraction=0.1)
    peak = 0.4 * 512 / 256
    assert values[:4] == pytest.approx([peak / 4, peak / 2, 3 * peak / 4, peak])
    assert values[-1] == pytest.approx(0.1 * peak)
    assert all(a >= b for a, b in zip(values[3:], values[4:]))  # decays monotonically after warm-up
    assert values[11] == pytest.approx(0.1 * peak + 0.9 * peak * 0.5 * (1 + math.cos(math.pi * 7 / 15)))


def test_constant_schedule_applies_the_scaling_rule():
    assert lrs(constant_schedule, 3, steps_per_epoch=1, epochs=3, batch_size=1024, lr_scaling="sqrt") == \
        pytest.approx([0.8] * 3)
    assert lrs(constant_schedule, 2, steps_per_epoch=1, epochs=3, batch_size=64, lr_scaling="none") == \
        pytest.approx([0.4] * 2)
