"""Fit the CTF to an averaged power spectrum: 1D defocus search, then a local 2D refinement (CTFFIND4's plan).

1. **Normaliser**: a smooth curve ``b0(s)`` (exp of a Legendre polynomial fitted to the log of the
   radial average) divides the spectrum, so every frequency has about the same noise.
2. **1D search**: the radial average ``y(s)`` is fitted, for every candidate defocus (and phase
   shift, for phase-plate data) on a grid fine enough that the CTF phase at the high-resolution
   limit moves by at most 0.2 rad between candidates, by ``background(s) + envelope(s) · CTF²(s)``
   (both smooth Legendre polynomials, weighted linear least squares, all candidates at once). The
   score is the share of the variance left by the background alone that the CTF term explains;
   the best candidate is refined by a parabola.
3. **Astigmatism start**: the same search per angular sector (12 of 15°) gives one defocus per
   direction; ``mean + a cos 2θ + b sin 2θ`` fitted to them starts the 2D fit.
4. **2D refinement**: Nelder–Mead on (mean defocus, a, b[, phase shift]) maximising the Pearson
   correlation, over the pixels of the fit band, between the background-subtracted spectrum
   ``W = P / background − 1`` and the model's envelope × CTF² (the envelope shape from the 1D
   fit: a least-squares fit of scale and offset, so a fading envelope does not pull the defocus). After a first pass the background is fitted
   again on the equiphase average (EPA: every pixel binned at the frequency the isotropic CTF
   of the mean defocus has its phase at, so astigmatic rings line up) and the fit repeated.
5. **Quality**: the figure of merit is that 2D correlation; the fit-quality curve is the
   correlation of the EPA and the 1D CTF² between every other CTF zero; the fitted resolution
   (``rlnCtfMaxResolution``) is where that curve first drops below :data:`QUALITY_THRESHOLD`.

Units: defocus Å (positive underfocus, U ≥ V), angles degrees (RELION: from x toward y),
frequencies 1/Å, resolutions Å.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from cryomap.ctf_estimation.model import CtfGrid, Optics, astig_to_uva, uva_to_astig
from cryomap.ctf_estimation.power_spectrum import crop_spectrum, frequency_grid, radial_profile

#: Fit-quality level below which the Thon rings count as no longer fitted (sets rlnCtfMaxResolution).
QUALITY_THRESHOLD = 0.3
#: Figure of merit below which a fit is reported as unreliable.
LOW_FOM = 0.1
#: Largest CTF phase step (radians, at the high-resolution limit) between defocus candidates.
PHASE_STEP = 0.2
N_SECTORS = 12


@dataclass
class FitSettings:
    """What to search: defocus range (Å), fit band (low, high resolution, Å), astigmatism bound (Å, U − V), phase shift."""

    defocus_range: tuple[float, float] = (5000.0, 50000.0)
    resolution: tuple[float, float] = (30.0, 5.0)
    max_astigmatism: float = 3000.0
    phase_shift: bool = False
    phase_shift_range: tuple[float, float] = (0.0, 180.0)


@dataclass
class CtfDiagnostics:
    """What the diagnostic picture shows (all torch/numpy arrays on the spectrum's frequencies)."""

    spectrum: torch.Tensor  # (T, T//2+1) background-subtracted spectrum W
    model: torch.Tensor  # (T, T//2+1) fitted CTF²
    s: np.ndarray  # (n,) EPA frequencies, 1/Å
    epa: np.ndarray  # (n,) EPA of W
    epa_model: np.ndarray  # (n,) fitted envelope × CTF² on the EPA frequencies (W units)
    quality_s: np.ndarray  # fit-quality curve frequencies, 1/Å
    quality: np.ndarray  # fit-quality curve (correlation between zero pairs)
    band: tuple[float, float]  # fit band, 1/Å
    apix: float


@dataclass
class CtfFit:
    """One fitted CTF: RELION values (Å, degrees), figure of merit, fitted resolution (Å) and flags."""

    defocus_u: float
    defocus_v: float
    angle: float
    phase_shift: float
    fom: float
    max_resolution: float
    at_search_edge: bool = False
    warnings: list[str] = field(default_factory=list)
    diagnostics: CtfDiagnostics | None = field(default=None, repr=False)
    #: internal, for patch fits: the fitted (mean, a, b, phase shift) in the fitter's parameters
    _context: dict | None = field(default=None, repr=False)

    @property
    def defocus(self) -> float:
        """Mean defocus (U + V) / 2, Å."""
        return (self.defocus_u + self.defocus_v) / 2.0

    @property
    def astigmatism(self) -> float:
        """U − V, Å."""
        return self.defocus_u - self.defocus_v


# --------------------------------------------------------------------------- 1D least squares

def legendre_basis(s: np.ndarray, lo: float, hi: float, degree: int) -> torch.Tensor:
    """Legendre polynomials up to ``degree`` of s mapped from [lo, hi] to [-1, 1]: (n, degree+1) float64."""
    x = np.clip(2 * (np.asarray(s, dtype=np.float64) - lo) / max(hi - lo, 1e-12) - 1, -1.5, 1.5)
    return torch.as_tensor(np.polynomial.legendre.legvander(x, degree))


def ls_scores(y: torch.Tensor, w: torch.Tensor, c2: torch.Tensor, basis: torch.Tensor,
              return_fit: bool = False):
    """Fit ``basis·β_b + (basis·β_e)·c2_k`` to profiles ``y`` (B, n) with weights ``w`` (B, n) for each candidate ``c2`` (K, n).

    Returns scores (B, K): 1 − RSS_k / RSS_background-only, negative when the fitted envelope is
    negative (the rings would be the wrong way round). With ``return_fit`` also β (B, K, 2m).
    Everything in float64; all candidates solved at once through the normal equations.
    """
    y, w, c2, L = (t.to(torch.float64) for t in (y, w, c2, basis))
    if w.dim() == 1:
        w = w.expand_as(y)
    m = L.shape[1]
    q = w[:, :, None, None] * L[None, :, :, None] * L[None, :, None, :]  # (B, n, m, m)
    g_bb = q.sum(1)  # (B, m, m)
    g_be = torch.einsum("bnij,kn->bkij", q, c2)
    g_ee = torch.einsum("bnij,kn->bkij", q, c2 * c2)
    wyl = (w * y)[:, :, None] * L[None]  # (B, n, m)
    r_b = wyl.sum(1)  # (B, m)
    r_e = torch.einsum("bni,kn->bki", wyl, c2)
    B, K = y.shape[0], c2.shape[0]
    g = torch.empty((B, K, 2 * m, 2 * m), dtype=torch.float64)
    g[:, :, :m, :m] = g_bb[:, None]
    g[:, :, :m, m:] = g_be
    g[:, :, m:, :m] = g_be.transpose(-1, -2)
    g[:, :, m:, m:] = g_ee
    r = torch.cat([r_b[:, None].expand(B, K, m), r_e], dim=-1)
    ridge = 1e-10 * torch.diagonal(g, dim1=-2, dim2=-1).mean(-1, keepdim=True)
    g = g + torch.diag_embed(ridge.expand(B, K, 2 * m))
    beta = torch.linalg.solve(g, r.unsqueeze(-1)).squeeze(-1)
    yy = (w * y * y).sum(1)  # (B,)
    rss = yy[:, None] - (beta * r).sum(-1)
    bb = torch.linalg.solve(g_bb + torch.diag_embed(ridge[:, 0].expand(B, m)), r_b.unsqueeze(-1)).squeeze(-1)
    rss0 = yy - (bb * r_b).sum(-1)
    score = 1.0 - rss / rss0.clamp(min=1e-300)[:, None]
    env_mean = torch.einsum("bn,nm,bkm->bk", w, L, beta[..., m:]) / w.sum(1, keepdim=True)
    score = torch.where(env_mean > 0, score, -score.abs())
    return (score, beta) if return_fit else score


def parabolic_peak(values: np.ndarray, i: int) -> float:
    """Sub-sample offset (−0.5..0.5) of the peak of ``values`` near index ``i`` from a parabola through three samples."""
    if i <= 0 or i >= len(values) - 1:
        return 0.0
    a, b, c = values[i - 1], values[i], values[i + 1]
    den = a - 2 * b + c
    if den >= 0:
        return 0.0
    return float(np.clip(0.5 * (a - c) / den, -0.5, 0.5))


# --------------------------------------------------------------------------- the fitter

class SpectrumFitter:
    """Fits one averaged spectrum (T, T//2+1) of a micrograph at ``optics``; see the module docstring."""

    def __init__(self, spectrum: torch.Tensor, optics: Optics, settings: FitSettings):
        self.optics, self.settings = optics, settings
        self.P = spectrum.to(torch.float32)
        self.T = spectrum.shape[-2]
        apix = optics.apix
        self.ds = 1.0 / (self.T * apix)  # 1/Å per frequency pixel
        low, high = settings.resolution
        nyq = 0.5 / apix
        self.s_lo = 1.0 / low
        self.s_hi = min(1.0 / high, 0.96 * nyq)
        if not self.s_hi > self.s_lo * 1.5:
            raise ValueError(f"fit band {low:g}–{high:g} Å is empty at {apix:g} Å/px (Nyquist {2 * apix:g} Å)")
        self.s_max = 0.97 * nyq  # the EPA and quality curve reach this far
        self.k_lo = int(np.ceil(self.s_lo / self.ds))
        self.k_hi = int(np.floor(self.s_hi / self.ds))
        self.k_max = int(np.floor(self.s_max / self.ds))
        s_full, theta_full = frequency_grid(self.T, apix)
        self.s_full, self.theta_full = s_full, theta_full
        self.bins_full = torch.round(s_full / self.ds).long()
        # normaliser b0(s): smooth fit to the log radial average over [k_lo, k_max]
        prof, counts = radial_profile(self.P, self.bins_full, self.k_max + 1)
        k = np.arange(self.k_lo, self.k_max + 1)
        sk = k * self.ds
        logp = torch.log(prof[self.k_lo:self.k_max + 1].clamp(min=1e-30)).to(torch.float64)
        L = legendre_basis(sk, self.s_lo, self.s_max, 6)
        wk = counts[self.k_lo:self.k_max + 1].to(torch.float64)
        coef = torch.linalg.lstsq(L * wk[:, None].sqrt(), (logp * wk.sqrt())[:, None]).solution[:, 0]
        self._b0_coef = coef
        self.Pn = self.P / self.b0(s_full)  # normalised spectrum
        # the 1D radial profile of the fit band
        prof_n, counts_n = radial_profile(self.Pn, self.bins_full, self.k_max + 1)
        self.k_band = np.arange(self.k_lo, self.k_hi + 1)
        self.s_band = self.k_band * self.ds
        self.y_band = prof_n[self.k_lo:self.k_hi + 1]
        self.w_band = counts_n[self.k_lo:self.k_hi + 1]
        self.basis_band = legendre_basis(self.s_band, self.s_lo, self.s_hi, 4)
        self.grid_band = CtfGrid(torch.as_tensor(self.s_band), None, optics)
        # the 2D pixels of the fit band, on a grid cropped to the band's edge
        size = min(self.T, 2 * (self.k_hi + 2))
        self.crop = size
        s_c, th_c = frequency_grid(size, apix * self.T / size)
        self.s_crop, self.theta_crop = s_c, th_c
        self.mask_crop = (s_c >= self.s_lo) & (s_c <= self.s_hi)
        self.grid_2d = CtfGrid(s_c[self.mask_crop], th_c[self.mask_crop], optics)
        self.Pn_crop = crop_spectrum(self.Pn, size)
        # defocus step: the CTF phase at s_hi moves by PHASE_STEP between candidates
        a_hi = float(abs(self.grid_band.alpha[-1]))
        self.step = PHASE_STEP / max(a_hi, 1e-12)

    def b0(self, s: torch.Tensor) -> torch.Tensor:
        sn = np.asarray(s, dtype=np.float64).reshape(-1)
        L = legendre_basis(sn, self.s_lo, self.s_max, 6)
        return torch.exp(L @ self._b0_coef).reshape(tuple(s.shape)).to(torch.float32)

    # ---- 1D
    def _candidates(self, lo: float, hi: float) -> np.ndarray:
        n = int(np.ceil((hi - lo) / self.step)) + 1
        return np.linspace(lo, hi, max(n, 3))

    def _phases(self) -> np.ndarray:
        if not self.settings.phase_shift:
            return np.zeros(1)
        lo, hi = self.settings.phase_shift_range
        return np.arange(lo, hi + 1e-9, 10.0)

    def search_1d(self) -> tuple[float, float, float, bool]:
        """Best (mean defocus Å, phase shift °, score, at the edge of the range) from the radial average."""
        lo, hi = self.settings.defocus_range
        cands = self._candidates(lo, hi)
        phases = self._phases()
        dd, pp = np.meshgrid(cands, phases, indexing="ij")
        c2 = self.grid_band.ctf2(dd.ravel(), phase_shift=pp.ravel())
        scores = ls_scores(self.y_band[None], self.w_band, c2, self.basis_band)[0].reshape(len(cands), len(phases))
        scores = scores.numpy()
        i, j = np.unravel_index(int(np.argmax(scores)), scores.shape)
        edge = i <= 1 or i >= len(cands) - 2
        d = cands[i] + parabolic_peak(scores[:, j], i) * (cands[1] - cands[0])
        ps = phases[j]
        if len(phases) > 1:
            ps = phases[j] + parabolic_peak(scores[i, :], j) * (phases[1] - phases[0])
        return float(d), float(ps), float(scores[i, j]), bool(edge)

    def astigmatism_start(self, mean: float, phase: float) -> tuple[float, float, float]:
        """(mean, a, b) Å from one 1D search per angular sector around ``mean``."""
        half = self.settings.max_astigmatism / 2.0
        lo = max(self.settings.defocus_range[0] * 0.5, mean - half)
        cands = self._candidates(lo, mean + half)
        width = np.pi / N_SECTORS
        theta = self.theta_full.to(torch.float64)
        sector = torch.floor(torch.remainder(theta + np.pi / 2, np.pi) / width).long().clamp(max=N_SECTORS - 1)
        n_bins = self.k_max + 1
        idx = self.bins_full + n_bins * sector
        prof, counts = radial_profile(self.Pn, idx, n_bins * N_SECTORS)
        prof = prof.reshape(N_SECTORS, n_bins)[:, self.k_lo:self.k_hi + 1]
        counts = counts.reshape(N_SECTORS, n_bins)[:, self.k_lo:self.k_hi + 1]
        c2 = self.grid_band.ctf2(cands, phase_shift=phase)
        scores = ls_scores(prof, counts, c2, self.basis_band).numpy()  # (S, K)
        best = scores.argmax(1)
        d = np.array([cands[b] + parabolic_peak(scores[s_], b) * (cands[1] - cands[0]) for s_, b in enumerate(best)])
        sc = scores[np.arange(N_SECTORS), best]
        centres = -np.pi / 2 + (np.arange(N_SECTORS) + 0.5) * width
        wts = np.clip(sc, 0, None)
        if (wts > 0).sum() < 4:
            return mean, 0.0, 0.0
        X = np.column_stack([np.ones(N_SECTORS), np.cos(2 * centres), np.sin(2 * centres)])
        keep = wts > 0
        for _ in range(3):  # drop sectors far off the fitted sinusoid
            sw = np.sqrt(wts * keep)
            coef = np.linalg.lstsq(X * sw[:, None], d * sw, rcond=None)[0]
            res = np.abs(d - X @ coef)
            mad = np.median(res[keep]) * 1.4826 + self.step
            new = keep & (res <= 3 * mad)
            if new.sum() < 4 or (new == keep).all():
                break
            keep = new
        m, a, b = coef
        r = np.hypot(a, b)
        if r > half:
            a, b = a * half / r, b * half / r
        return float(m), float(a), float(b)

    # ---- 2D
    def _w_band(self, background: torch.Tensor) -> torch.Tensor:
        """Background-subtracted band pixels: normalised spectrum / background(s) − 1, centred and scaled."""
        w = self.Pn_crop[self.mask_crop] / background - 1.0
        w = w - w.mean()
        return w / w.norm().clamp(min=1e-30)

    def _background_band_1d(self, mean: float, phase: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(background, envelope / background) of the band pixels from the 1D fit at ``mean``, by radius."""
        c2 = self.grid_band.ctf2(mean, phase_shift=phase)
        _, beta = ls_scores(self.y_band[None], self.w_band, c2, self.basis_band, return_fit=True)
        m = self.basis_band.shape[1]
        s_px = self.s_crop[self.mask_crop].numpy()
        L = legendre_basis(s_px, self.s_lo, self.s_hi, 4)
        bg = (L @ beta[0, 0, :m]).to(torch.float32).clamp(min=1e-6)
        env = (L @ beta[0, 0, m:]).to(torch.float32)
        return bg, env / bg

    def _set_shape(self, shape: torch.Tensor) -> None:
        """The expected ring amplitude per band pixel (envelope / background, ≥ 0): the 2D fit's matched filter."""
        shape = shape.clamp(min=0.0)
        self._shape = shape if float(shape.max()) > 0 else torch.ones_like(shape)

    def correlation(self, w: torch.Tensor, params: np.ndarray) -> float:
        """Pearson correlation over the band pixels of ``w`` (centred, unit norm) and envelope × CTF² at ``params``.

        With the spectrum ``W ≈ A(s) CTF² + offset + noise`` and the envelope shape ``A`` known up
        to scale, this is the least-squares fit of scale and offset (its R is the score); a plain
        correlation with CTF² would pull the defocus where the ring amplitude varies.
        """
        mean, a, b = params[:3]
        ps = params[3] if len(params) > 3 else self._phase_fixed
        c2 = self.grid_2d.ctf2(mean, a, b, ps)[0] * self._shape
        c2 = c2 - c2.mean()
        return float((c2 @ w) / c2.norm().clamp(min=1e-30))

    def refine_2d(self, w: torch.Tensor, start: np.ndarray) -> tuple[np.ndarray, float]:
        """Nelder–Mead from ``start`` (mean, a, b[, phase]) maximising the 2D correlation with ``w``."""
        from scipy.optimize import minimize

        lo, hi = self.settings.defocus_range
        half_max = self.settings.max_astigmatism / 2.0

        def cost(x):
            if not (lo * 0.5 <= x[0] <= hi * 1.5) or np.hypot(x[1], x[2]) > half_max * 1.5:
                return 1.0
            return -self.correlation(w, x)

        step = max(self.step, 20.0)
        simplex = [np.array(start, dtype=np.float64)]
        deltas = [step, step, step] + ([10.0] if len(start) > 3 else [])
        for i, dlt in enumerate(deltas):
            p = simplex[0].copy()
            p[i] += dlt
            simplex.append(p)
        res = minimize(cost, start, method="Nelder-Mead",
                       options={"initial_simplex": np.array(simplex), "xatol": 1.0, "fatol": 1e-7, "maxiter": 400})
        return res.x, -float(res.fun)

    # ---- EPA and background on it
    def epa_bins(self, mean: float, a: float, b: float, ps: float, s: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """Equiphase frequency (as a fractional bin index, units of ``ds``) of each pixel (s, θ)."""
        grid = CtfGrid(s.reshape(-1), theta.reshape(-1), self.optics, dtype=torch.float64)
        chi = grid.phase(mean, a, b, ps)[0]
        s_tab = np.linspace(0.0, float(s.max()) * 1.3 + self.ds, 8192)
        tab = CtfGrid(torch.as_tensor(s_tab), None, self.optics, dtype=torch.float64).phase(mean, phase_shift=ps)[0]
        # the phase falls monotonically with s for underfocus up to far beyond Nyquist; keep the monotone part
        t = -tab.numpy()
        mono = np.maximum.accumulate(t)
        good = np.concatenate([[True], np.diff(mono) > 0])
        s_eq = np.interp(-chi.numpy(), mono[good], s_tab[good])
        return torch.as_tensor(s_eq / self.ds).reshape(s.shape)

    def epa_background(self, mean: float, a: float, b: float, ps: float):
        """EPA of the normalised spectrum and its fitted background/envelope up to ``k_max``.

        Returns (bins of every full-grid pixel, k (n,), EPA profile (n,), background (n,), envelope (n,)).
        """
        bins = torch.round(self.epa_bins(mean, a, b, ps, self.s_full, self.theta_full)).long()
        ring = (self.s_full >= self.s_lo * 0.9) & (self.s_full <= self.s_max)
        prof, counts = radial_profile(self.Pn, bins, self.k_max + 1, mask=ring)
        k = np.arange(self.k_lo, self.k_max + 1)
        y, wt = prof[self.k_lo:], counts[self.k_lo:]
        basis = legendre_basis(k * self.ds, self.s_lo, self.s_max, 6)
        c2 = CtfGrid(torch.as_tensor(k * self.ds), None, self.optics).ctf2(mean, phase_shift=ps)
        _, beta = ls_scores(y[None], wt, c2, basis, return_fit=True)
        m = basis.shape[1]
        bg = (basis @ beta[0, 0, :m]).to(torch.float32)
        env = (basis @ beta[0, 0, m:]).to(torch.float32)
        return bins, k, y, wt, bg, env, c2[0]

    # ---- everything
    def fit(self, keep_diagnostics: bool = True) -> CtfFit:
        d1, ps1, _, edge = self.search_1d()
        self._phase_fixed = ps1
        m0, a0, b0 = self.astigmatism_start(d1, ps1)
        start = np.array([m0, a0, b0] + ([ps1] if self.settings.phase_shift else []))
        bg_px, shape = self._background_band_1d(d1, ps1)
        self._set_shape(shape)
        w = self._w_band(bg_px)
        x, _ = self.refine_2d(w, start)
        # second pass: background from the equiphase average of the first fit
        for _ in range(2):
            ps = float(x[3]) if len(x) > 3 else ps1
            bins, k, y, wt, bg, env, c2_1d = self.epa_background(float(x[0]), float(x[1]), float(x[2]), ps)
            s_px = self.s_crop[self.mask_crop].numpy()
            bg_px = torch.as_tensor(np.interp(s_px, k * self.ds, bg.numpy()), dtype=torch.float32).clamp(min=1e-6)
            env_px = torch.as_tensor(np.interp(s_px, k * self.ds, env.numpy()), dtype=torch.float32)
            self._set_shape(env_px / bg_px)
            w = self._w_band(bg_px)
            x, fom = self.refine_2d(w, x)
        ps = float(x[3]) if len(x) > 3 else ps1
        if self.settings.phase_shift:
            ps = ps % 180.0
        mean, a, b = float(x[0]), float(x[1]), float(x[2])
        u, v, angle = astig_to_uva(mean, a, b)
        lo, hi = self.settings.defocus_range
        edge = edge or mean < lo + 1.5 * self.step or mean > hi - 1.5 * self.step
        bins, k, y, wt, bg, env, c2_1d = self.epa_background(mean, a, b, ps)
        epa_w = (y / bg.clamp(min=1e-6) - 1.0).numpy()
        model_w = (env / bg.clamp(min=1e-6) * c2_1d).numpy()
        q_s, q = quality_curve(k * self.ds, epa_w, c2_1d.numpy(), self._zeros(mean, ps))
        max_res = max_resolution(q_s, q, self.s_lo, 2 * self.optics.apix)
        warnings = []
        if fom < LOW_FOM:
            warnings.append(f"low figure of merit {fom:.3f}")
        if edge:
            warnings.append(f"defocus {mean:.0f} Å at the edge of the search range {lo:.0f}–{hi:.0f} Å")
        fit = CtfFit(u, v, angle, ps, float(fom), float(max_res), bool(edge), warnings)
        fit._context = {"mean": mean, "a": a, "b": b, "ps": ps}
        if keep_diagnostics:
            bg_full = torch.as_tensor(np.interp(self.s_full.numpy().ravel(), k * self.ds, bg.numpy()),
                                      dtype=torch.float32).reshape(self.s_full.shape).clamp(min=1e-6)
            spec_w = self.Pn / bg_full - 1.0
            model2d = CtfGrid(self.s_full, self.theta_full, self.optics).ctf2(mean, a, b, ps)[0].reshape(self.s_full.shape)
            fit.diagnostics = CtfDiagnostics(spectrum=spec_w, model=model2d, s=k * self.ds, epa=epa_w, epa_model=model_w,
                                             quality_s=q_s, quality=q, band=(self.s_lo, self.s_hi), apix=self.optics.apix)
        return fit

    def _zeros(self, mean: float, ps: float) -> np.ndarray:
        """Frequencies (1/Å) of the CTF zeros of the isotropic mean defocus up to ``s_max`` (sign changes of the 1D CTF)."""
        s = np.linspace(0, self.s_max, 20001)
        c = CtfGrid(torch.as_tensor(s), None, self.optics, dtype=torch.float64).ctf(mean, phase_shift=ps)[0].numpy()
        idx = np.nonzero(np.signbit(c[1:]) != np.signbit(c[:-1]))[0]
        return s[idx]


def quality_curve(s: np.ndarray, epa: np.ndarray, c2: np.ndarray, zeros: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Correlation of the EPA and the CTF² over each span between every other CTF zero (two Thon rings).

    Returns (centre frequencies 1/Å, correlations); spans holding fewer than 5 samples (rings too
    narrow for the spectrum's sampling) end the curve.
    """
    out_s, out_q = [], []
    for z0, z1 in zip(zeros[:-2], zeros[2:]):
        sel = (s >= z0) & (s < z1)
        if sel.sum() < 5:
            if z0 > s[0]:
                break
            continue
        a, b = epa[sel] - epa[sel].mean(), c2[sel] - c2[sel].mean()
        den = np.sqrt((a * a).sum() * (b * b).sum())
        out_s.append(0.5 * (z0 + z1))
        out_q.append(float((a * b).sum() / den) if den > 0 else 0.0)
    return np.asarray(out_s), np.asarray(out_q)


def max_resolution(q_s: np.ndarray, q: np.ndarray, s_lo: float, nyquist_res: float) -> float:
    """Resolution (Å) at which the fit-quality curve, read outward from ``s_lo``, first drops below :data:`QUALITY_THRESHOLD`."""
    sel = q_s >= s_lo
    q_s, q = q_s[sel], q[sel]
    if not len(q):
        return float(1.0 / s_lo)
    below = np.nonzero(q < QUALITY_THRESHOLD)[0]
    if not len(below):
        return float(max(nyquist_res, 1.0 / q_s[-1]))
    i = int(below[0])
    if i == 0:
        return float(1.0 / q_s[0])
    return float(1.0 / q_s[i - 1])


def fit_spectrum(spectrum: torch.Tensor, optics: Optics, settings: FitSettings | None = None,
                 keep_diagnostics: bool = True) -> tuple[CtfFit, SpectrumFitter]:
    """Fit the CTF to one averaged spectrum (T, T//2+1) (rfft layout); returns the fit and the fitter (for patches)."""
    fitter = SpectrumFitter(spectrum, optics, settings or FitSettings())
    return fitter.fit(keep_diagnostics), fitter


__all__ = ["CtfFit", "CtfDiagnostics", "FitSettings", "SpectrumFitter", "fit_spectrum", "uva_to_astig"]
