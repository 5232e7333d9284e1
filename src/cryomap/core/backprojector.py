"""Fourier-space backprojection (slice insertion) and slice extraction on a padded 3D grid, in torch.

The kernels that reconstruction, ab initio, refinement and 2D classification share. Geometry is
RELION's (:mod:`cryomap.core.euler`): a particle at pose ``A`` (the ZYZ matrix of rot, tilt, psi)
is the projection ``image(x, y) = Σ_z V(Aᵀ·(x, y, z))``, so by the central-slice theorem its 2D
DFT sample at frequency ``(kx, ky)`` is the volume's 3D DFT at ``Aᵀ·(kx, ky, 0) = kx·A[0] + ky·A[1]``
(the first two rows of ``A``). Image and volume centres are pixel ``box // 2``.

**Grid.** The 3D sums live on a grid ``L = pad × box`` (rounded up to even; pad 2 as RELION)
voxels a side. The samples of an image are the half plane (``kx > 0``, or ``kx = 0`` and
``ky ≥ 0``) of its DFT inside the radius ``r_max`` (image Fourier pixels, default ``box // 2``:
the Nyquist disc), either the image's own DFT (``oversample = 1``, what RELION inserts, placed
every ``pad`` voxels) or that of the image zero-padded ``oversample`` times (denser samples).
Each sample is added into a centred grid with a margin (no wrapping while inserting); the
margin is folded periodically and Friedel's mates added once at the end (``G(k) + conj G(−k)``),
which is exact and keeps the insertion free of conjugation logic.

**Why a kernel of our own.** ``torch_fourier_slice.insert_central_slices_rfft_3d`` (which the
previous reconstructor called twice per batch, on 2×-padded images) took 141 s for 10,000 images
of 64 px; RELION's ``relion_reconstruct`` 4.1 s. Here the sample set is computed once, the 3D
coordinate of a sample is two multiply-adds, every half set goes into one flat grid (a set offset
in the index), float32 throughout; on the CPU the insertion loop is compiled with numba
(:func:`_numba_kernel`, why there), on a GPU it is index arithmetic and ``scatter_add_``.

**Interpolation.** ``"trilinear"`` spreads each sample over the 8 nearest voxels (RELION's
default), ``"nearest"`` adds it to one. After dividing data by weight, the kernel's real-space
apodisation is removed by the gridding correction: ``sinc²`` per axis for trilinear, ``sinc`` for
nearest, of ``(x − L/2)/L`` (:func:`gridding_correction`). Nearest costs one add per sample
instead of eight but measured lower FSC against the truth (docs/reconstruct.md).

Extraction (:class:`SliceExtractor`) is the adjoint: trilinear samples of a padded,
gridding-pre-corrected 3D DFT at the same slice coordinates (``grid_sample`` on the fftshifted
full grid, real and imaginary parts as two channels).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

Interpolation = Literal["trilinear", "nearest"]


def padded_size(box: int, pad: float) -> int:
    """The even grid size ``L ≥ pad × box`` (at least ``box``) used for images and volumes."""
    n = max(int(box), int(np.ceil(float(pad) * box - 1e-9)))
    return n + (n % 2)


@dataclass
class SlicePoints:
    """The Fourier samples of an image that are inserted/extracted, and the 3D grid they go to.

    An image of ``box`` px is zero-padded to ``image_size`` (``oversample × box``) before its
    ``rfft2``; ``iy``, ``ix`` index that (image_size, image_size//2 + 1) transform (FFT order).
    ``ky``, ``kx``: the samples' signed frequencies in 3D-grid units (cycles per ``L`` voxels,
    ``L = pad × box``); ``radius``: |k| in *image* Fourier pixels (the shell of the box-sized
    DFT); ``L``: the 3D grid size; ``box``: the image size.
    """

    iy: torch.Tensor
    ix: torch.Tensor
    ky: torch.Tensor
    kx: torch.Tensor
    radius: torch.Tensor
    L: int
    box: int
    image_size: int

    def __len__(self) -> int:
        return int(self.iy.numel())

    @property
    def scale(self) -> float:
        """Grid units per image Fourier pixel (``L / box``)."""
        return self.L / self.box

    def frequencies(self, apix: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(fx, fy) of every sample in cycles/Å for images of ``apix`` Å/px."""
        return self.kx / (self.L * apix), self.ky / (self.L * apix)

    def to(self, device) -> "SlicePoints":
        return SlicePoints(self.iy.to(device), self.ix.to(device), self.ky.to(device), self.kx.to(device),
                           self.radius.to(device), self.L, self.box, self.image_size)


