"""Averaged power spectra of micrographs: overlapping tiles, periodogram averaging (Welch), per patch.

Layout: spectra are ``(T, T//2 + 1)`` float tensors in ``torch.fft.rfft2`` order (DC at ``[0, 0]``,
row ``i`` is frequency ``fftfreq(T)[i] / apix``, column ``j`` is ``j / (T apix)``, 1/Å), the layout
:func:`cryomap.core.ctf.ctf_2d` returns, so a CTF and a spectrum line up pixel for pixel.

Each tile (``T`` px square, tiles overlapping by half) has its mean removed and a Tukey taper
(cosine edges over 10 % of the tile on each side) applied before its periodogram, so the tile
edges do not print a cross on the spectrum; the periodograms are averaged. Tiles are read from
the (memory-mapped) micrograph one row of tiles at a time, so memory stays at a few rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cryomap.errors import BadInputError

#: Share of the tile, on each side, over which the taper rises from 0 to 1.
TAPER = 0.1


def tile_starts(length: int, tile: int) -> np.ndarray:
    """Start pixels of tiles of ``tile`` px overlapping by half along an axis of ``length`` px, the last flush with the end."""
    if length < tile:
        return np.zeros(0, dtype=np.int64)
    step = max(1, tile // 2)
    starts = np.arange(0, length - tile + 1, step, dtype=np.int64)
    if starts[-1] != length - tile:
        starts = np.append(starts, length - tile)
    return starts


def tukey_window(tile: int, alpha: float = TAPER) -> torch.Tensor:
    """2D separable Tukey window (tile, tile): 1 in the middle, cosine edges over ``alpha`` of the tile per side."""
    n = np.arange(tile, dtype=np.float64)
    edge = max(1, int(round(alpha * tile)))
    w = np.ones(tile)
    ramp = 0.5 * (1 - np.cos(np.pi * (n[:edge] + 0.5) / edge))
    w[:edge] = ramp
    w[tile - edge:] = ramp[::-1]
    w2 = np.outer(w, w)
    w2 /= np.sqrt((w2**2).mean())  # keeps the periodogram's scale (unit-variance white noise → 1)
    return torch.as_tensor(w2, dtype=torch.float32)


@dataclass
class Spectra:
    """Averaged power spectra of one micrograph.

    ``total`` (T, T//2+1): the mean periodogram over all tiles. ``patches`` (P, T, T//2+1) or
    None: the mean over the tiles whose centre lies in each patch, patches numbered row-major
    (``p = row * nx + col``) over a ``ny × nx`` grid; ``patch_centres`` (P, 2) are the (x, y) px
    centres of the patch regions and ``patch_tiles`` (P,) how many tiles each averaged.
    """

    total: torch.Tensor
    n_tiles: int
    tile: int
    apix: float
    shape: tuple[int, int]
    patches: torch.Tensor | None = None
    patch_grid: tuple[int, int] | None = None  # (ny, nx)
    patch_centres: np.ndarray | None = None
    patch_tiles: np.ndarray | None = None


def check_micrograph(image: np.ndarray, tile: int, path: Path | str | None = None) -> None:
    """Raise :class:`BadInputError` for a micrograph smaller than a tile or a flat (constant) one."""
    rows, cols = image.shape
    if rows < tile or cols < tile:
        raise BadInputError(f"micrograph of {cols}x{rows} px is smaller than the {tile} px tile; use a smaller --tile",
                            path)
    # a cheap look at a subsample first (a memory-mapped 4096² image is not read twice)
    sub = np.asarray(image[:: max(1, rows // 256), :: max(1, cols // 256)], dtype=np.float64)
    if np.ptp(sub) > 0:
        return
    full = np.asarray(image, dtype=np.float64)
    if np.ptp(full) == 0:
        raise BadInputError(f"the micrograph is constant (every pixel {float(full.flat[0]):g}): no power spectrum to fit",
                            path)


def average_spectra(
    image: np.ndarray,
    apix: float,
    tile: int = 512,
    patches: tuple[int, int] | None = None,
    path: Path | str | None = None,
) -> Spectra:
    """Mean periodogram of half-overlapping ``tile``-px tiles of ``image`` (rows, cols), and per patch.

    ``apix`` Å/px. ``patches`` ``(ny, nx)``: also average the tiles whose centre falls in each
    cell of a ``ny × nx`` grid over the micrograph (every cell must hold at least one tile).
    Raises :class:`BadInputError` for an image smaller than a tile or a flat one.
    """
    check_micrograph(image, tile, path)
    rows, cols = image.shape
    ys, xs = tile_starts(rows, tile), tile_starts(cols, tile)
    window = tukey_window(tile)
    total = torch.zeros((tile, tile // 2 + 1), dtype=torch.float32)
    patch_acc = patch_count = None
    if patches is not None:
        ny, nx = patches
        if ny < 1 or nx < 1:
            raise BadInputError(f"--patches needs at least 1x1, got {nx}x{ny}", path)
        cy = np.minimum(((ys + tile / 2) / rows * ny).astype(np.int64), ny - 1)
        cx = np.minimum(((xs + tile / 2) / cols * nx).astype(np.int64), nx - 1)
        patch_acc = torch.zeros((ny * nx, tile, tile // 2 + 1), dtype=torch.float32)
        patch_count = np.zeros(ny * nx, dtype=np.int64)
    for iy, y0 in enumerate(ys):
        strip = torch.as_tensor(np.array(image[y0:y0 + tile], dtype=np.float32))  # (tile, cols), one copy
        tiles = torch.stack([strip[:, x0:x0 + tile] for x0 in xs])  # (nx_tiles, tile, tile)
        tiles = tiles - tiles.mean(dim=(1, 2), keepdim=True)
        power = torch.view_as_real(torch.fft.rfft2(tiles * window)).square_().sum(-1) / (tile * tile)
        total += power.sum(0)
        if patch_acc is not None:
            cells = cy[iy] * patches[1] + cx
            patch_acc.index_add_(0, torch.as_tensor(cells), power)
            np.add.at(patch_count, cells, 1)
    n_tiles = len(ys) * len(xs)
    total = total / n_tiles
    if float(total[1:].sum()) <= 0 or not torch.isfinite(total).all():
        raise BadInputError("the micrograph is flat (no variation within a tile): no power spectrum to fit", path)
    out = Spectra(total=total, n_tiles=n_tiles, tile=tile, apix=float(apix), shape=(rows, cols))
    if patch_acc is not None:
        ny, nx = patches
        if (patch_count == 0).any():
            raise BadInputError(
                f"--patches {nx}x{ny} leaves patches without a whole {tile} px tile in a {cols}x{rows} px micrograph; "
                "use fewer patches or a smaller --tile", path)
        out.patches = patch_acc / torch.as_tensor(patch_count, dtype=torch.float32)[:, None, None]
        out.patch_grid = (ny, nx)
        gy, gx = np.meshgrid((np.arange(ny) + 0.5) * rows / ny, (np.arange(nx) + 0.5) * cols / nx, indexing="ij")
        out.patch_centres = np.column_stack([gx.ravel(), gy.ravel()]) - 0.5  # pixel-centre coordinates
        out.patch_tiles = patch_count
    return out


def crop_spectrum(spectrum: torch.Tensor, size: int) -> torch.Tensor:
    """Keep the lowest frequencies of an rfft-layout spectrum (..., T, T//2+1) as (..., size, size//2+1).

    The result is the rfft layout of a ``size``-px image at pixel size ``apix · T / size``, so
    ``ctf_2d(shape=(size, size), apix=apix * T / size)`` gives the CTF at exactly its frequencies.
    """
    t = spectrum.shape[-2]
    if size >= t:
        return spectrum
    half = size // 2
    rows = torch.cat([spectrum[..., :half, :], spectrum[..., t - half:, :]], dim=-2)
    return rows[..., : half + 1].contiguous()


def frequency_grid(size: int, apix: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatial frequency |s| (1/Å) and angle θ (radians from the x axis toward y) of an rfft grid (size, size//2+1)."""
    fy = torch.fft.fftfreq(size, d=apix, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(size, d=apix, dtype=torch.float64)[None, :]
    s = torch.sqrt(fy**2 + fx**2)
    theta = torch.atan2(fy.expand_as(s), fx.expand_as(s))
    return s.to(torch.float32), theta.to(torch.float32)


def radial_profile(spectrum: torch.Tensor, bins: torch.Tensor, n_bins: int, mask: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``spectrum`` (..., H, W) over pixels of each bin index (H, W) in [0, n_bins); returns (profile (..., n_bins), counts (n_bins,)).

    Pixels outside ``mask`` (or with a bin outside the range) are left out; empty bins are 0.
    """
    flat_bins = bins.reshape(-1).long()
    keep = (flat_bins >= 0) & (flat_bins < n_bins)
    if mask is not None:
        keep &= mask.reshape(-1)
    idx = flat_bins[keep]
    counts = torch.bincount(idx, minlength=n_bins).to(torch.float32)
    values = spectrum.reshape(*spectrum.shape[:-2], -1)[..., keep]
    lead = values.shape[:-1]
    values = values.reshape(-1, values.shape[-1])
    sums = torch.zeros((values.shape[0], n_bins), dtype=values.dtype)
    sums.index_add_(1, idx, values)
    profile = sums / counts.clamp(min=1)
    return profile.reshape(*lead, n_bins), counts
