"""Optimizers and learning-rate schedules: LARS, weight decay on weights only, warm-up + cosine decay."""
from __future__ import annotations

import math

import torch
from torch import nn

from cl_runner.errors import ConfigError

# Learning-rate scaling rules: the factor applied to the optimizer's lr for a given batch size.
LR_SCALING = {"none": lambda batch_size: 1.0,
              "linear": lambda batch_size: batch_size / 256,  # Goyal et al. 2017
              "sqrt": lambda batch_size: math.sqrt(batch_size / 256)}  # Chen et al. 2020 (SimCLR), B.1


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay only on parameters with 2+ dimensions (convolution and linear weights); biases and
    normalization parameters get none and are marked `exclude_from_adaptation` for LARS."""
    decayed, excluded = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decayed if param.ndim >= 2 else excluded).append(param)
    return [{"params": decayed, "weight_decay": weight_decay, "exclude_from_adaptation": False},
            {"params": excluded, "weight_decay": 0.0, "exclude_from_adaptation": True}]


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling (You et al. 2017), as SimCLR uses it (Chen et al. 2020, B.1): for each
    parameter w with gradient g, d = g + weight_decay * w, trust = eta * ||w|| / ||d||, v = momentum * v +
    lr * trust * d, w = w - v. Parameter groups with `exclude_from_adaptation` use trust = 1 (plain SGD with
    momentum), as do parameters whose norm or update norm is zero."""

    def __init__(self, params, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001, exclude_from_adaptation: bool = False):
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0 or eta <= 0:
            raise ConfigError("LARS needs lr > 0, 0 <= momentum < 1, weight_decay >= 0 and eta > 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                                      exclude_from_adaptation=exclude_from_adaptation))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                update = param.grad.add(param, alpha=group["weight_decay"])
                if not group["exclude_from_adaptation"]:
                    param_norm, update_norm = torch.linalg.vector_norm(param), torch.linalg.vector_norm(update)
                    trust = torch.where((param_norm > 0) & (update_norm > 0),
                                        group["eta"] * param_norm / update_norm, torch.ones_like(param_norm))
                    update = update.mul_(trust)
                velocity = self.state[param].get("velocity")
                if velocity is None:
                    velocity = self.state[param]["velocity"] = torch.zeros_like(param)
                velocity.mul_(group["momentum"]).add_(update, alpha=group["lr"])
                param.sub_(velocity)
        return loss


def constant_schedule(optimizer: torch.optim.Optimizer, *, steps_per_epoch: int, epochs: int, batch_size: int,
                      lr_scaling: str = "none"):
    """The learning rate stays at the optimizer's (scaled) one: the study's setting."""
    scale = LR_SCALING[lr_scaling](batch_size)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: scale)


def warmup_cosine_schedule(optimizer: torch.optim.Optimizer, *, steps_per_epoch: int, epochs: int,
                           batch_size: int, lr_scaling: str = "none", warmup_epochs: float = 10,
                           final_fraction: float = 0.0):
    """Linear warm-up from 0 over `warmup_epochs`, then cosine decay to `final_fraction` of the peak by the
    last step (Goyal et al. 2017; Loshchilov & Hutter 2017), stepped once per optimizer step. The peak is the
    optimizer's lr times the `lr_scaling` rule's factor."""
    scale = LR_SCALING[lr_scaling](batch_size)
    warmup = round(warmup_epochs * steps_per_epoch)
    total = max(epochs * steps_per_epoch, warmup + 1)

    def factor(step: int) -> float:
        if step < warmup:
            return scale * (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup - 1))
        return scale * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
