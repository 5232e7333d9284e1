"""Pose search: particles as Fourier samples in memory, scored against central slices of a model.

The score of particle *n* at pose (A, origin o) is the Gaussian log-likelihood of RELION and
cryoSPARC up to a constant,

    LL = Σ_k [ Re( conj(X_n(k)·e^{2πi k·o}) · c_n(k) · P_A(k) ) − ½ c_n(k)² |P_A(k)|² ] / σ²(|k|)

over the Fourier samples ``k`` inside the current resolution limit, with ``X_n`` the particle's
DFT (centred at box//2; the phase factor moves its centre back by the origin), ``c_n`` its CTF,
``P_A`` the model's central slice at RELION matrix ``A`` (:class:`cryomap.core.backprojector.SliceExtractor`)
and ``σ²`` the noise power per shell (:func:`noise_spectrum`). The cross term for a batch of
particles × shifts against many orientations is one matrix product (real and imaginary parts
stacked), which is what makes an exhaustive search over SO(3) affordable on a CPU; local searches
extract one slice per candidate and particle.

Orientation grids (:func:`so3_grid`): HEALPix viewing directions (healpy, RELION's choice) at
the order whose resolution is closest to the step, times in-plane angles at the same step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cryomap.core.backprojector import SlicePoints, SliceExtractor, image_dfts, shift_phases, slice_points
from cryomap.core.ctf import ctf_at, subset
from cryomap.core.euler import euler_to_matrix


@dataclass
class FourierParticles:
    """Particles at a working box as Fourier samples (every row in memory).

    ``values`` (N, M) complex64: samples ``pts`` of each image's DFT (centre box//2, *not* yet
    re-centred by any origin); ``ctf`` (N, M) float32 (ones without CTF; |CTF| for phase-flipped
    rows); ``apix`` Å/px of the working box; ``scale`` = original apix / working apix ≤ 1.
    """

    values: torch.Tensor
    ctf: torch.Tensor
    pts: SlicePoints
    box: int
    apix: float
    scale: float
    flipped: np.ndarray

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def subset_mask(self, r_px: float) -> torch.Tensor:
        """Samples inside ``r_px`` working-box Fourier pixels (bool (M,))."""
        return self.pts.radius <= float(r_px) + 1e-6

    def radius_A(self, r_px: float) -> float:
        """Resolution (Å) of Fourier radius ``r_px`` at the working box."""
        return self.box * self.apix / max(float(r_px), 1e-6)

    def r_px(self, resolution_A: float) -> float:
        """Fourier radius (working-box pixels) of ``resolution_A`` Å, at most Nyquist."""
        return min(self.box // 2, self.box * self.apix / float(resolution_A))


def load_particles(source, box: int | None = None, *, ctf: bool = True, batch_size: int = 256,
                   progress=None) -> FourierParticles:
    """Read every particle of ``source`` once: Fourier-crop to ``box`` px (default: as is), keep the DFT samples.

    The CTF is evaluated at the working box's frequencies (the pixel size grows by the binning).
    """
    from cryomap.core.fourier import resize_images

    n, h, w = source.shape
    box = int(w if box is None else box)
    if box > w:
        raise ValueError(f"working box {box} px is larger than the particles' {w} px")
    apix = source.pixel_size * w / box
    pts = slice_points(box, 2.0)
    params = source.ctf() if ctf else None
    flipped = np.zeros(n, bool)
    if params is not None and "rlnCtfDataArePhaseFlipped" in source.table:
        flipped = np.asarray(source.table["rlnCtfDataArePhaseFlipped"], dtype=np.float64) == 1
    values = torch.empty((n, len(pts)), dtype=torch.complex64)
    ctfs = torch.ones((n, len(pts)), dtype=torch.float32) if params is not None else torch.ones((1, len(pts)))
    fx, fy = pts.frequencies(apix)
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(n, start + batch_size))
        imgs = source.images(rows)
        if box != w:
            imgs = resize_images(imgs, box)
        values[rows] = image_dfts(torch.as_tensor(imgs), pts)
        if params is not None:
            c = ctf_at(subset(params, rows), fx, fy)
            flip = torch.as_tensor(flipped[rows])
            ctfs[rows] = torch.where(flip[:, None], c.abs(), c)
        if progress is not None:
            progress(len(rows))
    if hasattr(source, "release"):  # the source unmaps as it goes (ParticleSource.read_raw); the rest now
        source.release()
    if params is None:
        ctfs = ctfs.expand(n, -1)
    return FourierParticles(values, ctfs, pts, box, float(apix), float(source.pixel_size / apix), flipped)


def so3_grid(step_deg: float) -> np.ndarray:
    """RELION matrices (O, 3, 3) of a near-uniform SO(3) grid: HEALPix directions × in-plane angles, ~``step_deg`` apart."""
    import healpy

    nside = 1
    while np.degrees(healpy.nside2resol(nside * 2)) >= step_deg * 0.99 and nside < 64:
        nside *= 2
    if np.degrees(healpy.nside2resol(nside)) > 1.5 * step_deg and nside < 64:
        nside *= 2
    theta, phi = healpy.pix2ang(nside, np.arange(healpy.nside2npix(nside)))
    n_psi = max(4, int(round(360.0 / step_deg)))
    psi = np.arange(n_psi) * 360.0 / n_psi
    rot = np.repeat(np.degrees(phi), n_psi)
    tilt = np.repeat(np.degrees(theta), n_psi)
    return euler_to_matrix(rot, tilt, np.tile(psi, len(theta)))


def grid_step(step_deg: float) -> float:
    """The actual angular step (degrees) of :func:`so3_grid` for a requested step."""
    import healpy

    nside = 1
    while np.degrees(healpy.nside2resol(nside * 2)) >= step_deg * 0.99 and nside < 64:
        nside *= 2
    if np.degrees(healpy.nside2resol(nside)) > 1.5 * step_deg and nside < 64:
        nside *= 2
    return float(np.degrees(healpy.nside2resol(nside)))


def shift_grid(max_px: float, step_px: float) -> np.ndarray:
    """In-plane shift candidates (S, 2) px on a square grid within a disc of ``max_px`` (always holds (0, 0))."""
    if max_px <= 0 or step_px <= 0:
        return np.zeros((1, 2))
    k = int(np.floor(max_px / step_px + 1e-9))
    ax = np.arange(-k, k + 1) * step_px
    g = np.stack(np.meshgrid(ax, ax, indexing="xy"), -1).reshape(-1, 2)
    return g[np.hypot(g[:, 0], g[:, 1]) <= max_px + 1e-9]


def local_rotations(step_deg: float) -> np.ndarray:
    """The 27 rotation matrices of a 3×3×3 cube of rotation vectors with spacing ``step_deg`` (identity included)."""
    from scipy.spatial.transform import Rotation

    ax = np.radians(np.array([-1.0, 0.0, 1.0]) * step_deg)
    g = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    return Rotation.from_rotvec(g).as_matrix()


def noise_spectrum(parts: FourierParticles, rows: np.ndarray, model: SliceExtractor | None = None,
                   rotations: np.ndarray | None = None, shifts_px: np.ndarray | None = None) -> np.ndarray:
    """Noise power σ² per working-box shell (0 … box//2): mean |X − c·P|² over ``rows`` (|X|² without a model)."""
    x = parts.values[rows]
    if model is not None and rotations is not None:
        ph = shift_phases(parts.pts, torch.as_tensor(np.asarray(shifts_px, np.float32)))
        proj = model.slices(parts.pts, torch.as_tensor(rotations, dtype=torch.float32))
        x = x * ph - parts.ctf[rows] * proj
    power = (x.real ** 2 + x.imag ** 2).mean(0).double()
    shells = torch.round(parts.pts.radius).to(torch.int64).clamp(max=parts.box // 2)
    n = parts.box // 2 + 1
    s = torch.bincount(shells, weights=power, minlength=n)[:n]
    c = torch.bincount(shells, minlength=n)[:n].clamp(min=1)
    out = (s / c).numpy()
    return np.maximum(out, 1e-12 * max(out.max(), 1e-30))


def _weights(parts: FourierParticles, sel: torch.Tensor, sigma2: np.ndarray) -> torch.Tensor:
    shells = torch.round(parts.pts.radius[sel]).to(torch.int64).clamp(max=parts.box // 2)
    return (1.0 / torch.as_tensor(sigma2, dtype=torch.float32))[shells]


@dataclass
class SearchResult:
    """Best poses of a batch: RELION matrices (B, 3, 3), origins (B, 2) px at the working box, scores (B,)."""

    rotations: np.ndarray
    shifts_px: np.ndarray
    scores: np.ndarray
    candidates: np.ndarray | None = None  # (B, K) orientation indices of the global search
    candidate_scores: np.ndarray | None = None  # (B, K)
    candidate_shifts: np.ndarray | None = None  # (B, K, 2)


def global_search(parts: FourierParticles, rows: np.ndarray, model: SliceExtractor, rotations: np.ndarray,
                  shifts_px: np.ndarray, r_px: float, sigma2: np.ndarray, *, top_k: int = 1,
                  image_chunk: int = 64, orient_chunk: int = 8192) -> SearchResult:
    """Exhaustive search of ``rotations`` (O, 3, 3) × ``shifts_px`` (S, 2) for each particle of ``rows``.

    Keeps the ``top_k`` best (orientation, shift) pairs per particle (distinct orientations).
    """
    sel = parts.subset_mask(r_px)
    pts = _sub(parts.pts, sel)
    inv = _weights(parts, sel, sigma2)  # (M,)
    rot_t = torch.as_tensor(rotations, dtype=torch.float32)
    sh = torch.as_tensor(np.asarray(shifts_px, np.float32))
    ph = shift_phases(pts, sh)  # (S, M)
    n_s = len(sh)
    best = {"score": [], "idx": [], "shift": []}
    for i0 in range(0, len(rows), image_chunk):
        r = rows[i0:i0 + image_chunk]
        x = parts.values[r][:, sel]  # (B, M)
        c = parts.ctf[r][:, sel]
        a = (x[:, None, :] * ph[None]) * (c * inv)[:, None, :]  # (B, S, M)
        a = torch.cat([a.real, a.imag], -1).reshape(len(r) * n_s, -1)  # (B·S, 2M)
        c2 = c * c * inv  # (B, M)
        scores_all, idx_all = [], []
        for o0 in range(0, len(rot_t), orient_chunk):
            proj = model.slices(pts, rot_t[o0:o0 + orient_chunk])  # (O', M)
            p = torch.cat([proj.real, proj.imag], -1)  # (O', 2M)
            cross = (a @ p.T).reshape(len(r), n_s, -1)  # (B, S, O')
            norm = c2 @ (proj.real ** 2 + proj.imag ** 2).T  # (B, O')
            ll = cross - 0.5 * norm[:, None, :]
            ll_best, s_best = ll.max(1)  # best shift per orientation (B, O')
            k = min(top_k, ll_best.shape[1])
            v, j = torch.topk(ll_best, k, dim=1)
            scores_all.append(v)
            idx_all.append(torch.stack([j + o0, torch.gather(s_best, 1, j)], -1))
        v = torch.cat(scores_all, 1)
        ij = torch.cat(idx_all, 1)
        k = min(top_k, v.shape[1])
        vv, jj = torch.topk(v, k, dim=1)
        pick = torch.gather(ij, 1, jj[..., None].expand(-1, -1, 2))
        best["score"].append(vv)
        best["idx"].append(pick[..., 0])
        best["shift"].append(pick[..., 1])
    score = torch.cat(best["score"]).numpy()
    idx = torch.cat(best["idx"]).numpy()
    sidx = torch.cat(best["shift"]).numpy()
    shifts = np.asarray(shifts_px, np.float64)[sidx]
    return SearchResult(rotations[idx[:, 0]], shifts[:, 0], score[:, 0], idx, score, shifts)


def local_search(parts: FourierParticles, rows: np.ndarray, model: SliceExtractor, rotations: np.ndarray,
                 shifts_px: np.ndarray, r_px: float, sigma2: np.ndarray, *, step_deg: float,
                 shift_step_px: float, shift_range_px: float | None = None, image_chunk: int = 128) -> SearchResult:
    """Best pose per particle among a 3×3×3 cube of rotations ``step_deg`` apart about its current one
    (``rotations`` (B, 3, 3)), times shifts on a ``shift_step_px`` grid about its current ``shifts_px`` (B, 2)."""
    sel = parts.subset_mask(r_px)
    pts = _sub(parts.pts, sel)
    inv = _weights(parts, sel, sigma2)
    deltas = torch.as_tensor(local_rotations(step_deg), dtype=torch.float32)  # (K, 3, 3)
    rng = shift_step_px if shift_range_px is None else shift_range_px
    offs = shift_grid(rng, shift_step_px)  # (S, 2)
    out_r, out_s, out_v = [], [], []
    for i0 in range(0, len(rows), image_chunk):
        r = rows[i0:i0 + image_chunk]
        b = len(r)
        cur = torch.as_tensor(rotations[i0:i0 + image_chunk], dtype=torch.float32)
        # candidate A' = A·Δ (a small rotation of the map frame about the current pose)
        cand = torch.einsum("bij,kjl->bkil", cur, deltas).reshape(-1, 3, 3)
        proj = model.slices(pts, cand).reshape(b, len(deltas), -1)  # (B, K, M)
        x = parts.values[r][:, sel]
        c = parts.ctf[r][:, sel]
        sh = torch.as_tensor(shifts_px[i0:i0 + image_chunk, None, :] + offs[None], dtype=torch.float32)  # (B, S, 2)
        ph = shift_phases(pts, sh.reshape(-1, 2)).reshape(b, len(offs), -1)
        a = x[:, None, :] * ph * (c * inv)[:, None, :]  # (B, S, M)
        a = torch.cat([a.real, a.imag], -1)  # (B, S, 2M)
        p = torch.cat([proj.real, proj.imag], -1)  # (B, K, 2M)
        cross = torch.bmm(a, p.transpose(1, 2))  # (B, S, K)
        norm = torch.einsum("bm,bkm->bk", c * c * inv, proj.real ** 2 + proj.imag ** 2)
        ll = cross - 0.5 * norm[:, None, :]
        v, flat = ll.reshape(b, -1).max(1)
        si, ki = flat // len(deltas), flat % len(deltas)
        out_r.append(cand.reshape(b, len(deltas), 3, 3)[torch.arange(b), ki].numpy())
        out_s.append(sh[torch.arange(b), si].numpy())
        out_v.append(v.numpy())
    return SearchResult(np.concatenate(out_r).astype(np.float64), np.concatenate(out_s).astype(np.float64),
                        np.concatenate(out_v))


def _sub(pts: SlicePoints, sel: torch.Tensor) -> SlicePoints:
    return SlicePoints(pts.iy[sel], pts.ix[sel], pts.ky[sel], pts.kx[sel], pts.radius[sel], pts.L, pts.box,
                       pts.image_size)


def orthonormalise(m: np.ndarray) -> np.ndarray:
    """Nearest rotation matrices (SVD) of (…, 3, 3) arrays."""
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(u @ vt))
    u[..., :, -1] *= d[..., None]
    return u @ vt