def slice_points(box: int, pad: float = 2.0, r_max: float | None = None, device=None, *,
                 oversample: int = 1, dense_radius: float | None = None) -> SlicePoints:
    """The half-plane samples of a ``box``-px image within ``r_max`` image Fourier pixels, for an ``L = pad × box`` grid.

    ``r_max`` defaults to ``box // 2`` (Nyquist). ``oversample`` (an integer) pads the image to
    ``oversample × box`` before its DFT: 1 gives the image's own DFT samples (RELION inserts
    those), 2 twice denser ones (torch-fourier-slice). With ``dense_radius`` the denser samples
    are kept only inside that radius (image Fourier pixels) and the image's own beyond it: at low
    frequency, where the slices crowd together and the trilinear kernel regression is most
    biased, the extra samples sharpen the estimate, at a quarter of the cost of oversampling all.
    Samples are ordered by (ky, kx) raster.
    """
    ov = max(1, int(round(oversample)))
    L = padded_size(box, pad)
    n_img = box * ov if ov > 1 else int(box)
    r = float(box // 2 if r_max is None else r_max)
    ky = torch.fft.fftfreq(n_img, d=1.0 / n_img)  # integers, FFT order
    kx = torch.arange(n_img // 2 + 1, dtype=torch.float32)
    KY, KX = torch.meshgrid(ky, kx, indexing="ij")
    rad = torch.sqrt(KY**2 + KX**2) / ov
    keep = (rad <= r + 1e-6) & ((KX > 0) | (KY >= 0))
    if ov > 1 and dense_radius is not None:
        coarse = (torch.remainder(KY, ov) == 0) & (torch.remainder(KX, ov) == 0)
        keep &= (rad <= float(dense_radius) + 1e-6) | coarse
    iy, ix = torch.nonzero(keep, as_tuple=True)
    to_grid = L / n_img
    pts = SlicePoints(iy, ix, (KY[keep] * to_grid).float(), (KX[keep] * to_grid).float(), rad[keep].float(), L,
                      int(box), int(n_img))
    return pts if device is None else pts.to(device)


def gridding_correction(size: int, L: int, interpolation: Interpolation, device=None) -> torch.Tensor:
    """Real-space apodisation of the insertion kernel for a ``size``³ crop of an ``L``³ grid (z, y, x).

    Divide a reconstruction by it: ``sinc²`` (trilinear) or ``sinc`` (nearest) of ``(i − size//2)/L``
    per axis, the Fourier transform of the kernel (RELION's ``griddingCorrect``).
    """
    x = (torch.arange(size, dtype=torch.float64, device=device) - size // 2) / L
    s = torch.sinc(x)
    if interpolation == "trilinear":
        s = s * s
    return (s[:, None, None] * s[None, :, None] * s[None, None, :]).to(torch.float32)


def image_dfts(images: torch.Tensor, pts: SlicePoints, shifts_px: torch.Tensor | None = None) -> torch.Tensor:
    """The samples ``pts`` of each image's DFT (B, M) complex64, phase origin at the image centre (box//2).

    Images (B, box, box) are taken as zero-padded to ``pts.image_size`` (``rfft`` along x and
    ``fft`` along y with ``n = image_size``: the zero rows are never transformed) and the
    centre is brought to the origin by a phase factor. ``shifts_px`` (B, 2) = (dx, dy) also
    moves the content by that many pixels (:func:`shift_phases`): pass ``origin / apix`` to
    undo RELION origins (the centre sits at ``box//2 − origin/apix``).
    """
    b, h, w = images.shape
    n = pts.image_size
    if h != w or h != pts.box:
        raise ValueError(f"images of {h}×{w} px do not match a {pts.box} px sample set")
    ft = torch.fft.fft(torch.fft.rfft(images, n=n, dim=-1), n=n, dim=-2)  # content at pixels 0…box−1 of n
    values = ft.reshape(b, -1)[:, pts.iy * (n // 2 + 1) + pts.ix]
    move = torch.full((b, 2), -float(w // 2), dtype=torch.float32, device=images.device)  # centre → pixel 0
    if shifts_px is not None:
        move = move + shifts_px.to(torch.float32)
    return values * shift_phases(pts, move)


def shift_phases(pts: SlicePoints, shifts_px: torch.Tensor) -> torch.Tensor:
    """Phase factors (B, M) that move image content by ``shifts_px`` (B, 2) = (dx, dy) pixels.

    ``F'(k) = F(k)·exp(−2πi (kx·dx + ky·dy) / L)`` (k in grid units): a shift of the band-limited
    image (not a periodic roll of the unpadded box).
    """
    k = torch.stack([pts.kx, pts.ky]).to(torch.float32)  # (2, M)
    phase = (shifts_px.to(torch.float32) @ k) * (-2.0 * np.pi / pts.L)
    return torch.polar(torch.ones_like(phase), phase)


def slice_coordinates(pts: SlicePoints, rotations: torch.Tensor) -> torch.Tensor:
    """3D grid coordinates (B, M, 3) = (x, y, z) of the samples for RELION matrices ``A`` (B, 3, 3).

    ``Aᵀ·(kx, ky, 0) = kx·A[0] + ky·A[1]`` in padded-grid units.
    """
    a = rotations.to(torch.float32)
    return pts.kx[None, :, None] * a[:, None, 0, :] + pts.ky[None, :, None] * a[:, None, 1, :]



def _numba_kernel():
    """The CPU insertion loop, compiled once by numba (None when numba is not installed).

    One pass per sample: slice coordinate, the Friedel mirror into the kx ≥ 0 half, floor,
    8 trilinear weights (or the nearest voxel), then the adds of (re, im, weight) into one
    interleaved float32 grid (a voxel's three sums side by side, so a sample touches 4–8 cache
    lines, not 8–16). torch needs a dozen full-size temporaries (B·M·8 indices, weights and
    products) and three random scatters for the same work: measured ~4× slower
    (tests/test_reconstruct_kernels.py checks both give the same sums). One call adds into one
    set's grid. Serial on purpose: no atomics, and the result does not depend on the thread count
    (threads may run different sets).
    """
    global _KERNEL
    if _KERNEL is not None:
        return _KERNEL or None
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a pinned dependency; the torch path still works
        _KERNEL = False
        return None

    @numba.njit(cache=True, nogil=True)
    def insert(grid, values, wts, rot, kx, ky, S, X, c, nearest):  # pragma: no cover - compiled
        b_n, m_n = values.shape
        SX = S * X
        one = np.float32(1.0)
        half = np.float32(0.5)
        zero = np.float32(0.0)
        for b in range(b_n):
            a00, a01, a02 = rot[b, 0, 0], rot[b, 0, 1], rot[b, 0, 2]
            a10, a11, a12 = rot[b, 1, 0], rot[b, 1, 1], rot[b, 1, 2]
            for m in range(m_n):
                x = kx[m] * a00 + ky[m] * a10
                y = kx[m] * a01 + ky[m] * a11
                z = kx[m] * a02 + ky[m] * a12
                vr = values[b, m].real
                vi = values[b, m].imag
                wt = wts[b, m]
                if x < zero:  # Friedel: F(−k) = conj F(k), stored on the kx ≥ 0 half
                    x, y, z, vi = -x, -y, -z, -vi
                y += c
                z += c
                if nearest:
                    i = 3 * (int(np.floor(z + half)) * SX + int(np.floor(y + half)) * X + int(np.floor(x + half)))
                    grid[i] += vr
                    grid[i + 1] += vi
                    grid[i + 2] += wt
                    continue
                fx = np.floor(x)
                fy = np.floor(y)
                fz = np.floor(z)
                tx = x - fx
                ty = y - fy
                tz = z - fz
                base = int(fz) * SX + int(fy) * X + int(fx)
                for dz in range(2):
                    wz = tz if dz else one - tz
                    for dy in range(2):
                        wzy = wz * (ty if dy else one - ty)
                        i = 3 * (base + dz * SX + dy * X)
                        w = wzy * (one - tx)
                        grid[i] += w * vr
                        grid[i + 1] += w * vi
                        grid[i + 2] += w * wt
                        w = wzy * tx
                        grid[i + 3] += w * vr
                        grid[i + 4] += w * vi
                        grid[i + 5] += w * wt

    _KERNEL = insert
    return insert


_KERNEL = None


def _negate_yz(x: torch.Tensor) -> torch.Tensor:
    """``x(−kz, −ky)`` of an array in FFT order along its first two axes (any trailing axes)."""
    return torch.roll(torch.flip(x, dims=(0, 1)), shifts=(1, 1), dims=(0, 1))


class Backprojector:
    """Accumulates ``Σ w·F`` (complex) and ``Σ w`` over inserted slices, for ``n_sets`` independent sets.

    ``insert(values, weights, rotations, sets)``: ``values`` (B, M) complex are the samples of
    ``pts`` (already CTF-multiplied and re-centred), ``weights`` (B, M) real (CTF², or 1),
    ``rotations`` RELION ``A`` (B, 3, 3), ``sets`` (B,) ints in ``[0, n_sets)`` (e.g. the half
    set). The sums of a real map's transform are Hermitian, so only the ``kx ≥ 0`` half is kept,
    as RELION does: a sample that lands at ``kx < 0`` is added, conjugated, at ``−k``. Each set has
    its own half grid (:attr:`grids`), ``S × S × X`` voxels (z, y, x; ``S = L + 3``, ``X = L/2 + 2``):
    frequency ``ky`` at index ``ky + L/2 + 1`` (likewise kz), ``kx`` at index ``kx``, so every
    trilinear corner of a sample inside the Nyquist sphere lands inside and no index is wrapped
    while inserting; (re, im, weight) float32 per voxel. :meth:`half_grids` folds the margins and
    the two planes the mirror leaves one-sided (kx = 0 and L/2) into the ``rfftn`` grid. Memory:
    ``S²·X × 12`` bytes per set (13.6 MiB for 64 px at pad 2): half of a full grid (the insertion's
    speed stayed within the noise of the full grid's: 136–158 against 159–188 ns per sample at
    64 px, alternating runs on the 2-core machine). A set's grid is its own tensor so that
    :meth:`release` can free it once its sums are taken (reconstruction's peak memory).
    """

    def __init__(self, pts: SlicePoints, interpolation: Interpolation = "trilinear", n_sets: int = 1,
                 device=None, use_numba: bool = True) -> None:
        if interpolation not in ("trilinear", "nearest"):
            raise ValueError(f"interpolation must be 'trilinear' or 'nearest', got {interpolation!r}")
        self.use_numba = bool(use_numba)
        self.pts = pts if device is None else pts.to(device)
        self.interpolation = interpolation
        self.n_sets = int(n_sets)
        self.L = pts.L
        self.S = self.L + 3
        self.X = self.L // 2 + 2
        self.c = self.L // 2 + 1
        self.device = self.pts.kx.device
        n = self.S * self.S * self.X
        self.grids = [torch.zeros(3 * n, dtype=torch.float32, device=self.device) for _ in range(self.n_sets)]
        self.count = np.zeros(self.n_sets, dtype=np.int64)
        self._count_lock = threading.Lock()  # threads inserting different sets share the counts
        # index arithmetic in float32 is exact below 2**24; larger grids use float64
        self._idx_dtype = torch.float32 if n < 2**24 else torch.float64
        S, X = self.S, self.X
        self._corners = torch.tensor([0, 1, X, X + 1, S * X, S * X + 1, S * X + X, S * X + X + 1],
                                     dtype=torch.int64, device=self.device)

    @property
    def grid(self) -> torch.Tensor:
        """All sets' grids, one after the other, as one flat float32 tensor (a copy)."""
        return torch.cat(self.grids)

    def add_grid(self, flat: torch.Tensor | np.ndarray) -> None:
        """Add sums in the layout of :attr:`grid` (e.g. a worker process's), set by set."""
        flat = torch.as_tensor(flat)
        for g, part in zip(self.grids, flat.reshape(self.n_sets, -1)):
            g += part.to(self.device)

    def scale_(self, factor: float) -> None:
        """Multiply every sum by ``factor``, in place (a running average's forgetting)."""
        for g in self.grids:
            g.mul_(float(factor))

    def release(self, set_index: int) -> None:
        """Free one set's grid (its sums can no longer be read or added to)."""
        self.grids[set_index] = torch.zeros(0, dtype=torch.float32, device=self.device)

    def insert(self, values: torch.Tensor, weights: torch.Tensor | None, rotations: torch.Tensor,
               sets: torch.Tensor | np.ndarray | int = 0) -> None:
        """Add a batch of slices (see the class docstring)."""
        b, m = values.shape
        sets_np = np.broadcast_to(np.asarray(sets.cpu() if isinstance(sets, torch.Tensor) else sets, dtype=np.int64),
                                  (b,))
        with self._count_lock:
            np.add.at(self.count, sets_np, 1)
        if weights is None:
            weights = torch.ones((b, m), dtype=torch.float32, device=self.device)
        present = np.unique(sets_np)
        for h in present:
            if len(present) == 1:
                self._insert_set(int(h), values, weights, rotations)
                continue
            rows = torch.as_tensor(np.flatnonzero(sets_np == h), device=values.device)
            self._insert_set(int(h), values[rows], weights[rows], rotations[rows.to(rotations.device)])

    def _insert_set(self, h: int, values: torch.Tensor, weights: torch.Tensor, rotations: torch.Tensor) -> None:
        """Add slices that all belong to set ``h``."""
        S, X, c = self.S, self.X, float(self.c)
        grid = self.grids[h]
        kernel = _numba_kernel() if self.device.type == "cpu" and self.use_numba else None
        if kernel is not None:
            kernel(grid.numpy(), values.to(torch.complex64).contiguous().numpy(),
                   weights.to(torch.float32).contiguous().numpy(), rotations.to(torch.float32).contiguous().numpy(),
                   self.pts.kx.contiguous().numpy(), self.pts.ky.contiguous().numpy(), S, X, np.float32(c),
                   self.interpolation == "nearest")
            return
        # torch path (GPU, or CPU without numba): the same sums with index arithmetic and scatters
        coords = slice_coordinates(self.pts, rotations.to(self.device)).to(self._idx_dtype)
        mirror = coords[..., 0] < 0  # Friedel: store F(−k) = conj F(k) on the kx ≥ 0 half
        coords = torch.where(mirror[..., None], -coords, coords)
        values = torch.where(mirror, values.conj(), values)
        offset = c * (S * X + X)  # the centre of y and z
        if self.interpolation == "nearest":
            g = torch.floor(coords + 0.5)
            idx = ((g[..., 2] * S + g[..., 1]) * X + g[..., 0] + offset).to(torch.int64).reshape(-1)
            self._scatter(grid, idx, values.reshape(-1), weights.reshape(-1))
            return
        f = torch.floor(coords)
        t = (coords - f).to(torch.float32)  # (B, M, 3) fractional parts x, y, z
        base = ((f[..., 2] * S + f[..., 1]) * X + f[..., 0] + offset).to(torch.int64)  # (B, M)
        idx = (base[..., None] + self._corners).reshape(-1)
        tx, ty, tz = t[..., 0:1], t[..., 1:2], t[..., 2:3]
        wxy = torch.cat([(1 - ty) * (1 - tx), (1 - ty) * tx, ty * (1 - tx), ty * tx], -1)  # (B, M, 4)
        w = torch.cat([wxy * (1 - tz), wxy * tz], -1)  # (B, M, 8) in corner order (z, y, x bits)
        self._scatter(grid, idx, (values[..., None] * w).reshape(-1), (weights[..., None] * w).reshape(-1))

    @staticmethod
    def _scatter(grid: torch.Tensor, idx: torch.Tensor, values: torch.Tensor, weights: torch.Tensor) -> None:
        i3 = 3 * idx
        grid.scatter_add_(0, i3, values.real.contiguous())
        grid.scatter_add_(0, i3 + 1, values.imag.contiguous())
        grid.scatter_add_(0, i3 + 2, weights)

    def merge(self, other: "Backprojector") -> None:
        """Add another backprojector's sums (same geometry), e.g. from a worker process."""
        for g, o in zip(self.grids, other.grids):
            g += o.to(self.device)
        self.count += other.count

    def fold_margin(self) -> None:
        """Move the y and z margins onto their periodic partners, in place: afterwards every sum lies in
        the window of indices ``1 … L`` of those axes (frequencies ``−L/2 … L/2 − 1``), the margin is zero.

        Index ``i`` holds frequency ``i − c`` (``c = L/2 + 1``); the margin is index 0 (frequency
        ``−L/2 − 1 ≡ L/2 − 1``: index ``L``) and indices ``L + 1, L + 2`` (``L/2, L/2 + 1 ≡ −L/2,
        −L/2 + 1``: indices 1, 2). Idempotent, and slices inserted afterwards fold at the next call.
        In place because a folded copy per axis held grid-sized temporaries, the peak memory of a
        reconstruction. (The x margin, frequency L/2 + 1, is folded by :meth:`_summed`: its partner
        is conjugated.) A released set is skipped.
        """
        L = self.L
        for grid in self.grids:
            if grid.numel() == 0:
                continue
            g = grid.reshape(self.S, self.S, self.X, 3)
            for axis in (0, 1):
                g.select(axis, L).add_(g.select(axis, 0))
                g.select(axis, 0).zero_()
                g.narrow(axis, 1, 2).add_(g.narrow(axis, L + 1, 2))
                g.narrow(axis, L + 1, 2).zero_()

    def _summed(self, sets: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(Σ w·F complex, Σ w) of ``sets`` on the ``rfftn`` half grid (L, L, L//2 + 1), FFT order, Hermitian-complete.

        The mirror stores, for kx ≥ 1, exactly the Hermitian sums ``G(k) + conj G(−k)`` of the full
        grid; the planes kx = 0 and kx = L/2 (which are their own mirror images) hold each pair
        once and get ``H(0, k') = M(0, k') + conj M(0, −k')``; the x margin (kx = L/2 + 1 ≡
        −(L/2 − 1)) is added, conjugated and negated in y and z, to kx = L/2 − 1.
        """
        S, L, X = self.S, self.L, self.X
        h = L // 2
        self.fold_margin()
        sel = list(range(self.n_sets)) if sets is None else list(sets)
        if any(self.grids[s].numel() == 0 for s in sel):
            raise ValueError(f"set(s) {sel}: a released set has no sums")
        d = torch.empty((L, L, X), dtype=torch.complex64, device=self.device)
        w = torch.empty((L, L, X), dtype=torch.float32, device=self.device)
        dr = torch.view_as_real(d)
        # window j (indices 1 … L) holds frequency j − L/2: FFT order (ifftshift of z and y) is the two halves
        # swapped, copied quadrant by quadrant into d and w (no grid-sized temporary)
        swap = ((slice(0, h), slice(h, L)), (slice(h, L), slice(0, h)))
        for k, s in enumerate(sel):
            g = self.grids[s].reshape(S, S, X, 3)[1:L + 1, 1:L + 1]
            for out_z, in_z in swap:
                for out_y, in_y in swap:
                    src = g[in_z, in_y]
                    if k == 0:
                        dr[out_z, out_y] = src[..., :2]
                        w[out_z, out_y] = src[..., 2]
                    else:
                        dr[out_z, out_y] += src[..., :2]
                        w[out_z, out_y] += src[..., 2]
        d[..., h - 1] += torch.conj(_negate_yz(d[..., h + 1]))
        w[..., h - 1] += _negate_yz(w[..., h + 1])
        for plane in (0, h):
            d[..., plane] = d[..., plane] + torch.conj(_negate_yz(d[..., plane]))
            w[..., plane] = w[..., plane] + _negate_yz(w[..., plane])
        return d[..., : h + 1], w[..., : h + 1]  # views: the margin column costs less than a copy of the grid

    def full_grids(self, sets: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed, Hermitian full grids (L, L, L) in FFT order (z, y, x) of ``sets`` (all by default)."""
        dh, wh = self._summed(sets)
        L, h = self.L, self.L // 2
        rest = torch.arange(h + 1, L, device=self.device)  # kx = h+1 … L−1 ≡ −(L − kx): conj of kx' = L − kx at −(kz, ky)
        d = torch.cat([dh, torch.conj(_negate_yz(dh[..., L - rest]))], -1)
        w = torch.cat([wh, _negate_yz(wh[..., L - rest])], -1)
        return d, w

    def half_grids(self, sets: list[int] | None = None, operators: np.ndarray | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same sums on the ``rfftn`` half grid (L, L, L//2 + 1), optionally symmetrised (:mod:`cryomap.reconstruct.symmetry`)."""
        L = self.L
        if operators is not None and len(operators) > 1:
            from cryomap.reconstruct.symmetry import symmetrise_grid

            d, w = self.full_grids(sets)
            sym = symmetrise_grid(torch.stack([d.real, d.imag, w]), operators)
            del d, w
            return torch.complex(sym[0], sym[1])[..., : L // 2 + 1].contiguous(), sym[2][..., : L // 2 + 1].contiguous()
        return self._summed(sets)


class SliceExtractor:
    """Central slices of a volume's padded 3D DFT at arbitrary poses (trilinear), for projection matching.

    The volume (D, D, D) is zero-padded about its centre to ``L = pad × D``, divided by the
    trilinear gridding correction (``sinc²``, so interpolated slices are unbiased), transformed
    and fftshifted once. :meth:`slices` returns the samples ``pts`` (B, M) complex64 of the
    projections at RELION matrices ``A`` (B, 3, 3), the same samples :func:`image_dfts` gives
    for images (so ``image ≈ CTF · slice`` sample by sample).
    """

    def __init__(self, volume: torch.Tensor | np.ndarray, pad: float = 2.0, device=None) -> None:
        vol = torch.as_tensor(np.asarray(volume, dtype=np.float32) if not isinstance(volume, torch.Tensor) else volume,
                              dtype=torch.float32, device=device)
        if vol.ndim != 3 or len(set(vol.shape)) != 1:
            raise ValueError(f"volume must be cubic (D, D, D), got {tuple(vol.shape)}")
        d = int(vol.shape[0])
        L = padded_size(d, pad)
        self.box, self.L = d, L
        vol = vol / gridding_correction(d, L, "trilinear", vol.device)
        padded = vol.new_zeros((L, L, L))
        o = L // 2 - d // 2
        padded[o:o + d, o:o + d, o:o + d] = vol
        ft = torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(padded)))
        # (1, 2, L, L, L): real and imaginary parts as channels for grid_sample
        self.grid = torch.stack([ft.real, ft.imag])[None].contiguous()
        self.device = vol.device

    def slices(self, pts: SlicePoints, rotations: torch.Tensor) -> torch.Tensor:
        """Samples (B, M) complex64 of the projections at RELION matrices ``rotations`` (B, 3, 3)."""
        if pts.L != self.L:
            raise ValueError(f"sample set of a {pts.L} grid for a {self.L} volume grid")
        coords = slice_coordinates(pts.to(self.device), rotations.to(self.device))  # (B, M, 3) xyz, centred
        b, m, _ = coords.shape
        # grid_sample with align_corners=True maps −1…1 to voxel 0…L−1; the centre (k = 0) is voxel L//2
        norm = (coords + self.L // 2) * (2.0 / (self.L - 1)) - 1.0
        out = torch.nn.functional.grid_sample(self.grid, norm.reshape(1, b, m, 1, 3), mode="bilinear",
                                              padding_mode="zeros", align_corners=True)
        out = out.reshape(2, b, m)
        return torch.complex(out[0], out[1])
