"""Models by name: ``build_model("unet3d", in_channels=C, **cfg)`` or ``"diffusion"``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator adding a model factory under ``name``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = fn
        return fn

    return deco


@register("unet3d")
def _unet3d(in_channels: int, **kw: Any) -> nn.Module:
    from cryomap.models.unet3d import UNet3D

    return UNet3D(in_channels=in_channels, **kw)


@register("unet3d_plain")
def _unet3d_plain(in_channels: int, **kw: Any) -> nn.Module:
    from cryomap.models.unet3d import PlainUNet3D

    return PlainUNet3D(in_channels=in_channels, **kw)


@register("diffusion")
def _diffusion_unet(in_channels: int, learn_sigma: bool = True, **kw: Any) -> nn.Module:
    """The denoiser: input x_t (1 channel) + condition (``in_channels``), output ε (and v)."""
    from cryomap.models.diffusion.unet import DiffusionUNet3d

    return DiffusionUNet3d(in_channels=1 + in_channels, out_channels=2 if learn_sigma else 1, **kw)


def available() -> list[str]:
    """Names :func:`build_model` accepts."""
    return sorted(_REGISTRY)


def build_model(name: str, in_channels: int, **kwargs: Any) -> nn.Module:
    """Instantiate the model ``name`` for a condition of ``in_channels`` channels."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name](in_channels, **kwargs)
