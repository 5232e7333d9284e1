"""Resample a map to another voxel size by cropping or zero-padding its Fourier transform.

The crop/pad itself is ``torch_fourier_rescale.fourier_rescale_3d`` (teamtomo). Two things are
added by hand here, because the library leaves them to the caller:

* **Exact voxel size.** Fourier rescaling changes the grid from ``n`` to ``m`` voxels, so the new
  voxel size is ``n * apix_in / m``; with ``m = round(n * apix_in / apix_out)`` that is only close
  to the one asked for. The map is first zero-padded in real space to ``n_pad >= n`` voxels,
  chosen so that ``n_pad * apix_in / apix_out`` is (nearly) an integer; the position error this
  leaves at the edge of the new grid is below :data:`MAX_EDGE_ERROR` voxel.
* **Centring.** The library keeps voxel ``n/2`` of an even grid on voxel ``m/2`` of the new one
  (for odd sizes it uses ``(n+1)/2``); both padded and new sizes are kept even, and the original
  map's centre voxel ``n//2`` is placed on ``n_pad/2``. So the physical position of voxel
  ``n//2`` of the input is the position of voxel ``m//2`` of the output.
"""

from __future__ import annotations

import numpy as np

#: Largest tolerated position error, in output voxels, at the edge of the resampled grid.
MAX_EDGE_ERROR = 0.05


def padded_size(n: int, ratio: float, max_extra: int | None = None) -> tuple[int, int]:
    """Even ``(n_pad, m)``: ``n_pad >= n`` with ``m = n_pad * ratio`` an even integer (near enough).

    ``ratio`` is ``apix_in / apix_out``. The smallest ``n_pad`` whose edge error
    ``|n_pad * ratio - m| / 2`` (in output voxels) is below :data:`MAX_EDGE_ERROR` is taken;
    if none is found within ``max_extra`` voxels (default ``max(64, n // 4)``) the best one is.
    """
    if max_extra is None:
        max_extra = max(64, n // 4)
    start = n + (n % 2)
    best: tuple[float, int, int] | None = None
    for n_pad in range(start, start + max_extra + 1, 2):
        exact = n_pad * ratio
        m = max(2, 2 * int(round(exact / 2)))
        err = abs(exact - m) / 2
        if best is None or err < best[0] - 1e-12:
            best = (err, n_pad, m)
        if err <= MAX_EDGE_ERROR:
            return n_pad, m
    assert best is not None
    return best[1], best[2]


def resample_with_origin(
    data: np.ndarray,
    apix_in: float,
    apix_out: float,
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Resample ``data`` (z, y, x) from ``apix_in`` to ``apix_out`` Å/voxel; also return the new origin.

    ``origin`` is the MRC origin in Å (x, y, z). The returned origin keeps every feature at the
    same physical position: input voxel ``n//2`` and output voxel ``m//2`` lie at the same place.
    Not nearest neighbour: the band limit is kept (downsampling drops frequencies beyond the
    new Nyquist; upsampling adds zeros), so values are band-limited interpolations.
    """
    import torch
    from torch_fourier_rescale import fourier_rescale_3d

    if apix_in <= 0 or apix_out <= 0:
        raise ValueError(f"voxel sizes must be positive, got {apix_in} → {apix_out} Å/px")
    arr = np.asarray(data, dtype=np.float32)
    if arr.ndim != 3:
        raise ValueError(f"expected a 3D map, got shape {arr.shape}")
    if np.isclose(apix_in, apix_out, rtol=1e-6):
        return arr.copy(), tuple(origin)  # type: ignore[return-value]
    ratio = apix_in / apix_out
    sizes = [padded_size(n, ratio) for n in arr.shape]
    pads = [(n_pad // 2 - n // 2, n_pad - n - (n_pad // 2 - n // 2)) for n, (n_pad, _) in zip(arr.shape, sizes)]
    padded = np.pad(arr, pads) if any(sum(p) for p in pads) else arr
    out, _ = fourier_rescale_3d(
        torch.from_numpy(np.ascontiguousarray(padded)),
        target_shape=tuple(m for _, m in sizes),
    )
    result = out.to(torch.float32).numpy()
    # centre voxel of the input (z, y, x) → centre voxel of the output; MRC origin is (x, y, z)
    shift_zyx = [(n // 2) * apix_in - (m // 2) * apix_out for n, (_, m) in zip(arr.shape, sizes)]
    new_origin = (origin[0] + shift_zyx[2], origin[1] + shift_zyx[1], origin[2] + shift_zyx[0])
    return result, new_origin


def resample_map(data: np.ndarray, apix_in: float, apix_out: float) -> np.ndarray:
    """Resample a map (z, y, x) from ``apix_in`` to ``apix_out`` Å/voxel in Fourier space.

    See :func:`resample_with_origin` (which also returns the shifted MRC origin).
    """
    return resample_with_origin(data, apix_in, apix_out)[0]


def resample_support(support: np.ndarray, apix_in: float, apix_out: float, out_shape: tuple[int, ...]) -> np.ndarray:
    """Where a map resampled to ``out_shape`` (by :func:`resample_with_origin`) may hold density.

    ``support`` marks the input's non-zero voxels. An output voxel belongs to the result when
    trilinear interpolation of ``support`` at its position (input voxel ``n//2`` and output voxel
    ``m//2`` coincide, as in :func:`resample_with_origin`) is non-zero, grown by one voxel so
    the band-limited edge of the density is kept. Written here because Fourier resampling turns
    exact zeros (solvent outside a simulated or masked map) into ringing of ~1e-4 of the peak,
    which real-space resampling (ChimeraX, as cryo2struct uses) would leave at zero.
    """
    from scipy import ndimage

    sup = np.asarray(support, dtype=np.float32)
    ratio = apix_out / apix_in
    axes = [n // 2 + (np.arange(m) - m // 2) * ratio for n, m in zip(sup.shape, out_shape)]
    coords = np.meshgrid(*axes, indexing="ij")
    inside = ndimage.map_coordinates(sup, coords, order=1, mode="constant", cval=0.0) > 0
    return ndimage.binary_dilation(inside, iterations=1)
