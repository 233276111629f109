"""DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers"): self-distillation with
no labels. A student (the encoder and a DINO head) learns to match the output distribution of a teacher (a
momentum copy of both) on other views of the same image, H(P_t, P_s) = -sum_k P_t[k] log P_s[k]; the teacher
avoids collapse by centring and sharpening its outputs: P_t = softmax((g_t(x) - c) / tau_t), P_s =
softmax(g_s(x') / tau_s), tau_t < tau_s."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from cl_runner import distributed
from cl_runner.errors import ConfigError
from cl_runner.losses.base import embed_views
from cl_runner.losses.momentum import _MomentumEncoder

GLOBAL_VIEWS = 2  # the views the teacher sees: the first two (the paper's global crops)


class DINOHead(nn.Module):
    """DINO's projection head (Caron et al. 2021, section 3.1; the official code's DINOHead): a 3-layer MLP
    (Linear-GELU, no batch norm; hidden width `hidden_dim`) to a `bottleneck_dim` bottleneck, l2-normalization,
    then a weight-normalized linear layer without bias to `out_dim` prototypes, w_k = g_k v_k / ||v_k||, with g fixed
    to 1 (the code's norm_last_layer): each logit is the cosine of the bottleneck to a prototype that trains through
    v. Initialized as in the code: the MLP's weights by trunc_normal_ of std 0.02, its biases zero; the
    prototypes' directions v as nn.Linear's weights."""

    def __init__(self, in_dim: int, hidden_dim: int, bottleneck_dim: int, out_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, bottleneck_dim))
        for layer in self.mlp[::2]:
            nn.init.trunc_normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)
        self.prototypes = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.prototypes.parametrizations.weight.original0.requires_grad_(False).fill_(1)  # g = 1, not trained

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prototypes(F.normalize(self.mlp(x), dim=-1))


@dataclass(frozen=True)
class HeadSize:
    """DINOHead's widths (`loss.head`): solo-learn's CIFAR recipe (the paper's ImageNet head has 65536 prototypes)."""

    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    out_dim: int = 4096


@dataclass(frozen=True)
class TeacherTemperature:
    """tau_t's schedule (`loss.teacher_temperature`): linear from `start` to `end` over the first `warmup_epochs`
    of the run, then `end` (the paper's 0.04 -> 0.07 over 30 epochs)."""

    start: float = 0.04
    end: float = 0.07
    warmup_epochs: float = 30


def _group(cls, value, key: str):
    """A setting group (`cls`, a dataclass) from the config's mapping `value` of loss.`key`, its defaults for
    the keys it leaves out."""
    if isinstance(value, cls):
        return value
    names = [f.name for f in fields(cls)]
    if not isinstance(value, Mapping) or set(value) - set(names):
        raise ConfigError(f"loss.{key} must be a mapping of {', '.join(names)}, got {value!r}")
    return cls(**value)


def _setting(name: str, value, allowed: str, ok) -> None:
    """Refuse `value` for loss.`name` unless it is a number (not a bool) for which `ok` holds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
        raise ConfigError(f"loss.{name} must be {allowed}, got {value!r}")


class DINOLoss(_MomentumEncoder):
    """DINO (Caron et al. 2021, Algorithm 1 and eq. 3): the student's logits of every view against the teacher's
    of the two global views (the first two), H(P_t(x_i), P_s(x_j)) averaged over the pairs i in {1, 2}, j any
    view, j != i, and over the tuples. The views that only the student sees (the paper's local crops) are views 3
    and on of the batch's views, then multi-crop's smaller local views (pairing.local_views); the teacher encodes
    the batch's views of the global size and keeps the first two (its batch norm sees all of that size).

    - Teacher: `momentum_encoder`, a momentum copy of the encoder and the head together (`momentum_encoder[0]`,
      `[1]`), updated after every step, theta_t <- lambda theta_t + (1 - lambda) theta_s, lambda on BYOL's cosine
      schedule from `momentum` to `final_momentum` (the paper's 0.996 -> 1). No gradient reaches it.
    - Sharpening: tau_s = `student_temperature`; tau_t rises linearly from `teacher_temperature.start` to
      `.end` over the first `.warmup_epochs` of the run's `epochs` (TeacherTemperature; step by step, where the
      code steps per epoch), then stays. The last progress of `after_step` is a buffer: a resumed run continues.
    - Centring: c <- m c + (1 - m) mean of the teacher's logits over both global views of the global batch
      (m = `center_momentum`), after the step's loss; a buffer, equal on every process.

    The center changes only after the loss, so a tuple's loss does not depend on the others of its step: not
    `in_batch`, a mean over this process's tuples weighted by `share.weight`."""

    pairings = ("multiview",)
    local_views = True

    def __init__(self, epochs: int, head: HeadSize | Mapping = HeadSize(), student_temperature: float = 0.1,
                 teacher_temperature: TeacherTemperature | Mapping = TeacherTemperature(),
                 center_momentum: float = 0.9, momentum: float = 0.996, final_momentum: float = 1.0):
        super().__init__(momentum, final_momentum)
        self.head_size = _group(HeadSize, head, "head")
        self.teacher_schedule = _group(TeacherTemperature, teacher_temperature, "teacher_temperature")
        for name, value in (("student_temperature", student_temperature),
                            ("teacher_temperature.start", self.teacher_schedule.start),
                            ("teacher_temperature.end", self.teacher_schedule.end)):
            _setting(name, value, "a number > 0", lambda v: 0 < v < math.inf)
        _setting("center_momentum", center_momentum, "a number in [0, 1)", lambda v: 0 <= v < 1)
        _setting("teacher_temperature.warmup_epochs", self.teacher_schedule.warmup_epochs, "a number >= 0",
                 lambda v: 0 <= v < math.inf)
        for name, value, low in (("epochs", epochs, 0), ("head.out_dim", self.head_size.out_dim, 2),
                                 ("head.hidden_dim", self.head_size.hidden_dim, 1),
                                 ("head.bottleneck_dim", self.head_size.bottleneck_dim, 1)):
            _setting(name, value, f"an integer >= {low}", lambda v: isinstance(v, int) and v >= low)
        self.epochs, self.student_temperature, self.center_momentum = epochs, student_temperature, center_momentum
        self.register_buffer("center", torch.zeros(self.head_size.out_dim))
        self.register_buffer("progress", torch.zeros(()))  # share of training done before this step

    def setup(self, encoder, batch_size):
        size = self.head_size
        self.head = DINOHead(encoder.output_dim, size.hidden_dim, size.bottleneck_dim, size.out_dim)
        super().setup(nn.ModuleList([encoder, self.head]), batch_size)  # the teacher: a copy of both

    def training_loss(self, encoder, batch, share, encode):
        if batch.views < GLOBAL_VIEWS:
            raise ConfigError(f"loss=dino compares views of each image: it needs pairing.views >= {GLOBAL_VIEWS}, "
                              f"not {batch.views}")
        student = logits(self.head, embed_views(encoder, batch, encode))  # views x tuples x out_dim
        with torch.no_grad():
            teacher_encoder, teacher_head = self.momentum_encoder
            teacher = logits(teacher_head, encode(teacher_encoder, batch.images)[:GLOBAL_VIEWS])
        loss = self(student, teacher) * share.weight
        self.update_center(distributed.mean_over_ranks(teacher.mean(dim=(0, 1)) * share.weight))
        return loss

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """student: [views, tuples, out_dim] logits of every view; teacher: [global views, tuples, out_dim] of
        the views the teacher sees, student view i being the same image as teacher view i."""
        log_p = F.log_softmax(student / self.student_temperature, dim=-1)
        cross = -torch.einsum("tnk,snk->ts", self.targets(teacher), log_p)  # summed over the tuples
        other = ~torch.eye(len(teacher), len(student), dtype=torch.bool, device=student.device)  # pairs j != i
        return cross[other].mean() / student.shape[1]

    def targets(self, teacher: torch.Tensor) -> torch.Tensor:
        """P_t: the teacher's logits centred and sharpened, softmax((g_t - c) / tau_t), without gradient."""
        return F.softmax((teacher.detach() - self.center) / self.teacher_temperature_now(), dim=-1)

    def teacher_temperature_now(self) -> torch.Tensor:
        """tau_t at this step (a tensor on the buffers' device: reading it needs no host sync)."""
        start, end, warmup = self.teacher_schedule.start, self.teacher_schedule.end, self.teacher_schedule.warmup_epochs
        if not warmup:
            return torch.full_like(self.progress, end)
        return start + (end - start) * (self.progress * self.epochs / warmup).clamp(max=1)

    @torch.no_grad()
    def update_center(self, batch_center: torch.Tensor) -> None:
        """c <- m c + (1 - m) batch_center, the mean of the global batch's teacher logits."""
        self.center.lerp_(batch_center, 1 - self.center_momentum)

    @torch.no_grad()
    def after_step(self, encoder: nn.Module, progress: float) -> None:
        super().after_step(nn.ModuleList([encoder, self.head]), progress)  # one EMA for both parts of the teacher
        self.progress.fill_(progress)


def logits(head: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """The head's output for embeddings z [views, tuples, dim]: [views, tuples, out_dim]."""
    return head(z.flatten(0, 1)).unflatten(0, z.shape[:2])
