"""DINO (Caron et al. 2021): the loss against the paper's Algorithm 1, a hand-computed case, centring, the
teacher temperature's warm-up, the momentum teacher, training, the YAML and the refusals."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn

from cl_runner.batch import BatchShare, TupleBatch
from cl_runner.errors import ConfigError
from cl_runner.losses.dino import DINOLoss
from cl_runner.losses.momentum import cosine_momentum
from cl_runner.parts import Objective
from cl_runner.runtime import Compute, make_grad_scaler
from cl_runner.train import train_step
from conftest import REPO

CPU = torch.device("cpu")
SMALL = dict(head=dict(out_dim=16, hidden_dim=16, bottleneck_dim=8))


class TinyEncoder(nn.Sequential):
    """A convolution, batch norm and a linear projection to 8 dimensions, for 6x6 images."""

    output_dim = 8

    def __init__(self):
        super().__init__(nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, self.output_dim))


def encoder_and_loss(**settings) -> tuple[nn.Module, DINOLoss]:
    torch.manual_seed(0)
    encoder, loss = TinyEncoder().double(), DINOLoss(**{"epochs": 10, **SMALL, **settings})
    loss.setup(encoder, batch_size=6)
    return encoder, loss.double()


def encode_views(views: int):
    def encode(module, images):
        z = module(images)
        return z.view(views, -1, z.shape[-1])
    return encode


def algorithm_1(student, teacher, center, tps, tpt):
    """Caron et al. 2021, Algorithm 1: H(t, s) with the teacher centred and sharpened, the student sharpened;
    the mean over every pair of a global view t and another view s, as the paper's code averages (for two views:
    H(t1, s2)/2 + H(t2, s1)/2)."""
    def H(t, s):
        t = t.detach()  # stop gradient
        s = F.softmax(s / tps, dim=1)
        t = F.softmax((t - center) / tpt, dim=1)  # center + sharpen
        return -(t * torch.log(s)).sum(dim=1).mean()

    terms = [H(teacher[i], student[j]) for i in range(len(teacher)) for j in range(len(student)) if i != j]
    return sum(terms) / len(terms)


@pytest.mark.parametrize("views", [2, 4], ids=["2 global", "2 global + 2 local"])
def test_the_loss_equals_algorithm_1(views):
    g = torch.Generator().manual_seed(0)
    student = torch.randn(views, 5, 16, generator=g, dtype=torch.float64)
    teacher = torch.randn(2, 5, 16, generator=g, dtype=torch.float64)
    loss = DINOLoss(epochs=1, teacher_temperature=dict(end=0.05, warmup_epochs=0), **SMALL).double()
    loss.center.copy_(torch.randn(16, generator=g))
    expected = algorithm_1(student, teacher, loss.center, 0.1, 0.05)
    assert loss(student, teacher).item() == pytest.approx(expected.item(), rel=1e-12)


def test_the_teacher_sees_the_global_views_and_the_student_every_view():
    encoder, loss = encoder_and_loss()
    images = torch.randn(4 * 3, 1, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():  # what the student and the teacher give, in train mode as training_loss runs them
        student = loss.head(copy.deepcopy(encoder)(images)).view(4, 3, -1)
        teacher = copy.deepcopy(loss.momentum_encoder[1])(copy.deepcopy(loss.momentum_encoder[0])(images))
    expected = algorithm_1(student, teacher.view(4, 3, -1)[:2], torch.zeros(16, dtype=torch.float64), 0.1, 0.04)
    ours = loss.training_loss(encoder, TupleBatch(images, views=4), BatchShare.split(3), encode_views(4))
    assert ours.item() == pytest.approx(expected.item(), rel=1e-10)


def test_hand_computed_cross_entropy_with_centring_and_sharpening():
    # out_dim 3, 2 tuples, tau_t = 0.5, tau_s = 0.1, c = (1, 0, -1). Teacher: g_t - c = 0 (uniform) or
    # tau_t (ln 2, 0, 0) (P_t = (1/2, 1/4, 1/4)); the student likewise with tau_s.
    c, half = torch.tensor([1.0, 0.0, -1.0]), torch.tensor([math.log(2), 0.0, 0.0])
    teacher = torch.stack([torch.stack([c, c]), torch.stack([c + 0.5 * half, c])])  # views x tuples x 3
    student = torch.stack([torch.zeros(2, 3), torch.stack([0.1 * half, torch.zeros(3)])])
    loss = DINOLoss(epochs=1, head=dict(out_dim=3), teacher_temperature=dict(end=0.5, warmup_epochs=0))
    loss.center.copy_(c)
    # tuple 1: H(uniform, (1/2, 1/4, 1/4)) = (ln 2 + 2 ln 4) / 3 = 5/3 ln 2 and H((1/2, 1/4, 1/4), uniform) = ln 3;
    # tuple 2: all uniform, ln 3 twice; the mean of the four
    assert loss(student, teacher).item() == pytest.approx((5 / 3 * math.log(2) + 3 * math.log(3)) / 4, rel=1e-6)


def test_the_center_follows_the_teachers_mean_by_ema_and_keeps_the_teacher_from_collapsing():
    encoder, loss = encoder_and_loss(center_momentum=0.8)
    loss.center.fill_(0.5)
    images = torch.randn(2 * 3, 1, 6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        teacher = copy.deepcopy(loss.momentum_encoder)
        mean = teacher[1](teacher[0](images)).mean(dim=0)  # over both global views of every tuple
    loss.training_loss(encoder, TupleBatch(images, views=2), BatchShare.split(3), encode_views(2))
    assert torch.allclose(loss.center, 0.8 * 0.5 + 0.2 * mean, rtol=1e-12)

    # one tuple per class, each logit vector dominated by dimension 0: uncentred, every target puts its mass on
    # dimension 0; once the center has learnt the mean, each tuple's target falls on its own dimension
    logits = (5 * F.one_hot(torch.zeros(4, dtype=torch.long), 4) + torch.eye(4)).double()[None]
    toy = DINOLoss(epochs=1, head=dict(out_dim=4)).double()
    assert toy.targets(logits).argmax(-1).tolist() == [[0, 0, 0, 0]]
    for _ in range(100):
        toy.update_center(logits.mean(dim=(0, 1)))
    assert toy.targets(logits).argmax(-1).tolist() == [[0, 1, 2, 3]]


def test_the_teacher_temperature_warms_up_linearly_then_stays_and_resumes_from_a_state_dict():
    encoder, loss = encoder_and_loss(epochs=10, teacher_temperature=dict(start=0.04, end=0.07, warmup_epochs=4))
    assert loss.teacher_temperature_now().item() == pytest.approx(0.04)  # the first step
    loss.after_step(encoder, 0.2)  # 2 of 10 epochs done: half-way through the warm-up
    assert loss.teacher_temperature_now().item() == pytest.approx(0.055)
    resumed = encoder_and_loss(epochs=10, teacher_temperature=dict(start=0.04, end=0.07, warmup_epochs=4))[1]
    resumed.load_state_dict(loss.state_dict())
    assert resumed.teacher_temperature_now().item() == pytest.approx(0.055)
    loss.after_step(encoder, 0.5)
    assert loss.teacher_temperature_now().item() == pytest.approx(0.07)
    no_warmup = DINOLoss(epochs=10, teacher_temperature=dict(warmup_epochs=0))
    assert no_warmup.teacher_temperature_now().item() == pytest.approx(0.07)


def test_the_teacher_gets_no_gradient_and_follows_the_student_by_ema_and_the_prototypes_train():
    encoder, loss = encoder_and_loss(momentum=0.9)
    prototypes = loss.head.prototypes.parametrizations.weight
    trained = [*encoder.parameters(), *(p for p in loss.parameters() if p.requires_grad)]
    assert any(p is prototypes.original1 for p in trained) and not prototypes.original0.requires_grad
    assert not any(p.requires_grad for p in loss.momentum_encoder.parameters())
    student = nn.ModuleList([encoder, loss.head])
    assert all(torch.equal(t, s) for t, s in zip(loss.momentum_encoder.parameters(), student.parameters()))
    before = [p.clone() for p in loss.momentum_encoder.parameters()]
    direction = prototypes.original1.clone()
    images = torch.randn(2 * 6, 1, 6, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    train_step(Objective(encoder, loss), torch.optim.SGD(trained, lr=0.5), make_grad_scaler(CPU, "fp32"),
               TupleBatch(images, views=2), Compute(CPU, "fp32", channels_last=False), progress=0.3)
    tau = cosine_momentum(0.9, 1.0, 0.3)
    for old, new, online in zip(before, loss.momentum_encoder.parameters(), student.parameters()):
        assert new.grad is None
        torch.testing.assert_close(new, tau * old + (1 - tau) * online, rtol=1e-12, atol=1e-14)
    assert not torch.equal(before[-1], loss.momentum_encoder[1].prototypes.parametrizations.weight.original1)
    assert prototypes.original1.grad is not None and not torch.equal(direction, prototypes.original1)
    assert torch.equal(prototypes.original0, torch.ones_like(prototypes.original0))
    torch.testing.assert_close(loss.head.prototypes.weight.norm(dim=1), torch.ones(16, dtype=torch.float64))


@pytest.mark.parametrize("views", [2, 4])
def test_the_student_learns_the_teachers_targets_under_sgd(views):
    """The teacher frozen (momentum 1) and the center the batch's mean (center momentum 0): from the second step
    on a fixed batch the targets stay, and 20 SGD steps on the encoder and the head must lower the loss (with a
    moving teacher and center, DINO's loss on one batch is no objective that SGD has to lower)."""
    encoder, loss = encoder_and_loss(momentum=1.0, center_momentum=0.0)
    images = torch.randn(views * 6, 1, 6, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    optimizer = torch.optim.SGD([*encoder.parameters(), *(p for p in loss.parameters() if p.requires_grad)], lr=0.02)
    losses = [train_step(Objective(encoder, loss), optimizer, make_grad_scaler(CPU, "fp32"),
                         TupleBatch(images, views=views), Compute(CPU, "fp32", channels_last=False),
                         progress=(step + 1) / 20).item() for step in range(20)]
    assert losses[-1] < 0.6 * min(losses[:2])


def test_the_config_takes_the_runs_epochs_and_multiview():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("config", overrides=["loss=dino", "epochs=7"])
    assert cfg.pairing._target_.endswith("MultiViewSampler")
    loss = instantiate(cfg.loss)
    assert isinstance(loss, DINOLoss) and loss.epochs == 7 and loss.head_size.out_dim == 4096


@pytest.mark.parametrize("setting, key", [
    ({"student_temperature": 0}, "student_temperature"),
    ({"teacher_temperature": {"end": -0.1}}, "teacher_temperature.end"),
    ({"teacher_temperature": {"start": 0.0}}, "teacher_temperature.start"),
    ({"center_momentum": 1.0}, "center_momentum"),
    ({"center_momentum": -0.1}, "center_momentum"), ({"head": {"out_dim": 1}}, "head.out_dim"),
    ({"head": {"out_dim": 4.0}}, "head.out_dim"),
    ({"teacher_temperature": {"warmup_epochs": -1}}, "teacher_temperature.warmup_epochs"), ({"epochs": -1}, "epochs"),
    ({"head": {"hidden_dim": 0}}, "head.hidden_dim"), ({"head": {"bottleneck_dim": True}}, "head.bottleneck_dim"),
    ({"student_temperature": float("nan")}, "student_temperature"),
    ({"head": {"width": 3}}, "head"), ({"teacher_temperature": 0.07}, "teacher_temperature")])
def test_refusals_name_the_key(setting, key):
    with pytest.raises(ConfigError, match=f"^loss.{key} must be"):
        DINOLoss(**{"epochs": 10, **setting})


def test_one_view_is_refused():
    encoder, loss = encoder_and_loss()
    images = torch.randn(3, 1, 6, 6, dtype=torch.float64)
    with pytest.raises(ConfigError, match="pairing.views >= 2"):
        loss.training_loss(encoder, TupleBatch(images, views=1), BatchShare.split(3), encode_views(1))
