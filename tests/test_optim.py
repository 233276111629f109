import copy
import io
import math

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from cl_runner.models import PamiCNN
from cl_runner.optim import LARS, constant_schedule, make_optimizer, parameter_groups, warmup_cosine_schedule
from conftest import REPO


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


def test_foreach_lars_equals_the_formula_one_parameter_at_a_time():
    """d = g + wd * w; trust = eta * ||w|| / ||d|| (1 where either norm is 0, and in an excluded group);
    v = momentum * v + lr * trust * d; w = w - v, computed by hand per parameter in float64 over four steps."""
    generator = torch.Generator().manual_seed(0)
    shapes = {"conv": (4, 3, 3, 3), "linear": (5, 7), "zero": (2, 3), "still": (2, 2), "no_grad": (3, 3),
              "bias": (6,), "norm": (4,)}
    initial = {name: torch.randn(shape, generator=generator, dtype=torch.float64) for name, shape in shapes.items()}
    initial["zero"].zero_()  # ||w|| = 0 at the first step
    initial["still"].zero_()  # and its gradient stays 0: ||d|| = 0 at every step
    params = {name: nn.Parameter(value.clone()) for name, value in initial.items()}
    adapted, excluded = ["conv", "linear", "zero", "still", "no_grad"], ["bias", "norm"]
    lr, momentum, eta, weight_decay = 0.5, 0.9, 0.02, 0.01
    lars = LARS([{"params": [params[name] for name in adapted], "weight_decay": weight_decay},
                 {"params": [params[name] for name in excluded], "weight_decay": 0.0, "exclude_from_adaptation": True}],
                lr=lr, momentum=momentum, eta=eta)
    expected = {name: value.clone() for name, value in initial.items()}
    velocity = {name: torch.zeros_like(value) for name, value in initial.items()}
    for step in range(4):
        for name, param in params.items():
            param.grad = (None if name == "no_grad" else torch.zeros_like(param) if name == "still" else
                          torch.randn(param.shape, generator=generator, dtype=torch.float64))
        lars.step()
        for name in set(params) - {"no_grad"}:
            w, d = expected[name], params[name].grad + (weight_decay if name in adapted else 0.0) * expected[name]
            adapt = name in adapted and w.norm() > 0 and d.norm() > 0
            trust = eta * w.norm() / d.norm() if adapt else 1.0
            velocity[name] = momentum * velocity[name] + lr * trust * d
            expected[name] = w - velocity[name]
        for name, param in params.items():
            torch.testing.assert_close(param.detach(), expected[name], rtol=1e-12, atol=1e-15, msg=f"{name}, {step}")
        if step == 0:  # trust 1 for the zero weights: w = -lr * g
            assert torch.equal(params["zero"].detach(), -lr * params["zero"].grad)
    assert torch.equal(params["still"].detach(), torch.zeros(2, 2, dtype=torch.float64))  # no 0/0
    assert torch.equal(params["no_grad"].detach(), initial["no_grad"]) and params["no_grad"] not in lars.state


def test_lars_resumes_from_its_state_dict_exactly():
    torch.manual_seed(0)
    start = PamiCNN(3)
    grads = [[torch.randn_like(param) for param in start.parameters()] for _ in range(6)]

    def run(model: nn.Module, lars: LARS, steps: list) -> None:
        for step_grads in steps:
            for param, grad in zip(model.parameters(), step_grads):
                param.grad = grad.clone()
            lars.step()

    uninterrupted = copy.deepcopy(start)
    run(uninterrupted, LARS(parameter_groups(uninterrupted, 1e-4), lr=0.3), grads)
    first = copy.deepcopy(start)
    lars = LARS(parameter_groups(first, 1e-4), lr=0.3)
    run(first, lars, grads[:3])
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "optimizer": lars.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    assert {key for state in saved["optimizer"]["state"].values() for key in state} == {"velocity"}
    resumed = PamiCNN(3)
    resumed.load_state_dict(saved["model"])
    lars = LARS(parameter_groups(resumed, 1e-4), lr=0.3)
    lars.load_state_dict(saved["optimizer"])
    run(resumed, lars, grads[3:])
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), uninterrupted.state_dict().values()))


def config_optimizer(name: str, **overrides):
    """The partial that conf/optimizer/<name>.yaml instantiates to, with `overrides` (as `+optimizer.key=value`)."""
    return instantiate(OmegaConf.merge(OmegaConf.load(REPO / "conf" / "optimizer" / f"{name}.yaml"), overrides))


@pytest.mark.parametrize("name, overrides", [("sgd", {"momentum": 0.9, "weight_decay": 1e-4}),
                                             ("adam", {"weight_decay": 1e-4})])
