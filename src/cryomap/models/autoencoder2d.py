"""A small 2D convolutional autoencoder for particle images, and the encoder as an embedding.

The network (pure torch; imports nothing of cryomap above :mod:`cryomap.core`): images are
resized to ``input_size`` (Fourier cropping), standardised and masked by a soft circle
(:func:`preprocess`); the encoder is ``len(channels)`` stride-2 convolutions (3×3, batch norm,
SiLU) and a linear layer to ``latent_dim`` numbers; the decoder mirrors it with transposed
convolutions.

Rotation invariance (``rotation_invariant``): the encoder sees the image at ``n_rotations``
in-plane angles (multiples of 360°/n) and averages its features over them before the last linear
layer, so the latent does not change when the particle turns by one of those angles (and little
for angles between); the reconstruction is scored against the best-matching of those rotations of
the input (the decoder draws the particle in an orientation of its choosing). Particles come at
random in-plane angles, so this latent describes the view rather than the angle.

Weights are stored as safetensors with the configuration in the file's metadata (and in a JSON file
beside it): :func:`save_autoencoder`, :func:`load_autoencoder`, :func:`embed_with_encoder`.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIG_KEY = "cryomap_autoencoder2d"


@dataclass
class AutoencoderConfig:
    """Architecture and input handling of :class:`Autoencoder2D` (sizes in pixels of the network input)."""

    input_size: int = 64
    latent_dim: int = 8
    channels: tuple[int, ...] = (16, 32, 64, 64)
    rotation_invariant: bool = True
    n_rotations: int = 8
    mask_radius: float = 0.45  # fraction of input_size

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if self.input_size % (2 ** len(self.channels)):
            raise ValueError(f"input_size {self.input_size} must be divisible by 2^{len(self.channels)}")
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be at least 1, got {self.latent_dim}")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "AutoencoderConfig":
        raw = json.loads(text)
        raw["channels"] = tuple(raw.get("channels", ()))
        return cls(**raw)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.SiLU())


def _up(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.SiLU())


def rotate_images(x: torch.Tensor, angles_deg: torch.Tensor | list[float]) -> torch.Tensor:
    """Images (B, 1, S, S) turned counter-clockwise about the centre by each angle → (R, B, 1, S, S) (bilinear)."""
    ang = torch.as_tensor(angles_deg, dtype=x.dtype, device=x.device) * (math.pi / 180.0)
    cos, sin = torch.cos(ang), torch.sin(ang)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, sin, zero], -1), torch.stack([-sin, cos, zero], -1)], 1)  # (R, 2, 3)
    b = x.shape[0]
    r = len(ang)
    grid = F.affine_grid(theta.repeat_interleave(b, 0), (r * b,) + tuple(x.shape[1:]), align_corners=False)
    out = F.grid_sample(x.repeat(r, 1, 1, 1), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape((r, b) + tuple(x.shape[1:]))


class Autoencoder2D(nn.Module):
    """Encoder (images → latents) and decoder (latents → images); see the module docstring."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        ch = (1,) + config.channels
        self.encoder_convs = nn.Sequential(*[_block(ch[i], ch[i + 1]) for i in range(len(config.channels))])
        self.side = config.input_size // 2 ** len(config.channels)
        flat = config.channels[-1] * self.side**2
        self.encoder_head = nn.Linear(flat, config.latent_dim)
        self.decoder_head = nn.Linear(config.latent_dim, flat)
        rev = tuple(reversed(config.channels))
        ups = [_up(rev[i], rev[i + 1]) for i in range(len(rev) - 1)]
        self.decoder_convs = nn.Sequential(*ups, nn.ConvTranspose2d(rev[-1], 1, 4, stride=2, padding=1))

    @property
    def angles(self) -> list[float]:
        n = self.config.n_rotations if self.config.rotation_invariant else 1
        return [360.0 * i / n for i in range(n)]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened conv features (B, F), averaged over the input's rotations when rotation-invariant."""
        if not self.config.rotation_invariant:
            return self.encoder_convs(x).flatten(1)
        rot = rotate_images(x, self.angles)  # (R, B, 1, S, S)
        r, b = rot.shape[:2]
        f = self.encoder_convs(rot.reshape((r * b,) + tuple(x.shape[1:]))).flatten(1)
        return f.reshape(r, b, -1).mean(0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents (B, latent_dim) of preprocessed images (B, 1, S, S)."""
        return self.encoder_head(self.features(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        c = self.config.channels[-1]
        return self.decoder_convs(self.decoder_head(z).reshape(-1, c, self.side, self.side))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return self.decode(z), z

    def reconstruction_loss(self, x: torch.Tensor, recon: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean squared error per image inside ``mask``; rotation-invariant: against the best rotation of ``x``."""
        targets = rotate_images(x, self.angles) if self.config.rotation_invariant else x[None]
        d = (targets - recon[None]) ** 2
        if mask is not None:
            d = d * mask
            per = d.sum(dim=(2, 3, 4)) / mask.sum()
        else:
            per = d.mean(dim=(2, 3, 4))  # (R, B)
        return per.min(dim=0).values.mean()


def soft_mask(size: int, radius_fraction: float, soft_px: float = 3.0) -> torch.Tensor:
    """(1, 1, size, size) raised-cosine circular mask about pixel size//2."""
    c = size // 2
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    r = torch.sqrt((xx - c) ** 2 + (yy - c) ** 2)
    edge = torch.clamp((r - radius_fraction * size) / soft_px, 0.0, 1.0)
    return (0.5 + 0.5 * torch.cos(math.pi * edge))[None, None]


def preprocess(images: np.ndarray, config: AutoencoderConfig) -> torch.Tensor:
    """Particle images (N, H, W) → network input (N, 1, S, S): Fourier-resized, standardised, masked."""
    from cryomap.core.fourier import resize_images
    from cryomap.core.images import standardize_images

    arr = np.asarray(images, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    arr = resize_images(arr, config.input_size)
    arr = standardize_images(arr)
    x = torch.from_numpy(np.ascontiguousarray(arr))[:, None]
    return x * soft_mask(config.input_size, config.mask_radius)


def save_autoencoder(model: Autoencoder2D, path: str | Path, *, part: str = "encoder") -> Path:
    """Save the ``encoder``, ``decoder`` or ``all`` weights as safetensors (config in the metadata) + a JSON beside it."""
    from safetensors.torch import save_file

    path = Path(path)
    state = model.state_dict()
    prefixes = {"encoder": ("encoder_",), "decoder": ("decoder_",), "all": ("encoder_", "decoder_")}[part]
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items() if k.startswith(prefixes)}
    meta = {CONFIG_KEY: model.config.to_json(), "part": part}
    save_file(tensors, str(path), metadata=meta)
    path.with_suffix(".json").write_text(json.dumps({**json.loads(model.config.to_json()), "part": part}, indent=1))
    return path


def load_autoencoder(path: str | Path) -> Autoencoder2D:
    """An :class:`Autoencoder2D` with the weights of ``path`` loaded, in eval mode (cached per file and mtime).

    An encoder-only file leaves the decoder untrained. A missing or unreadable file, or weights that
    do not fit the configuration, are a :class:`cryomap.errors.BadInputError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        from cryomap.errors import BadInputError

        raise BadInputError("encoder weights file not found", path)
    return _load_cached(str(path.resolve()), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _load_cached(path_str: str, mtime_ns: int) -> Autoencoder2D:
    from safetensors import safe_open
    from safetensors.torch import load_file

    from cryomap.errors import BadInputError

    path = Path(path_str)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for a damaged header
        raise BadInputError(f"not a readable safetensors file ({exc})", path) from exc
    if CONFIG_KEY in meta:
        config = AutoencoderConfig.from_json(meta[CONFIG_KEY])
    elif path.with_suffix(".json").exists():
        raw = json.loads(path.with_suffix(".json").read_text())
        raw.pop("part", None)
        config = AutoencoderConfig.from_json(json.dumps(raw))
    else:
        raise BadInputError("no autoencoder configuration in the file's metadata or in a .json beside it", path)
    model = Autoencoder2D(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(k.startswith("encoder_") for k in missing):
        raise BadInputError(f"weights do not fit the configured autoencoder (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]})", path)
    return model.eval()


def embed_with_encoder(weights_path: Path, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Latents (N, L) float32 of particle images (N, H, W) float32 with the encoder saved at ``weights_path``."""
    model = load_autoencoder(weights_path)
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = preprocess(images[start:start + batch_size], model.config)
            out.append(model.encode(x).numpy().astype(np.float32))
    if not out:
        return np.zeros((0, model.config.latent_dim), np.float32)
    return np.concatenate(out)


__all__ = ["AutoencoderConfig", "Autoencoder2D", "preprocess", "save_autoencoder", "load_autoencoder",
           "embed_with_encoder", "rotate_images", "soft_mask"]
