"""Denoising of particle images: Topaz-Denoise's pretrained networks, and a classical low-pass.

Topaz-Denoise (Bepler et al. 2020) ships its trained 2D networks inside the topaz-em wheel
(``topaz/pretrained/denoise/*.sav``, plain state dicts): ``unet`` (the default, L2), ``unet-small``,
``fcnn`` and ``affine``. They are loaded here with ``torch.load(weights_only=True)`` into topaz's own
architectures (``topaz.denoising.models``) — nothing is unpickled, nothing downloaded, and topaz's
CLI (which imports torchvision) is never touched. Topaz's batch API (``Denoise._denoise``)
normalises a whole batch with one mean and standard deviation, which lets one bright or dark
particle change how every other particle in its batch is denoised; here **each image is
normalised on its own** (mean 0, std 1 before the network, its own scale restored after), so the
result of a particle does not depend on the batch it was in.

``lowpass`` needs no weights: a Gaussian low-pass in Fourier space whose amplitude falls to ½ at
``resolution`` Å (default 6 pixels, a third of Nyquist).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from cryomap.errors import BadInputError
from cryomap.particles.source import BatchContext
from cryomap.preprocess.base import Op

#: Topaz's pretrained 2D denoisers: name → (weights file in topaz/pretrained/denoise, architecture).
TOPAZ_MODELS = {
    "unet": "unet_L2_v0.2.2.sav",
    "unet-small": "unet_small_L1_v0.2.2.sav",
    "fcnn": "fcnn_L1_v0.2.2.sav",
    "affine": "affine_L1_v0.2.2.sav",
}
DenoiseMethod = Literal["unet", "unet-small", "fcnn", "affine", "lowpass"]
#: Images per network call (bounds memory: a 256² batch of 16 through the U-Net is ~1 GB of activations).
TOPAZ_BATCH = 16
#: Smallest box the Topaz networks see (smaller particles are mirror-padded to it, then cropped back).
MIN_TOPAZ_SIZE = 64
#: Default low-pass resolution in pixels (× Å/px): a third of Nyquist.
DEFAULT_LOWPASS_PX = 6.0


def topaz_weights_path(model: str):
    """The path of a pretrained Topaz denoiser's weights inside the installed topaz-em package."""
    if model not in TOPAZ_MODELS:
        raise BadInputError(f"unknown Topaz denoiser {model!r}; choose one of {', '.join(TOPAZ_MODELS)}")
    try:
        import importlib.resources as resources

        root = resources.files("topaz") / "pretrained" / "denoise"
    except ModuleNotFoundError as exc:
        raise BadInputError("Topaz denoising needs the topaz-em package (pip install --no-deps topaz-em, "
                            "as requirements-nodeps.txt does)") from exc
    path = root / TOPAZ_MODELS[model]
    if not path.is_file():
        raise BadInputError(f"the pretrained Topaz weights for {model!r} are missing from the topaz-em install", str(path))
    return path


@functools.lru_cache(maxsize=4)
def load_topaz(model: str = "unet") -> torch.nn.Module:
    """A pretrained Topaz denoiser in eval mode (weights loaded without unpickling; cached per process)."""
    path = topaz_weights_path(model)
    from topaz.denoising.models import DenoiseNet2, UDenoiseNet, UDenoiseNetSmall
    from topaz.filters import AffineDenoise

    net = {
        "unet": lambda: UDenoiseNet(base_width=11, top_width=5),
        "unet-small": lambda: UDenoiseNetSmall(width=11, top_width=5),
        "fcnn": lambda: DenoiseNet2(64, width=11),
        "affine": lambda: AffineDenoise(max_size=31),
    }[model]()
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as exc:  # a corrupt or mismatched file
        raise BadInputError(f"cannot load the pretrained Topaz weights ({exc})", str(path)) from exc
    return net.eval()


