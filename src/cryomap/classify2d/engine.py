"""One expectation–maximisation pass of reference-free 2D classification, vectorised in torch.

The model (RELION's and cryoSPARC's): a particle's Fourier transform is
``X = CTF · T_t R_ψ A_k + noise``, the noise Gaussian with a variance ``σ²(ρ)`` per ring. For a
batch of particles :meth:`Aligner.expectation` evaluates the log-likelihood of every class ``k``
× every in-plane rotation ψ (``n_psi`` of them, by FFT along the ring angle) × every translation
``t`` of the search disc, and turns it into posteriors (soft assignments; ``beta`` < 1 flattens
them, for annealing). :meth:`Aligner.accumulate` adds the particles, rotated and shifted back and
weighted by the posteriors, to the sums of a CTF-weighted (Wiener) average,
``A_k = Σ w · CTF · X / σ² ÷ (Σ w · CTF² / σ² + 1 / τ²_k)``, solved by :meth:`Accumulator.solve`.

Everything lives on polar Fourier grids (:mod:`cryomap.classify2d.polar`); the cost per particle
is ``T × K × n_rings × n_psi`` complex multiply–adds, done as one batched matrix product.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cryomap.classify2d.polar import PolarGrid, edge_ring, mask_images, soft_circular_mask, translation_grid


@dataclass
class Batch:
    """Particles prepared for alignment: polar spectra and CTFs at the working sampling."""

    rows: np.ndarray  # (b,) source rows
    x: torch.Tensor  # (b, n_rho, n_theta) complex: masked particle spectra
    ctf: torch.Tensor | None  # (b, n_rho, n_theta) real, or None (no CTF model)
    power: torch.Tensor  # (b, n_rho): Σ_θ |x|², for the noise estimate

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class References:
    """Class averages ready for the E-step: kept angular spectra of A and of |A|² (K, n_rho, n_psi)."""

    images: torch.Tensor  # (K, box, box) real, masked
    am: torch.Tensor
    a2m: torch.Tensor

    @property
    def k(self) -> int:
        return int(self.images.shape[0])


class Accumulator:
    """Sums of one M-step: numerator and CTF² denominator per class (angular frequencies), soft counts."""

    def __init__(self, grid: PolarGrid, k: int) -> None:
        self.grid = grid
        m = len(grid.kept) if grid.n_psi < grid.n_theta else grid.n_theta
        self.num = torch.zeros((k, grid.n_rho, m), dtype=torch.complex64)
        self.den = torch.zeros((k, grid.n_rho, m), dtype=torch.complex64)
        self.counts = torch.zeros(k, dtype=torch.float64)

    def solve(self, inv_tau2: torch.Tensor | float) -> torch.Tensor:
        """Wiener class averages (K, n_rho, n_theta) polar: numerator ÷ (denominator + 1/τ²(k, ρ))."""
        num = self.grid.angular_ifft(self.num)
        den = self.grid.angular_ifft(self.den).real.clamp_min(0.0)
        reg = torch.as_tensor(inv_tau2, dtype=torch.float32)
        if reg.ndim == 2:
            reg = reg[:, :, None]
        return num / (den + reg)

    def ctf_weight(self) -> torch.Tensor:
        """Ring mean of the CTF² sums (K, n_rho): how much data each class has at each frequency."""
        return self.grid.angular_ifft(self.den).real.mean(-1)


@dataclass
class Expectation:
    """The E-step of a batch: posteriors over each particle's candidate translations × classes × rotations."""

    post: torch.Tensor  # (b, C, K, n_psi)
    best: torch.Tensor  # (b,) best log-likelihood (up to a constant per particle)
    pm: torch.Tensor  # (b, C, n_rho, n_psi) back-shifted, whitened, CTF-weighted angular spectra
    wm: torch.Tensor  # (b, n_rho, n_psi) angular spectra of CTF²/σ²
    cand: torch.Tensor  # (b, C) translation indices (into Aligner.shifts) of the candidates

    def map_pose(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(candidate row, class, rotation index, translation index, posterior) of each particle's best pose."""
        b, c, k, m = self.post.shape
        pmax, arg = self.post.reshape(b, -1).max(dim=1)
        ci, ki, ji = arg // (k * m), (arg // m) % k, arg % m
        return ci, ki, ji, self.cand[torch.arange(b), ci], pmax


class Aligner:
    """The search of one working sampling: polar grid, translations, mask, priors.

    Translations are searched coarse to fine when the disc holds more than nine of them: first on
    a grid of twice the step using the rings up to half the band (a resolution that a 2-step grid
    samples fully), then on the 3 × 3 fine neighbourhood of each particle's most probable coarse
    translation (``n_coarse`` of them) with every ring — the fine posteriors are normalised over
    those candidates. RELION's adaptive oversampling follows the same idea.
    """

    def __init__(self, box: int, apix: float, *, r_max: float, n_psi: int, offset_px: float,
                 offset_step_px: float = 1.0, mask_radius_px: float, offset_sigma_px: float | None = None,
                 n_coarse: int = 1) -> None:
        self.box, self.apix = int(box), float(apix)
        self.grid = PolarGrid(self.box, r_max, n_psi)
        self.shifts = translation_grid(offset_px, offset_step_px)
        self.phases = self.grid.shift_phases(self.shifts)
        self.mask = soft_circular_mask(self.box, mask_radius_px)
        self.ring = edge_ring(self.box, mask_radius_px, 0.1 * mask_radius_px)
        sigma = offset_sigma_px if offset_sigma_px else max(offset_px, 1.0)
        self.log_prior_t = (-(self.shifts**2).sum(-1) / (2 * sigma**2)).to(torch.float32)
        self.psi_deg = self.grid.psi_degrees()
        self.scale = (self.grid.sample_weight / self.grid.n_theta).to(torch.float32)  # quadrature ÷ Parseval
        self.n_coarse = int(n_coarse)
        self._coarse_tables(offset_step_px)

    def _coarse_tables(self, step: float) -> None:
        """Coarse translations (even multiples of the step) and each one's 3 × 3 fine neighbourhood."""
        idx = {(round(float(x) / step), round(float(y) / step)): i for i, (x, y) in enumerate(self.shifts.tolist())}
        self.coarse = None
        if len(idx) <= 9:
            return
        coarse = [i for (ix, iy), i in idx.items() if ix % 2 == 0 and iy % 2 == 0]
        nb = torch.full((len(self.shifts), 9), -1, dtype=torch.long)
        for (ix, iy), i in idx.items():
            j = 0
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    nb[i, j] = idx.get((ix + dx, iy + dy), -1)
                    j += 1
        self.coarse = torch.as_tensor(sorted(coarse), dtype=torch.long)
        self.neighbours = nb
        self.coarse_rings = max(2, self.grid.n_rho // 2)

    # ------------------------------------------------------------------ data
    def prepare(self, rows: np.ndarray, images: np.ndarray, ctf=None, *, flipped: bool = False) -> Batch:
        """Mask working-box images (b, box, box) and sample their spectra (and CTFs) on the polar grid."""
        imgs = mask_images(torch.as_tensor(np.ascontiguousarray(images, dtype=np.float32)), self.mask, self.ring)
        x = self.grid.to_polar(imgs)
        c = None
        if ctf is not None:
            c = self.grid.ctf_polar(ctf, self.apix)
            if flipped:
                c = c.abs()
        return Batch(np.asarray(rows), x, c, (x.real**2 + x.imag**2).sum(-1))

    def references(self, images: torch.Tensor) -> References:
        """Mask class averages (K, box, box) and take their kept angular spectra (and those of |A|²)."""
        imgs = mask_images(images.to(torch.float32), self.mask, self.ring)
        am = self.grid.angular_fft(self.grid.to_polar(imgs))
        a = self.grid.angular_ifft(am)
        a2m = self.grid.angular_fft((a.real**2 + a.imag**2).to(torch.complex64))
        return References(imgs, am, a2m)

    # ------------------------------------------------------------------ E-step
    def _weighted(self, batch: Batch, sigma2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CTF · X / σ² (b, n_rho, n_theta) and the angular spectra of CTF²/σ² (b, n_rho, n_psi)."""
        inv = (1.0 / sigma2).to(torch.float32)[None, :, None]
        y = batch.x * inv if batch.ctf is None else batch.x * (batch.ctf * inv)
        w = inv.expand(len(batch), -1, self.grid.n_theta) if batch.ctf is None else batch.ctf**2 * inv
        return y, self.grid.angular_fft(w.to(torch.complex64))

    def spectra_at(self, y: torch.Tensor, cand: torch.Tensor, rings: int | None = None) -> torch.Tensor:
        """Back-shifted angular spectra (b, C, rings, n_psi) of ``y`` at translation indices ``cand`` (b, C)."""
        r = self.grid.n_rho if rings is None else rings
        ph = self.phases[cand.clamp_min(0), :r]  # (b, C, r, n_theta)
        return self.grid.angular_fft(y[:, None, :r] * ph)

    def _log_likelihood(self, pm: torch.Tensor, wm: torch.Tensor, refs: References, log_pi: torch.Tensor,
                        cand: torch.Tensor) -> torch.Tensor:
        """log-likelihood + log priors (b, C, K, n_psi) of candidates; invalid candidates (index −1) get −inf."""
        b, c, r, m = pm.shape
        k = refs.k
        aq = (refs.am[:, :r] * self.scale[None, :r, None]).permute(2, 1, 0)  # (m, r, K)
        s = torch.matmul(pm.conj().permute(3, 0, 1, 2).reshape(m, b * c, r), aq)  # (m, bC, K)
        score = torch.fft.fft(s.permute(1, 2, 0), dim=-1).real.reshape(b, c, k, m)
        a2q = (refs.a2m[:, :r] * self.scale[None, :r, None]).permute(2, 1, 0)
        nn = torch.matmul(wm[:, :r].conj().permute(2, 0, 1), a2q)  # (m, b, K)
        norm = torch.fft.fft(nn.permute(1, 2, 0), dim=-1).real  # (b, K, n_psi)
        prior_t = torch.where(cand >= 0, self.log_prior_t[cand.clamp_min(0)], torch.tensor(-torch.inf))
        return score - 0.5 * norm[:, None] + log_pi.to(torch.float32)[None, None, :, None] + prior_t[:, :, None, None]

    def expectation(self, batch: Batch, refs: References, sigma2: torch.Tensor, log_pi: torch.Tensor,
                    beta: float = 1.0) -> Expectation:
        """Posteriors over translation × class × rotation (coarse-to-fine translations, see the class doc).

        The log-likelihood is ``−½ Σ |X − CTF·A|² / σ²`` over the polar samples, up to a constant
        per particle; ``beta`` < 1 tempers it (annealing).
        """
        y, wm = self._weighted(batch, sigma2)
        b = len(batch)
        if self.coarse is None:
            cand = torch.arange(len(self.shifts))[None].expand(b, -1)
        else:
            cc = self.coarse[None].expand(b, -1)
            ll_c = self._log_likelihood(self.spectra_at(y, cc, self.coarse_rings), wm, refs, log_pi, cc)
            marg = torch.logsumexp(beta * ll_c.reshape(b, cc.shape[1], -1), dim=-1)  # (b, T_coarse)
            top = torch.topk(marg, min(self.n_coarse, marg.shape[1]), dim=1).indices
            cand = self.neighbours[self.coarse[top]].reshape(b, -1)  # (b, 9·n_coarse), −1 outside the disc
            if self.n_coarse > 1:  # overlapping neighbourhoods: drop repeats
                srt = torch.sort(cand, dim=1).values
                dup = torch.zeros_like(srt, dtype=torch.bool)
                dup[:, 1:] = srt[:, 1:] == srt[:, :-1]
                cand = torch.where(dup, torch.full_like(srt, -1), srt)
        pm = self.spectra_at(y, cand)
        ll = self._log_likelihood(pm, wm, refs, log_pi, cand)
        flat = ll.reshape(b, -1)
        best = flat.max(dim=1).values
        post = torch.softmax(beta * (flat - best[:, None]), dim=1).reshape(ll.shape)
        return Expectation(post, best, pm, wm, cand)

    def spectra(self, batch: Batch, sigma2: torch.Tensor, t_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Angular spectra at one given translation per particle: pm (b, 1, n_rho, n_psi), wm (b, n_rho, n_psi)."""
        y, wm = self._weighted(batch, sigma2)
        return self.spectra_at(y, t_idx.reshape(-1, 1)), wm

    # ------------------------------------------------------------------ M-step
    @staticmethod
    def accumulate(acc: Accumulator, pm: torch.Tensor, wm: torch.Tensor, post: torch.Tensor) -> None:
        """Add a batch's back-rotated, back-shifted, posterior-weighted spectra to ``acc``.

        Only candidate rows holding posterior mass enter the product (most particles put theirs on
        a few translations), so the M-step costs far less than the E-step.
        """
        b, t, r, m = pm.shape
        k = post.shape[2]
        mass = post.sum(dim=(2, 3)).reshape(-1)
        keep = torch.nonzero(mass > 1e-4 * mass.max().clamp_min(1e-30)).squeeze(1)
        p_rows = pm.reshape(b * t, r, m)[keep]  # (n, r, m)
        w_rows = torch.fft.fft(post.reshape(b * t, k, m)[keep].to(torch.complex64), dim=-1).conj()  # (n, K, m)
        acc.num += torch.matmul(p_rows.permute(2, 1, 0), w_rows.permute(2, 0, 1)).permute(2, 1, 0)
        wt = torch.fft.fft(post.sum(1).to(torch.complex64), dim=-1).conj()  # (b, K, m)
        acc.den += torch.matmul(wm.permute(2, 1, 0), wt.permute(2, 0, 1)).permute(2, 1, 0)
        acc.counts += post.sum(dim=(1, 3)).sum(0).to(torch.float64)

    def map_terms(self, pm: torch.Tensor, wm: torch.Tensor, refs: References, sigma2: torch.Tensor,
                  row_idx: torch.Tensor, k_idx: torch.Tensor, psi_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per ring at a pose (candidate row, class, rotation) per particle, un-whitened θ-sums (b, n_rho):
        ⟨X, CTF·A⟩ and |CTF·A|²."""
        b = pm.shape[0]
        rot = self.grid.rotation_phases(torch.as_tensor(self.psi_deg)[psi_idx])  # (b, m)
        p = pm[torch.arange(b), row_idx]  # (b, r, m)
        s2 = sigma2.to(torch.float32)[None, :] / self.grid.n_theta
        cross = (p.conj() * refs.am[k_idx] * rot[:, None, :]).sum(-1).real * s2
        norm = (wm.conj() * refs.a2m[k_idx] * rot[:, None, :]).sum(-1).real * s2
        return cross, norm

    def residual_power(self, e: Expectation, refs: References, sigma2: torch.Tensor, batch: Batch,
                       row_idx: torch.Tensor, k_idx: torch.Tensor, psi_idx: torch.Tensor) -> torch.Tensor:
        """Σ_θ |X − CTF·A|² per ring (b, n_rho) at each particle's best pose (un-whitened), for the noise estimate."""
        cross, norm = self.map_terms(e.pm, e.wm, refs, sigma2, row_idx, k_idx, psi_idx)
        return batch.power - 2 * cross + norm


def one_hot_posterior(b: int, t: int, k: int, m: int, k_idx: torch.Tensor, psi_idx: torch.Tensor,
                      t_idx: torch.Tensor | None = None) -> torch.Tensor:
    """A posterior (b, T, K, n_psi) that puts each particle at one pose (used to start and to re-average)."""
    post = torch.zeros((b, t, k, m), dtype=torch.float32)
    ti = torch.zeros(b, dtype=torch.long) if t_idx is None else t_idx
    post[torch.arange(b), ti, k_idx, psi_idx] = 1.0
    return post


def ring_power(polar: torch.Tensor) -> torch.Tensor:
    """Mean |A|² per ring (K, n_rho) of polar spectra (K, n_rho, n_theta)."""
    return (polar.real**2 + polar.imag**2).mean(-1)


def working_box(box: int, requested: int | None) -> int:
    """The even working box: ``requested`` (default 64) capped at the particle box."""
    target = 64 if requested is None else int(requested)
    w = min(int(box), max(16, target))
    return w - (w % 2)
