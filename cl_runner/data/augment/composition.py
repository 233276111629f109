"""Augmentations as data: a pipeline is an ordered list of named operations, and an augmentation gives each view
of a tuple its pipeline (one for every view, or one per view, as BYOL's asymmetric pair).

In YAML, `aug.ops` names the operations (each a `_target_` and its settings, or a list of other names: an alias
such as `color: [jitter, grayscale]`) and `aug.views` lists each view's pipeline by those names; only the
operations a pipeline names are built.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from cl_runner.data.augment.base import Operation, Params, Shape, to_unit
from cl_runner.errors import ConfigError


class Pipeline:
    """Operations applied in order to uint8 images [B, C, H, W], giving float views in [0, 1]. Adjacent
    operations that one step can do together (crop then flip: one warp) are fused, drawing the same numbers."""

    def __init__(self, ops: Sequence[Operation], names: Sequence[str] = ()):
        self.names = tuple(names)
        self.ops: list[Operation] = []
        for op in ops:
            fused = self.ops[-1].fuse(op) if self.ops else None
            if fused is None:
                self.ops.append(op)
            else:
                self.ops[-1] = fused

    def uniforms(self, n: int, shape: Shape, generator: torch.Generator, device: torch.device) -> list[Params]:
        """Every operation's draws for n images of `shape` (C, H, W), in the pipeline's order."""
        return [op.uniforms(n, shape, generator, device) for op in self.ops]

    def params(self, uniforms: list[Params], size: tuple[int, int]) -> list[Params]:
        """Every operation's per-sample parameters from its draws (tensor arithmetic only)."""
        return [op.params(drawn, size) for op, drawn in zip(self.ops, uniforms)]

    def apply(self, images: torch.Tensor, params: list[Params], sync_free: bool | None = None) -> torch.Tensor:
        """uint8 images -> float views in [0, 1], with the parameters of these images. `sync_free`: no
        data-dependent shapes (default: on an accelerator), as a compiled batch builder needs."""
        if sync_free is None:
            sync_free = images.device.type != "cpu"
        x = to_unit(images)
        for op, own in zip(self.ops, params):
            x = op.apply(x, own, sync_free)
        return x

    def draw(self, n: int, shape: Shape, generator: torch.Generator, device: torch.device) -> list[Params]:
        return self.params(self.uniforms(n, shape, generator, device), shape[-2:])

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(images, self.draw(len(images), tuple(images.shape[1:]), generator, images.device))


class Augmentation:
    """The pipelines of a tuple's views: `views` lists, per view, the names of its operations in `ops` (one list:
    the same pipeline for every view). View 0 is the anchor (or a multi-view tuple's first view), view 1 the
    positive, and so on."""

    def __init__(self, ops: Mapping, views: Sequence):
        self.ops = ops
        if not isinstance(views, Sequence) or isinstance(views, str) or not views:
            raise ConfigError(f"aug.views={_plain(views)!r} is not allowed: aug.views must be a list of pipelines, "
                              "each a list of operation names (e.g. [[crop, flip, color]])")
        if all(isinstance(v, str) for v in views):  # one pipeline written without its outer list
            views = [views]
        built: dict[str, Operation] = {}
        self.pipelines = []
        for pipeline in views:
            names = self._expanded(pipeline)
            self.pipelines.append(Pipeline([self._built(name, built) for name in names], names))

    def view(self, index: int) -> Pipeline:
        """The pipeline of view `index` (0: the anchor or first view)."""
        return self.pipelines[index if len(self.pipelines) > 1 else 0]

    def check_views(self, augmented: Sequence[int], pairing: str) -> None:
        """Refuse per-view pipelines that do not match the views that the pairing augments (`augmented`, by
        index)."""
        if len(self.pipelines) == 1 or list(augmented) == list(range(len(self.pipelines))):
            return
        which = ", ".join(map(str, augmented)) or "none"
        raise ConfigError(f"aug.views gives {len(self.pipelines)} pipelines, one per view, but pairing={pairing} "
                          f"augments {len(augmented)} view(s) (number {which}; 0 is the anchor, which "
                          "pairing.augment_anchor=true augments too; multi-view: pairing.views and pairing.local_views "
                          "say how many): give one pipeline for all views, or one for each")

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augmented views as the positive (view 1) gets them."""
        return self.view(1)(images, generator)

    def _expanded(self, pipeline, seen: tuple[str, ...] = ()) -> list[str]:
        """The operation names of `pipeline`, aliases replaced by what they name."""
        if isinstance(pipeline, str) or not isinstance(pipeline, Sequence):
            raise ConfigError(f"aug.views holds {_plain(pipeline)!r}: each view's pipeline must be a list of "
                              "operation names (e.g. [crop, flip])")
        names = []
        for name in pipeline:
            if not isinstance(name, str) or name not in self.ops:
                raise ConfigError(f"aug.views names {name!r}, which is not an operation of aug.ops: "
                                  f"{', '.join(self.ops)}")
            value = self.ops[name]
            if OmegaConf.is_list(value) or (isinstance(value, Sequence) and not isinstance(value, str)):
                if name in seen:
                    raise ConfigError(f"aug.ops.{name} names itself through {' -> '.join(seen)}")
                names += self._expanded(value, (*seen, name))
            else:
                names.append(name)
        return names

    def _built(self, name: str, built: dict[str, Operation]) -> Operation:
        """The operation aug.ops[name], built once; its settings checked against its class's."""
        if name not in built:
            settings = self.ops[name]
            if isinstance(settings, Operation):  # built already (by Hydra with _recursive_, or in Python)
                built[name] = settings
                return settings
            target = settings.get("_target_") if isinstance(settings, (Mapping, DictConfig)) else None
            try:
                op_class = get_class(target) if isinstance(target, str) else None
            except (ImportError, AttributeError, ValueError):
                op_class = None
            if not (isinstance(op_class, type) and issubclass(op_class, Operation)):
                raise ConfigError(f"aug.ops.{name}._target_={target!r} is not an augmentation operation (a class "
                                  "of cl_runner.data.augment, or one of yours deriving from its Operation)")
            known = [k for k in inspect.signature(op_class).parameters if k != "self"]
            unknown = [k for k in settings if k != "_target_" and k not in known]
            if unknown:
                raise ConfigError(f"aug.ops.{name} has no setting {unknown[0]!r}: {op_class.__name__} takes "
                                  f"{', '.join(known)}")
            try:
                built[name] = instantiate(settings, _convert_="all")  # plain lists and dicts
            except InstantiationException as err:
                cause = err.__cause__ or err
                raise ConfigError(f"aug.ops.{name}: {cause}") from err
        return built[name]


class TargetedPair(Augmentation):
    """SimCLR's ablation of pairs of operations (Chen et al. 2020, Figure 5): every view goes through `base`;
    the targeted operations, `first` then `second`, follow it on the second view only (`branches: one`, the
    paper's setting) or on both (`both`, as the reproduction report's Figure 7). A targeted operation is applied
    once: not again where `second` is `first` (the matrix's diagonal, one operation alone), nor where `base`
    already holds it (the crop row of the paper's matrix, whose views are all cropped)."""

    def __init__(self, ops: Mapping, base: Sequence[str], first: str, second: str, branches: str = "one"):
        if branches not in ("one", "both"):
            raise ConfigError(f"aug.branches={branches!r} is not allowed: aug.branches must be one or both")
        targeted = [*base, *(name for name in dict.fromkeys([first, second]) if name not in base)]
        super().__init__(ops, [list(base), targeted] if branches == "one" else [targeted])


def _plain(value):
    return OmegaConf.to_object(value) if OmegaConf.is_config(value) else value
