"""A finished run's encoder in your own code: `load_encoder(run_dir)` rebuilds it from the run's own config and
weights, `embed(run_dir, images)` gives embeddings. Both take images as the data sets hold them (uint8, 0-255)
or as floats in [0, 1] (the usual `x / 255`), and apply the run's own conversion to the encoder's input range,
[-1, 1]: a wrong scaling is refused, never silently embedded. Nothing read from the folder runs code: the weights
load with `weights_only`, and the config may only name cl-runner's own encoder classes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from cl_runner.data.augment import normalize, to_unit

ENCODER_FILE, CONFIG_FILE = "encoder.pt", "config.yaml"
OWN_CLASSES = "cl_runner.models."  # the only `_target_`s a run's encoder config may name


class TrainedEncoder(nn.Module):
    """A run's encoder (`encoder`, in eval mode) behind the run's input convention: images [N, C, H, W] of
    `channels` channels, uint8 in 0-255 or float in [0, 1]. `features(images, which)`: the backbone's features
    ("backbone", what cl-runner's probes evaluate by default) or the projection head's output ("projector");
    calling the module gives the backbone's."""

    def __init__(self, encoder: nn.Module, channels: int):
        super().__init__()
        self.encoder, self.channels = encoder, channels
        self.train(False)  # eval mode, as the run evaluated it

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """The encoder's input for `images`: uint8 0-255 or float [0, 1] -> float [-1, 1] on the encoder's device."""
        if images.ndim != 4 or images.shape[1] != self.channels:
            raise ValueError(f"images must be [N, {self.channels}, H, W] (this encoder takes {self.channels}-channel "
                             f"images), got shape {list(images.shape)}")
        device = next(self.encoder.parameters()).device
        if images.dtype == torch.uint8:
            return normalize(to_unit(images.to(device)))
        if not images.is_floating_point():
            raise ValueError(f"images must be uint8 (0-255) or float in [0, 1], got {images.dtype}")
        low, high = float(images.min()), float(images.max())
        if low < 0 or high > 1:
            raise ValueError(f"float images must lie in [0, 1] (e.g. uint8 / 255), got values in [{low:.3g}, "
                             f"{high:.3g}]: pass them unnormalized, the encoder applies its own conversion")
        return normalize(images.to(device, torch.float32))

    def features(self, images: torch.Tensor, which: str = "backbone") -> torch.Tensor:
        if which not in ("backbone", "projector"):
            raise ValueError(f"which must be backbone or projector, got {which!r}")
        return self.encoder.features(self.prepare(images), which)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)


def load_encoder(run_dir: str | Path, device: str | torch.device = "cpu") -> TrainedEncoder:
    """The trained encoder of the finished run in `run_dir`, on `device`, in eval mode."""
    run_dir = Path(run_dir)
    weights, config = run_dir / ENCODER_FILE, run_dir / CONFIG_FILE
    if not weights.is_file() or not config.is_file():
        raise FileNotFoundError(f"{run_dir} holds no finished run: it needs {ENCODER_FILE} and {CONFIG_FILE}, which "
                                f"a run writes at its end")
    encoder_cfg = OmegaConf.load(config).get("encoder")
    targets = [str(node["_target_"]) for node in _nodes(OmegaConf.to_container(encoder_cfg or {}))
               if "_target_" in node]
    foreign = [t for t in targets if not t.startswith(OWN_CLASSES)]
    if not targets or foreign:
        raise ValueError(f"{config} names {foreign[0] if foreign else 'no encoder class'}: an encoder config may "
                         f"only name cl-runner's own classes ({OWN_CLASSES}*)")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    first_convolution = next((v for v in state.values() if v.ndim == 4), None)  # [out, in_channels, kh, kw]
    if first_convolution is None:
        raise ValueError(f"{weights} holds no convolution: not the weights of a cl-runner encoder")
    channels = first_convolution.shape[1]
    encoder = instantiate(encoder_cfg, backbone={"in_channels": channels})
    encoder.load_state_dict(state)
    return TrainedEncoder(encoder.to(device), channels)


@torch.no_grad()
def embed(run: str | Path | TrainedEncoder, images: torch.Tensor, which: str = "backbone",
          batch_size: int = 1024) -> np.ndarray:
    """Embeddings [N, D] (float32, on the host) of `images` (uint8 0-255 or float [0, 1], [N, C, H, W]) by the
    encoder of the run folder `run` (or one `load_encoder` gave), `batch_size` images at a time."""
    encoder = run if isinstance(run, TrainedEncoder) else load_encoder(run)
    chunks = [encoder.features(images[i:i + batch_size], which).float().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(chunks).numpy()


def _nodes(tree) -> list[dict]:
    """Every mapping in a nested config, the tree itself first."""
    if isinstance(tree, dict):
        return [tree] + [n for value in tree.values() for n in _nodes(value)]
    if isinstance(tree, list):
        return [n for value in tree for n in _nodes(value)]
    return []
