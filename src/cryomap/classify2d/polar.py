"""Polar Fourier machinery for in-plane alignment: every reference × every rotation at once.

An image's 2D Fourier transform is sampled on rings (radius ``ρ`` in Fourier pixels of the
working box, every ``d_rho`` = ½ pixel, so the way back to a Cartesian grid is accurate) at
``n_theta`` angles. A rotation of the image by ψ is a cyclic shift along θ, so after an FFT
along θ the correlation with a reference at *all* rotations is one product per angular
frequency ``m`` followed by one inverse FFT — the classical rotational-correlation trick, here
batched over particles × translations × references as one complex matrix product per ``m``
(the sum over rings is the inner dimension). Only ``n_psi`` angular frequencies are kept (``|m| <
n_psi / 2``): the in-plane search then has ``n_psi`` rotations of ``360 / n_psi`` degrees, and
angular detail beyond that is dropped, as any ``psi_step`` search drops it.

Conventions (x the fast axis, image centre at pixel ``box // 2``):

* pose (ψ, t): ``particle(x) = (R(ψ) A)(x − t)``, where ``(R(ψ) A)(x) = A(R(−ψ) x)`` turns the
  reference counter-clockwise by ψ about the centre (R the usual rotation matrix of (x, y)),
  and ``t`` (px) moves the content to ``+t``. RELION's ``rlnAnglePsi`` is ``−ψ`` and its
  ``rlnOriginX/YAngst`` is ``−t · apix`` (checked against the projector in the tests).
* Fourier transforms are taken about the image centre (``ifftshift`` first) with torch's
  unnormalised FFT; ring samples come from a 2×-zero-padded transform by bilinear interpolation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from cryomap.core.fourier import pad_centred


def soft_circular_mask(box: int, radius_px: float, soft_px: float = 2.0) -> torch.Tensor:
    """(box, box) mask: 1 inside ``radius_px`` of pixel box//2, a raised-cosine edge ``soft_px`` wide, 0 beyond."""
    c = box // 2
    yy, xx = torch.meshgrid(torch.arange(box, dtype=torch.float32), torch.arange(box, dtype=torch.float32),
                            indexing="ij")
    r = torch.sqrt((xx - c) ** 2 + (yy - c) ** 2)
    edge = torch.clamp((r - radius_px) / max(soft_px, 1e-6), 0.0, 1.0)
    return 0.5 + 0.5 * torch.cos(math.pi * edge)


def edge_ring(box: int, radius_px: float, width_px: float) -> torch.Tensor:
    """(box, box) boolean: pixels within ``width_px`` inside the circle of ``radius_px`` about box//2."""
    c = box // 2
    yy, xx = torch.meshgrid(torch.arange(box, dtype=torch.float32), torch.arange(box, dtype=torch.float32),
                            indexing="ij")
    r = torch.sqrt((xx - c) ** 2 + (yy - c) ** 2)
    return (r <= radius_px) & (r >= radius_px - max(width_px, 1.5))


def mask_images(images: torch.Tensor, mask: torch.Tensor, ring: torch.Tensor) -> torch.Tensor:
    """Subtract each image's mean over ``ring`` (the background at the mask edge), then multiply by ``mask``.

    Without the subtraction a background level would leave a sharp circle at the mask edge,
    shared by every image — it biases alignment and makes half-set averages agree at every frequency.
    """
    bg = images[..., ring].mean(-1)
    return (images - bg[..., None, None]) * mask


def _nice_size(n: int) -> int:
    """Smallest even integer ≥ n whose prime factors are 2, 3 and 5 (fast FFT lengths)."""
    k = max(2, int(n) + (int(n) % 2))
    while True:
        m = k
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return k
        k += 2