def test_fused_steps_equal_the_for_loop(name, overrides):
    """Within rtol 1e-6 (8 float32 ulps) and atol 1e-8: fused Adam computes the bias-corrected step in another
    order than the for-loop, so an update may round differently in its last bit, and after ten steps weights of
    size ~0.1 were seen 1 ulp (7.5e-9) apart; fused SGD (momentum, weight decay) came out bit-equal on this CPU, but
    a kernel may use fused multiply-adds elsewhere."""
    torch.manual_seed(0)
    ours, reference = PamiCNN(3), PamiCNN(3)
    reference.load_state_dict(ours.state_dict())
    factory = config_optimizer(name, **overrides)
    optimizer = make_optimizer(factory, parameter_groups(ours, factory.keywords["weight_decay"]))
    for_loop = factory.func(parameter_groups(reference, factory.keywords["weight_decay"]),
                            **{**factory.keywords, "foreach": False})
    assert all(group["fused"] for group in optimizer.param_groups)
    assert not any(group["fused"] for group in for_loop.param_groups)
    for _ in range(10):
        for a, b in zip(ours.parameters(), reference.parameters()):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        optimizer.step()
        for_loop.step()
    for (key, a), b in zip(ours.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8, msg=key)


def test_the_configs_own_step_implementation_is_kept():
    model = PamiCNN(1)
    unfused = make_optimizer(config_optimizer("sgd", fused=False), parameter_groups(model, 0.0))
    assert [group["fused"] for group in unfused.param_groups] == [False, False]
    foreach = make_optimizer(config_optimizer("adam", foreach=True), parameter_groups(model, 0.0))
    assert [(group["fused"], group["foreach"]) for group in foreach.param_groups] == [(None, True)] * 2
    on_meta = make_optimizer(config_optimizer("sgd"), parameter_groups(PamiCNN(1).to("meta"), 0.0))
    assert not any(group["fused"] for group in on_meta.param_groups)  # no fused kernels there
    assert type(make_optimizer(config_optimizer("lars"), parameter_groups(model, 0.0))) is LARS  # foreach already


@pytest.mark.parametrize("saved_fused, fused", [(None, True), (True, False)])
def test_a_loaded_state_dict_keeps_the_optimizers_own_step(saved_fused, fused):
    """A checkpoint from an unfused SGD (as every one before fused steps) resumes fused, and one from a fused SGD
    resumes unfused under optimizer.fused=false; an enabled GradScaler (CUDA fp16's) steps either way (it unscales
    inside the step only for an optimizer made fused)."""
    model = nn.Linear(4, 2)
    saved = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, fused=saved_fused)
    model(torch.randn(3, 4)).sum().backward()
    saved.step()
    overrides = {} if fused else {"fused": False}
    optimizer = make_optimizer(config_optimizer("sgd", momentum=0.9, **overrides),
                               [{"params": list(model.parameters())}])
    optimizer.load_state_dict(saved.state_dict())
    assert optimizer.param_groups[0]["fused"] is fused
    assert torch.equal(optimizer.state[model.weight]["momentum_buffer"], saved.state[model.weight]["momentum_buffer"])
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    scaler.scale(model(torch.randn(3, 4)).sum()).backward()
    scaler.step(optimizer)


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


def test_a_warm_up_as_long_as_the_run_is_one_warning_with_the_rate_it_ends_at(caplog):
    with caplog.at_level("WARNING", logger="cl_runner.optim"):
        values = lrs(warmup_cosine_schedule, 4, steps_per_epoch=4, epochs=1, batch_size=256, warmup_epochs=10)
    assert values == pytest.approx([0.4 * (step + 1) / 40 for step in range(4)])  # the warm-up's first tenth
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning == ("schedule.warmup_epochs=10 is not below epochs=1: the learning rate only warms up, to 0.04 "
                       "(10% of its peak 0.4) at the last step, and never decays; lower schedule.warmup_epochs")
    caplog.clear()
    with caplog.at_level("WARNING", logger="cl_runner.optim"):
        lrs(warmup_cosine_schedule, 1, steps_per_epoch=4, epochs=2, batch_size=256, warmup_epochs=1)
        lrs(warmup_cosine_schedule, 1, steps_per_epoch=4, epochs=0, batch_size=256, warmup_epochs=1)
    assert not caplog.records  # a shorter warm-up, or no training (epochs=0)


def test_constant_schedule_applies_the_scaling_rule():
    assert lrs(constant_schedule, 3, steps_per_epoch=1, epochs=3, batch_size=1024, lr_scaling="sqrt") == \
        pytest.approx([0.8] * 3)
    assert lrs(constant_schedule, 2, steps_per_epoch=1, epochs=3, batch_size=64, lr_scaling="none") == \
        pytest.approx([0.4] * 2)
