"""Fourier-space image primitives every stage shares: sub-pixel shifts, band-limited resizing,
centred padding. Images are (N, D, D) or (k, h, w) arrays, x the fast axis, centre at pixel
``D // 2`` (RELION's logical origin).
"""

from __future__ import annotations

import numpy as np
import torch


def fourier_shift_images(images: torch.Tensor, shifts_px: torch.Tensor) -> torch.Tensor:
    """Shift images (N, D, D) by ``shifts_px`` (N, 2) = (dx, dy) pixels (content moves to +x, +y).

    A phase ramp on the full FFT (exact sub-pixel, periodic). Written here rather than with
    torch-fourier-shift because that package's shift sign/centre convention would have to be
    re-derived for every caller; this one is three lines and tested against integer rolls.
    """
    d = images.shape[-1]
    f = torch.fft.fftfreq(d, dtype=torch.float64)
    dx = shifts_px[:, 0].to(torch.float64)[:, None, None]
    dy = shifts_px[:, 1].to(torch.float64)[:, None, None]
    phase = torch.exp(-2j * torch.pi * (f[None, :, None] * dy + f[None, None, :] * dx))
    out = torch.fft.ifft2(torch.fft.fft2(images.to(torch.float64)) * phase).real
    return out.to(images.dtype)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize images (k, h, w) to (k, size, size) by cropping/zero-padding their Fourier transform.

    ``torch_fourier_rescale.fourier_rescale_2d`` does the crop/pad (a band-limited resize, no
    aliasing when shrinking: frequencies beyond the new Nyquist are dropped; the mean is kept).
    The pixel size changes by ``h / size``. Non-square images are first centre-cropped to their
    shorter side. Returns float32; a no-op when already ``size``×``size``.

    Centre: pixel ``n//2`` of the input lands on pixel ``size//2`` of the output (RELION's centre,
    even and odd sizes). The library centres an odd axis on ``(n+1)//2`` instead, so odd input and
    output sizes are shifted by one pixel around it; the images are periodic to the DFT, so the
    (circular) shift is exact.
    """
    arr = np.asarray(images, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    k, h, w = arr.shape
    if h != w:
        s = min(h, w)
        arr = arr[:, (h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        h = w = s
    if h == size:
        return np.ascontiguousarray(arr)
    from torch_fourier_rescale import fourier_rescale_2d

    if h % 2:
        arr = np.roll(arr, 1, axis=(-2, -1))  # pixel h//2 → (h+1)//2, the library's centre
    with torch.no_grad():
        out, _ = fourier_rescale_2d(torch.from_numpy(np.ascontiguousarray(arr)), target_shape=(size, size))
    res = out.numpy().astype(np.float32, copy=False)
    if size % 2:
        res = np.ascontiguousarray(np.roll(res, -1, axis=(-2, -1)))  # (size+1)//2 → size//2
    return res


def pad_centred(images: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad (N, D, D) images to (N, size, size) keeping pixel D//2 at size//2."""
    d = images.shape[-1]
    if size == d:
        return images
    out = images.new_zeros(images.shape[:-2] + (size, size))
    o = size // 2 - d // 2
    out[..., o:o + d, o:o + d] = images
    return out


def crop_centred(images: torch.Tensor, size: int) -> torch.Tensor:
    """Inverse of :func:`pad_centred`: the (N, size, size) window whose pixel size//2 is D//2."""
    d = images.shape[-1]
    if size == d:
        return images
    o = d // 2 - size // 2
    return images[..., o:o + size, o:o + size]
