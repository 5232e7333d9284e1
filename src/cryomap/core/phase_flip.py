"""Phase flipping: each image's Fourier transform multiplied by the sign of its own CTF.

``F'(k) = F(k) · sign(CTF(k))`` (RELION's ``--phase_flip``; the sign convention of
:mod:`cryomap.core.ctf_params`, where a zero counts as positive). The box is filtered as it is,
without padding, as RELION, ASPIRE and cryoDRGN do for particles.

Why not torch and torch-ctf as :func:`cryomap.core.ctf.wiener_images` does: the sign needs no
envelope and no torch, and importing torch and torch-ctf took 2.5 s and ~285 MiB of a 7 s,
6,000-particle extraction with ``--phase-flip`` — more than all its transforms. So the CTF comes
from the numpy formula (:func:`cryomap.core.ctf_params.ctf_grid`, checked against torch-ctf in
tests/test_simulate_ctf.py) and the transforms from OpenCV's ``dft``/``idft``, one image at a
time in :func:`cryomap.core.threads.for_each_image` (OpenCV releases the GIL). Even-sized images
use OpenCV's packed real spectrum (CCS), half the work of a complex one; odd sizes the full
complex spectrum.
"""

from __future__ import annotations

import numpy as np

from cryomap.core.ctf_params import CtfParams, ctf_grid, ctf_phase_coefficients, unique_ctfs

#: Bytes of sign patterns rendered ahead (one per distinct CTF); beyond it each image renders its own.
PRERENDER_BYTES = 32 << 20


def ccs_layout(half: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A real filter on the ``rfft`` grid (h, w//2 + 1) laid out like OpenCV's packed (CCS) spectrum of an
    (h, w) image, both even, so that ``cv2.dft(image) * layout`` multiplies every coefficient by the filter.

    OpenCV packs the kx = 0 and kx = w/2 columns as Re(0), (Re, Im)(1) … (Re, Im)(h/2 − 1), Re(h/2)
    down the rows, and each other column kx as two columns (Re, Im) with every row ky.
    """
    h, w = shape
    out = np.empty((h, w), dtype=np.float32)
    out[:, 1:w - 1:2] = half[:, 1:w // 2]
    out[:, 2:w - 1:2] = half[:, 1:w // 2]
    for col_out, col_in in ((0, 0), (w - 1, w // 2)):
        c = half[:, col_in]
        out[0, col_out] = c[0]
        out[1:h - 1:2, col_out] = c[1:h // 2]
        out[2:h - 1:2, col_out] = c[1:h // 2]
        out[h - 1, col_out] = c[h // 2]
    return out


def _sign_filter(coef: np.ndarray, quartic: float, apix: float, shape: tuple[int, int]) -> np.ndarray:
    """sign(CTF) of one particle in the layout :func:`phase_flip_images` multiplies the DFT by."""
    h, w = shape
    even = h % 2 == 0 and w % 2 == 0
    sign = np.where(ctf_grid(coef, quartic, apix, shape, rfft=even) < 0, -1.0, 1.0).astype(np.float32)
    if even:
        return ccs_layout(sign, shape)
    return np.repeat(sign[:, :, None], 2, axis=2)  # (h, w, 2): re and im of the complex spectrum


class PhaseFlip:
    """sign(CTF) of a set of particles (``params``, ``apix`` Å/px, images of ``shape`` (h, w)), applied one
    image at a time with :meth:`apply`: three OpenCV calls (``dft``, ``multiply``, ``idft``).

    A micrograph's particles usually share one CTF: each distinct CTF's sign pattern is rendered
    once, up to :data:`PRERENDER_BYTES`; beyond that each image renders its own.
    """

    def __init__(self, params: CtfParams, apix: float, shape: tuple[int, int]) -> None:
        import cv2

        self.n, self.apix, self.shape = len(params), float(apix), (int(shape[0]), int(shape[1]))
        distinct, self.index = unique_ctfs(params)
        self.unique, self.quartic = ctf_phase_coefficients(distinct)
        h, w = self.shape
        even = h % 2 == 0 and w % 2 == 0
        self.flags = 0 if even else cv2.DFT_COMPLEX_OUTPUT
        self.back = cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE
        self.filters = None
        if len(self.unique) * h * w * 4 * (1 if even else 2) <= PRERENDER_BYTES:
            self.filters = [_sign_filter(u, self.quartic, self.apix, self.shape) for u in self.unique]

    def apply(self, k: int, src: np.ndarray, dst: np.ndarray) -> None:
        """Write particle ``k``'s image ``src`` (h, w) float32 (contiguous or a strided view) × sign(CTF) into
        ``dst`` (h, w) float32, which may be ``src`` itself."""
        import cv2

        j = self.index[k]
        f = self.filters[j] if self.filters is not None else _sign_filter(self.unique[j], self.quartic, self.apix, self.shape)
        spectrum = cv2.dft(src, flags=self.flags)
        cv2.multiply(spectrum, f, dst=spectrum)
        cv2.idft(spectrum, dst=dst, flags=self.back)


def phase_flip_images(images: np.ndarray, params: CtfParams, apix: float, threads: int | None = None) -> np.ndarray:
    """Images (N, H, W) × sign(CTF) in Fourier space, each by its own CTF (``apix`` Å/px); float32, a new array.

    ``threads``: as :func:`cryomap.core.threads.for_each_image` (None: :func:`~cryomap.core.threads.image_threads`, at every image size); the bytes
    do not depend on it.
    """
    from cryomap.core.threads import for_each_image

    imgs = np.ascontiguousarray(images, dtype=np.float32)
    if imgs.ndim == 2:
        imgs = imgs[None]
    if len(params) != len(imgs):
        raise ValueError(f"{len(imgs)} images but {len(params)} CTFs")
    flip = PhaseFlip(params, apix, imgs.shape[1:])
    out = np.empty_like(imgs)
    # threaded at every size: three long C calls per image (128²: 0.5 against 0.65 s per 6,000)
    for_each_image(lambda k: flip.apply(k, imgs[k], out[k]), len(imgs), threads)
    return out