@dataclass
class PolarGrid:
    """Ring × angle sampling of a ``box``-pixel image's Fourier transform, up to ``r_max`` Fourier px."""

    box: int
    r_max: float
    n_psi: int
    d_rho: float = 0.5
    n_theta: int = field(init=False)
    n_rho: int = field(init=False)

    def __post_init__(self) -> None:
        if self.box % 2:
            raise ValueError(f"the working box must be even, got {self.box}")
        self.r_max = float(min(self.r_max, self.box / 2 - 1))
        self.n_rho = int(math.floor(self.r_max / self.d_rho)) + 1
        self.n_psi = int(self.n_psi) + int(self.n_psi) % 2
        # dense enough that the outer ring is sampled at ≤ 1 Fourier px, and at least n_psi
        self.n_theta = _nice_size(max(self.n_psi, math.ceil(2 * math.pi * self.r_max)))
        self.rho = torch.arange(self.n_rho, dtype=torch.float64) * self.d_rho
        self.theta = torch.arange(self.n_theta, dtype=torch.float64) * (2 * math.pi / self.n_theta)
        # quadrature weight of one polar sample (ring area / n_theta) so that Σ_polar ≈ Σ_Cartesian
        area = 2 * math.pi * self.rho * self.d_rho
        area[0] = math.pi * (self.d_rho / 2) ** 2
        self.sample_weight = (area / self.n_theta).to(torch.float32)
        half = self.n_psi // 2
        self.kept = torch.cat([torch.arange(0, half), torch.arange(self.n_theta - half, self.n_theta)])
        self.m = torch.cat([torch.arange(0, half), torch.arange(-half, 0)]).to(torch.float64)
        self._build_sampling()
        self._build_cartesian()

    # ------------------------------------------------------------------ sampling tables
    def _build_sampling(self) -> None:
        """Bilinear taps into the fftshift-ed 2×-padded full transform (P = 2·box) for every polar sample."""
        p = 2 * self.box
        r, t = torch.meshgrid(self.rho, self.theta, indexing="ij")
        cx = p / 2 + 2 * r * torch.cos(t)
        cy = p / 2 + 2 * r * torch.sin(t)
        x0, y0 = torch.floor(cx), torch.floor(cy)
        fx, fy = cx - x0, cy - y0
        taps, weights = [], []
        for dy, wy in ((0, 1 - fy), (1, fy)):
            for dx, wx in ((0, 1 - fx), (1, fx)):
                xi = (x0.long() + dx) % p
                yi = (y0.long() + dy) % p
                taps.append(yi * p + xi)
                weights.append(wy * wx)
        self.taps = torch.stack(taps, -1).reshape(-1, 4)  # (n_rho·n_theta, 4) into the flattened P×P grid
        self.tap_weights = torch.stack(weights, -1).reshape(-1, 4).to(torch.float32)

    def _build_cartesian(self) -> None:
        """Bilinear taps into the polar grid for every point of the box's rfft grid (polar → Cartesian)."""
        d = self.box
        fy = torch.fft.fftfreq(d, dtype=torch.float64) * d
        fx = torch.fft.rfftfreq(d, dtype=torch.float64) * d
        yy, xx = torch.meshgrid(fy, fx, indexing="ij")
        rho = torch.sqrt(xx**2 + yy**2)
        theta = torch.remainder(torch.atan2(yy, xx), 2 * math.pi)
        u = rho / self.d_rho
        v = theta / (2 * math.pi / self.n_theta)
        u0, v0 = torch.floor(u), torch.floor(v)
        fu, fv = u - u0, v - v0
        inside = (rho <= self.r_max).reshape(-1)
        taps, weights = [], []
        for du, wu in ((0, 1 - fu), (1, fu)):
            for dv, wv in ((0, 1 - fv), (1, fv)):
                ui = torch.clamp(u0.long() + du, 0, self.n_rho - 1)
                vi = (v0.long() + dv) % self.n_theta
                w = wu * wv * ((u0 + du) <= self.n_rho - 1)
                taps.append(ui * self.n_theta + vi)
                weights.append(w)
        w = torch.stack(weights, -1).reshape(-1, 4)
        w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)  # rings past r_max: renormalise onto the last ring
        w[~inside] = 0.0
        self.cart_taps = torch.stack(taps, -1).reshape(-1, 4)
        self.cart_weights = w.to(torch.float32)

    # ------------------------------------------------------------------ transforms
    def centred_fft_padded(self, images: torch.Tensor) -> torch.Tensor:
        """Full 2D FFT (b, P, P) of images (b, box, box) zero-padded to P = 2·box, about the centre, DC at P/2."""
        p = 2 * self.box
        padded = pad_centred(images, p)
        f = torch.fft.fft2(torch.fft.ifftshift(padded, dim=(-2, -1)))
        return torch.fft.fftshift(f, dim=(-2, -1))

    def sample(self, grid: torch.Tensor) -> torch.Tensor:
        """Polar samples (b, n_rho, n_theta) of fftshift-ed P×P grids (b, P, P) (complex or real)."""
        flat = grid.reshape(grid.shape[0], -1)
        vals = flat[:, self.taps.reshape(-1)].reshape(grid.shape[0], -1, 4)
        out = (vals * self.tap_weights.to(vals.dtype if not vals.is_complex() else torch.float32)).sum(-1)
        return out.reshape(grid.shape[0], self.n_rho, self.n_theta)

    def to_polar(self, images: torch.Tensor) -> torch.Tensor:
        """Polar Fourier samples (b, n_rho, n_theta) complex64 of real images (b, box, box)."""
        return self.sample(self.centred_fft_padded(images.to(torch.float32))).to(torch.complex64)

    def ctf_polar(self, ctf, apix: float) -> torch.Tensor:
        """CTF (b, n_rho, n_theta) at the polar samples, from :func:`cryomap.core.ctf.ctf_images` on the P×P grid."""
        from cryomap.core.ctf import ctf_images

        p = 2 * self.box
        c = ctf_images(ctf, apix, (p, p), rfft=False)
        return self.sample(torch.fft.fftshift(c, dim=(-2, -1)).to(torch.float32))

    def angular_fft(self, x: torch.Tensor) -> torch.Tensor:
        """The kept angular frequencies (…, n_psi) of polar samples (…, n_theta), FFT order (m = 0, 1, …, −1)."""
        return torch.fft.fft(x, dim=-1)[..., self.kept]

    def angular_ifft(self, xm: torch.Tensor) -> torch.Tensor:
        """Polar samples (…, n_theta) from kept angular frequencies (…, n_psi) (zero beyond them)."""
        full = xm.new_zeros(xm.shape[:-1] + (self.n_theta,))
        full[..., self.kept] = xm
        return torch.fft.ifft(full, dim=-1)

    def to_image(self, polar: torch.Tensor) -> torch.Tensor:
        """Real images (k, box, box) from polar Fourier samples (k, n_rho, n_theta) (bilinear, zero past r_max)."""
        k = polar.shape[0]
        flat = polar.reshape(k, -1)
        vals = flat[:, self.cart_taps.reshape(-1)].reshape(k, -1, 4)
        cart = (vals * self.cart_weights).sum(-1).reshape(k, self.box, self.box // 2 + 1)
        img = torch.fft.irfft2(cart, s=(self.box, self.box))
        return torch.fft.fftshift(img, dim=(-2, -1))

    # ------------------------------------------------------------------ geometry
    def shift_phases(self, shifts_px: torch.Tensor) -> torch.Tensor:
        """Phases (T, n_rho, n_theta) that move content by ``−t`` (the back-shift) for shifts (T, 2) = (tx, ty) px."""
        r, t = torch.meshgrid(self.rho, self.theta, indexing="ij")
        fx, fy = r * torch.cos(t) / self.box, r * torch.sin(t) / self.box
        s = shifts_px.to(torch.float64)
        arg = 2 * math.pi * (s[:, 0, None, None] * fx[None] + s[:, 1, None, None] * fy[None])
        return torch.polar(torch.ones_like(arg), arg).to(torch.complex64)

    def psi_degrees(self) -> np.ndarray:
        """The in-plane rotations searched: ψ_j = j · 360 / n_psi degrees (engine convention)."""
        return np.arange(self.n_psi) * (360.0 / self.n_psi)

    def rotation_phases(self, psi_deg: torch.Tensor) -> torch.Tensor:
        """``exp(−i m ψ)`` (n, n_psi) for the kept frequencies: multiplying a reference's angular
        spectrum by it rotates the reference by ψ."""
        psi = torch.as_tensor(psi_deg, dtype=torch.float64) * (math.pi / 180.0)
        arg = -psi[:, None] * self.m[None, :]
        return torch.polar(torch.ones_like(arg), arg).to(torch.complex64)


def translation_grid(radius_px: float, step_px: float = 1.0) -> torch.Tensor:
    """Shifts (T, 2) = (tx, ty) px on a square grid of ``step_px`` inside a disc of ``radius_px`` (0 first)."""
    n = int(math.floor(radius_px / step_px + 1e-9))
    vals = torch.arange(-n, n + 1, dtype=torch.float64) * step_px
    ty, tx = torch.meshgrid(vals, vals, indexing="ij")
    pts = torch.stack([tx.reshape(-1), ty.reshape(-1)], -1)
    keep = (pts**2).sum(-1) <= radius_px**2 + 1e-9
    pts = pts[keep]
    order = torch.argsort((pts**2).sum(-1), stable=True)
    return pts[order].to(torch.float32)
