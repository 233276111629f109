"""Optimizers and learning-rate schedules: LARS, weight decay on weights only, warm-up + cosine decay."""
from __future__ import annotations

import inspect
import logging
import math
from functools import partial

import torch
from torch import nn

from cl_runner.errors import ConfigError

log = logging.getLogger(__name__)

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


FUSED_DEVICES = ("cpu", "cuda")  # where torch's fused optimizer kernels exist


def make_optimizer(factory: partial, groups: list[dict]) -> torch.optim.Optimizer:
    """The optimizer that `factory` (the config's partial) builds for the parameter `groups`, with fused steps (one
    kernel for all parameters) where its class takes `fused` (torch's SGD, Adam) and every parameter is on a device
    that has the kernels, unless the config sets `fused` or `foreach` itself. Loading a state dict (a checkpoint)
    keeps the optimizer's own `fused` and `foreach`: how the step computes is this run's choice, not the saved
    run's (a checkpoint from an unfused optimizer would otherwise unfuse it, which a GradScaler's step then
    fails on, as it unscales inside fused steps only)."""
    params = [param for group in groups for param in group["params"]]
    fuse = (not {"fused", "foreach"} & factory.keywords.keys() and "fused" in inspect.signature(factory.func).parameters
            and all(param.device.type in FUSED_DEVICES for param in params))
    optimizer = factory(groups, fused=True) if fuse else factory(groups)
    optimizer.register_load_state_dict_pre_hook(_keep_step_implementation)
    return optimizer


def _keep_step_implementation(optimizer: torch.optim.Optimizer, state_dict: dict) -> dict:
    groups = [{**saved, **{key: group[key] for key in ("fused", "foreach") if key in group}}
              for saved, group in zip(state_dict["param_groups"], optimizer.param_groups)]
    return {**state_dict, "param_groups": groups}


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling (You et al. 2017), as SimCLR uses it (Chen et al. 2020, B.1): for each
    parameter w with gradient g, d = g + weight_decay * w, trust = eta * ||w|| / ||d||, v = momentum * v +
    lr * trust * d, w = w - v. Parameter groups with `exclude_from_adaptation` use trust = 1 (plain SGD with
    momentum), as do parameters whose norm or update norm is zero. A step is one foreach pass per parameter group
    (torch._foreach_* over the group's parameters that have gradients, trust ratios as one tensor): no Python loop
    over the update's arithmetic and no host sync."""

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
            params = [param for param in group["params"] if param.grad is not None]
            if not params:
                continue
            updates = torch._foreach_add([param.grad for param in params], params, alpha=group["weight_decay"])
            if not group["exclude_from_adaptation"]:
                param_norms = torch.stack(torch._foreach_norm(params))
                update_norms = torch.stack(torch._foreach_norm(updates))
                trust = torch.where((param_norms > 0) & (update_norms > 0),
                                    group["eta"] * param_norms / update_norms, torch.ones_like(param_norms))
                torch._foreach_mul_(updates, trust.unbind())
            for param in params:
                if "velocity" not in self.state[param]:
                    self.state[param]["velocity"] = torch.zeros_like(param)
            velocities = [self.state[param]["velocity"] for param in params]
            torch._foreach_mul_(velocities, group["momentum"])
            torch._foreach_add_(velocities, updates, alpha=group["lr"])
            torch._foreach_sub_(params, velocities)
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
    if epochs and warmup_epochs >= epochs:
        share = epochs * steps_per_epoch / warmup  # of the warm-up done by the last step
        log.warning("schedule.warmup_epochs=%g is not below epochs=%d: the learning rate only warms up, to %.3g "
                    "(%.0f%% of its peak %.3g) at the last step, and never decays; lower schedule.warmup_epochs",
                    warmup_epochs, epochs, optimizer.defaults["lr"] * scale * share, 100 * share,
                    optimizer.defaults["lr"] * scale)

    def factor(step: int) -> float:
        if step < warmup:
            return scale * (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup - 1))
        return scale * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
