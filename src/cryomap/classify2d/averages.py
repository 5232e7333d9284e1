"""Class averages at the full box from each particle's pose: Wiener sums per class and per half set.

:class:`FullBoxAverager` puts every particle (its spectrum multiplied by its own CTF, or as it
is) back into its class's frame — rotated by −ψ, shifted by −t, exactly, on the polar grid of the
full box with every angular frequency kept — and adds it to that class's sums and to the sums of
its half set. :meth:`FullBoxAverager.solve` gives the CTF-weighted averages
``Σ CTF·X ÷ (Σ CTF² + σ²/τ²)`` (τ² from a first solve, ``tau2_fudge`` as RELION's), for the
whole class and for each half. :meth:`FullBoxAverager.refine` polishes each particle's shift
and rotation locally against full-box averages (the working box of the search is coarser).
The same code re-averages classes imported from cryoSPARC or RELION, from their poses.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from cryomap.classify2d.polar import PolarGrid, _nice_size, edge_ring, mask_images, soft_circular_mask
from cryomap.particles.source import ParticleSource


class FullBoxAverager:
    """Sums of ``k`` classes × 2 half sets at the particles' own box (see the module docstring)."""

    def __init__(self, source: ParticleSource, k: int, mask_diameter_A: float, *, use_ctf: bool,
                 chunk: int = 16) -> None:
        self.source = source
        self.k = int(k)
        self.box = source.box - source.box % 2
        self.apix = source.pixel_size
        r_max = self.box / 2 - 1
        n = _nice_size(math.ceil(2 * math.pi * r_max))
        self.grid = PolarGrid(self.box, r_max, n)
        radius = mask_diameter_A / 2 / self.apix
        self.mask = soft_circular_mask(self.box, radius, soft_px=max(2.0, self.box / 32))
        self.ring = edge_ring(self.box, radius, 0.1 * radius)
        # half-set averages are compared (FRC) inside a wide, smooth window: a sharp mask shared by
        # both halves would make them agree at every frequency
        self.frc_window = soft_circular_mask(self.box, radius, soft_px=max(4.0, self.box / 8))
        self.use_ctf = bool(use_ctf)
        self.flipped = bool("rlnCtfDataArePhaseFlipped" in source.table
                            and (source.table["rlnCtfDataArePhaseFlipped"] == 1).all())
        self.chunk = int(chunk)
        m = len(self.grid.kept)
        self.num = torch.zeros((2 * self.k, self.grid.n_rho, m), dtype=torch.complex64)
        self.den = torch.zeros((2 * self.k, self.grid.n_rho, m), dtype=torch.complex64)
        self.counts = np.zeros((2, self.k), np.int64)
        self.power = torch.zeros(self.grid.n_rho, dtype=torch.float64)
        self.n_seen = 0

    # ------------------------------------------------------------------ reading
    def _batches(self, rows: np.ndarray, masked: bool = True):
        """(rows, polar spectra, CTFs) chunk by chunk; background at the mask edge removed, masked if ``masked``."""
        ones = torch.ones_like(self.mask)
        for start in range(0, len(rows), self.chunk):
            sel = rows[start:start + self.chunk]
            imgs = self.source.images(sel)
            if imgs.shape[-1] != self.box:  # an odd box loses its last row and column
                imgs = imgs[:, :self.box, :self.box]
            x = self.grid.to_polar(mask_images(torch.as_tensor(imgs), self.mask if masked else ones, self.ring))
            c = None
            if self.use_ctf:
                c = self.grid.ctf_polar(self.source.ctf(sel), self.apix)
                if self.flipped:
                    c = c.abs()
            yield sel, x, c

    def _spectra(self, x: torch.Tensor, c: torch.Tensor | None, shifts_px: torch.Tensor):
        """Back-shifted CTF·X (b, n_rho, m) and CTF² (b, n_rho, m) angular spectra."""
        ph = self.grid.shift_phases(shifts_px.to(torch.float32))  # (b, r, θ): moves content by −t
        y = x * ph if c is None else x * c * ph
        w = torch.ones_like(x.real) if c is None else c**2
        return self.grid.angular_fft(y), self.grid.angular_fft(w.to(torch.complex64))

    # ------------------------------------------------------------------ sums
    def add(self, rows: np.ndarray, classes: np.ndarray, psi_deg: np.ndarray, shifts_px: np.ndarray,
            half: np.ndarray, on_progress: Callable[[int], None] | None = None) -> None:
        """Add particles ``rows`` at their poses: class (0-based, −1 skips), engine ψ (°), shift t (full px), half 0/1."""
        pos = 0
        for sel, x, c in self._batches(np.asarray(rows), masked=False):  # unmasked: see frc_window
            b = len(sel)
            cl = np.asarray(classes[pos:pos + b])
            ok = torch.as_tensor(cl >= 0)
            pm, wm = self._spectra(x, c, torch.as_tensor(np.asarray(shifts_px[pos:pos + b], np.float64)))
            back = self.grid.rotation_phases(torch.as_tensor(psi_deg[pos:pos + b])).conj()  # rotate by −ψ
            slot = torch.as_tensor(np.where(cl >= 0, cl, 0) + self.k * np.asarray(half[pos:pos + b]), dtype=torch.long)
            wgt = ok.to(torch.complex64)[:, None, None] * back[:, None, :]
            self.num.index_add_(0, slot, pm * wgt)
            self.den.index_add_(0, slot, wm * wgt)
            for h in (0, 1):
                sel_h = (np.asarray(half[pos:pos + b]) == h) & (cl >= 0)
                np.add.at(self.counts[h], cl[sel_h], 1)
            self.power += (x.real**2 + x.imag**2).sum(-1).sum(0).to(torch.float64)
            self.n_seen += b
            pos += b
            if on_progress is not None:
                on_progress(b)

    def solve(self, tau2_fudge: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
        """(averages (K, D, D) masked, halves (2, K, D, D) inside the wide FRC window), CTF-weighted."""
        g = self.grid
        sigma2 = (self.power / max(self.n_seen * g.n_theta, 1)).to(torch.float32)  # ≥ noise per sample
        num = g.angular_ifft(self.num)
        den = g.angular_ifft(self.den).real.clamp_min(0.0)
        full_num = num[:self.k] + num[self.k:]
        full_den = den[:self.k] + den[self.k:]
        eps = 1e-3 * full_den.mean(dim=(1, 2), keepdim=True).clamp_min(1e-12)
        first = full_num / (full_den + eps)
        tau2 = (first.real**2 + first.imag**2).mean(-1) * tau2_fudge  # (K, r)
        reg = (sigma2[None] / tau2.clamp_min(1e-12))[:, :, None]
        reg = torch.maximum(reg, eps)
        full = mask_images(g.to_image(full_num / (full_den + reg)), self.mask, self.ring)
        halves = torch.stack([mask_images(g.to_image(num[h * self.k:(h + 1) * self.k] / (den[h * self.k:(h + 1) * self.k] + reg)),
                                          self.frc_window, self.ring) for h in (0, 1)])
        return full.numpy(), halves.numpy()

    # ------------------------------------------------------------------ local refinement
    def refine(self, rows: np.ndarray, classes: np.ndarray, psi_deg: np.ndarray, shifts_px: np.ndarray,
               averages: np.ndarray, *, shift_step_px: float, psi_step_deg: float, rounds: int = 2,
               on_progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Each particle's (ψ, t) polished against its class's full-box average (local 3×3 shifts × 3 rotations, halving)."""
        g = self.grid
        refs = mask_images(torch.as_tensor(averages, dtype=torch.float32), self.mask, self.ring)
        am = g.angular_fft(g.to_polar(refs))
        a = g.angular_ifft(am)
        a2m = g.angular_fft((a.real**2 + a.imag**2).to(torch.complex64))
        sigma2 = (self.power / max(self.n_seen * g.n_theta, 1)).to(torch.float32) if self.n_seen else torch.ones(g.n_rho)
        scale = (g.sample_weight / g.n_theta / sigma2)[None, :, None]
        psi_out = np.asarray(psi_deg, np.float64).copy()
        t_out = np.asarray(shifts_px, np.float64).copy()
        offs = torch.tensor([[dx, dy] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], dtype=torch.float64)
        pos = 0
        for sel, x, c in self._batches(np.asarray(rows)):
            b = len(sel)
            cl = np.asarray(classes[pos:pos + b])
            kk = torch.as_tensor(np.where(cl >= 0, cl, 0), dtype=torch.long)
            y = x if c is None else x * c
            w = torch.ones_like(x.real) if c is None else c**2
            wm = g.angular_fft(w.to(torch.complex64))
            norm_m = (wm.conj() * a2m[kk] * scale).sum(1)  # (b, m)
            ref_m = am[kk] * scale  # (b, r, m)
            step_t, step_p = float(shift_step_px), float(psi_step_deg)
            for _ in range(rounds):
                cand_t = torch.as_tensor(t_out[pos:pos + b])[:, None, :] + step_t * offs[None]  # (b, 9, 2)
                ph = g.shift_phases(cand_t.reshape(-1, 2).to(torch.float32)).reshape(b, 9, g.n_rho, g.n_theta)
                pm = g.angular_fft(y[:, None] * ph)  # (b, 9, r, m)
                s = (pm.conj() * ref_m[:, None]).sum(2)  # (b, 9, m)
                cand_p = torch.as_tensor(psi_out[pos:pos + b])[:, None] + step_p * torch.tensor([-1.0, 0.0, 1.0])[None]
                rot = g.rotation_phases(cand_p.reshape(-1)).reshape(b, 3, -1)  # (b, 3, m)
                score = torch.einsum("bcm,blm->bcl", s, rot).real
                norm = torch.einsum("bm,blm->bl", norm_m, rot).real
                ll = score - 0.5 * norm[:, None, :]
                best = ll.reshape(b, -1).argmax(1)
                ci, li = best // 3, best % 3
                t_out[pos:pos + b] = cand_t[torch.arange(b), ci].numpy()
                psi_out[pos:pos + b] = cand_p[torch.arange(b), li].numpy()
                step_t, step_p = step_t / 2, step_p / 2
            pos += b
            if on_progress is not None:
                on_progress(b)
        return psi_out, t_out