def normalise_per_image(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images − mean_i) / std_i per image (N, H, W), and the means and stds (N, 1, 1); std 0 → 1."""
    mu = images.mean(dim=(-2, -1), keepdim=True)
    sd = images.std(dim=(-2, -1), keepdim=True)
    sd = torch.where(sd > 0, sd, torch.ones_like(sd))
    return (images - mu) / sd, mu, sd


@torch.no_grad()
def denoise_topaz(images: np.ndarray, model: str = "unet", *, batch: int = TOPAZ_BATCH,
                  device: str | torch.device = "cpu") -> np.ndarray:
    """Denoise images (N, H, W) with a pretrained Topaz network, each image normalised on its own."""
    net = load_topaz(model).to(device)
    x = torch.as_tensor(np.ascontiguousarray(images, dtype=np.float32))
    if x.ndim == 2:
        x = x[None]
    h, w = x.shape[-2:]
    # the U-Nets pool five times: reflect-pad small or odd-sized boxes to a multiple of 32 (≥ 64 px)
    ph, pw = (max(MIN_TOPAZ_SIZE, -(-n // 32) * 32) - n for n in (h, w))
    out = np.empty(tuple(x.shape), dtype=np.float32)
    for start in range(0, len(x), max(1, int(batch))):
        xb, mu, sd = normalise_per_image(x[start:start + batch].to(device))
        if ph or pw:
            xb = _reflect_pad(xb, ph, pw)
        yb = net(xb[:, None])[:, 0, ph // 2:ph // 2 + h, pw // 2:pw // 2 + w]
        out[start:start + len(xb)] = (yb * sd + mu).cpu().numpy()
    return out


def _reflect_pad(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """Pad (N, H, W) by ``ph`` rows (``ph // 2`` on top) and ``pw`` columns (``pw // 2`` on the left)
    with mirror images, in rounds when the padding exceeds the image (reflection needs pad < size)."""
    top, bottom, left, right = ph // 2, ph - ph // 2, pw // 2, pw - pw // 2
    while top or bottom or left or right:
        h, w = x.shape[-2:]
        t, b, lft, r = (min(v, n - 1) for v, n in ((top, h), (bottom, h), (left, w), (right, w)))
        x = torch.nn.functional.pad(x[:, None], [lft, r, t, b], mode="reflect")[:, 0]
        top, bottom, left, right = top - t, bottom - b, left - lft, right - r
    return x


def lowpass(images: np.ndarray, apix: float, resolution: float) -> np.ndarray:
    """Gaussian low-pass of images (N, H, W): amplitude ½ at 1/``resolution`` (Å), ``apix`` Å/px."""
    if not resolution > 0 or not apix > 0:
        raise ValueError(f"resolution and pixel size must be positive, got {resolution} Å and {apix} Å/px")
    x = torch.as_tensor(np.ascontiguousarray(images, dtype=np.float32))
    h, w = x.shape[-2:]
    fy = torch.fft.fftfreq(h) / apix
    fx = torch.fft.rfftfreq(w) / apix
    s2 = fy[:, None] ** 2 + fx[None, :] ** 2
    sigma2 = (1.0 / resolution) ** 2 / (2.0 * np.log(2.0))  # exp(−f0² / 2σ²) = ½ at f0 = 1/resolution
    filt = torch.exp(-s2 / (2.0 * sigma2))
    with torch.no_grad():
        out = torch.fft.irfft2(torch.fft.rfft2(x) * filt, s=(h, w))
    return out.numpy().astype(np.float32, copy=False)


def denoise(images: np.ndarray, method: str = "unet", *, apix: float | None = None,
            resolution: float | None = None, device: str = "cpu") -> np.ndarray:
    """Denoise a batch (N, H, W): a Topaz network (``unet``, ``unet-small``, ``fcnn``, ``affine``) or ``lowpass``.

    ``lowpass`` needs ``apix`` (Å/px); ``resolution`` (Å) defaults to 6 pixels.
    """
    if method == "lowpass":
        if apix is None:
            raise ValueError("lowpass denoising needs the pixel size (Å/px)")
        return lowpass(images, apix, resolution if resolution is not None else DEFAULT_LOWPASS_PX * apix)
    return denoise_topaz(images, method, device=device)


@dataclass
class Denoise(Op):
    """Chainable :func:`denoise` (``method`` a Topaz model name or ``lowpass``; ``resolution`` Å for lowpass)."""

    method: DenoiseMethod = "unet"
    resolution: float | None = None
    device: str = "cpu"
    step = "denoise"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method != "lowpass" and self.method not in TOPAZ_MODELS:
            raise ValueError(f"unknown denoiser {self.method!r}; choose lowpass or one of {', '.join(TOPAZ_MODELS)}")
        if self.resolution is not None and not self.resolution > 0:
            raise ValueError(f"resolution must be a positive number of Å, got {self.resolution}")

    def check(self, source) -> None:
        if self.method != "lowpass":
            topaz_weights_path(self.method)  # missing package or weights: one line before any work

    def apply(self, images: np.ndarray, ctx: BatchContext) -> np.ndarray:
        return denoise(images, self.method, apix=ctx.apix, resolution=self.resolution, device=self.device)
