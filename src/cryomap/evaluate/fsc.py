"""Fourier shell correlation (FSC), resolution at a threshold, and the mask-corrected FSC.

Shell definition: for a cubic box of D voxels there are D//2 + 1 shells; every Fourier voxel
(of the full transform) belongs to shell ``k = round(|k_vec| * D)``, i.e. shell ``k`` holds the
frequencies within half a shell of ``k / D`` cycles/voxel (``k / (D * apix)`` cycles/Å), the
convention of RELION and EMAN; voxels beyond Nyquist (``k > D//2``) are ignored. Shell 0 is the
mean. ``n_voxels`` counts the voxels per shell; ``1 / sqrt(n_voxels)`` is the spread of the FSC
of two independent noise maps in that shell. (torch_fourier_shell_correlation spreads each voxel
over the two nearest shells with linear weights, which smears a sharp cut-off by about one shell
and biases the crossing; so the sums are done here with hard shells, on the half transform with
Hermitian weights, using torch FFTs.)

Crossing rule: the resolution at threshold ``t`` is taken at the first shell ``k >= 1`` whose
FSC is below ``t``; the frequency is interpolated linearly between shells ``k-1`` and ``k`` and
reported as ``1 / frequency`` in Å. A curve that never falls below ``t`` is reported at
Nyquist (``2 * apix``) with ``crossed = False``.

Mask correction (Chen et al. 2013, Ultramicroscopy 135:24): phases of both maps are randomised
independently beyond a shell (default: the first shell where the unmasked FSC falls below
0.8, RELION's choice), the randomised maps are masked, and beyond that shell
``FSC_true = (FSC_masked - FSC_rand) / (1 - FSC_rand)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


def _as_tensor(volume: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(volume), dtype=torch.float64)


def _check_cube(a: np.ndarray, b: np.ndarray | None = None) -> int:
    if a.ndim != 3 or len(set(a.shape)) != 1:
        raise ValueError(f"FSC needs a cubic 3D map, got shape {a.shape}")
    if b is not None and b.shape != a.shape:
        raise ValueError(f"maps differ in shape: {a.shape} vs {b.shape}")
    return int(a.shape[0])


def shell_index_grid(box: int, rfft: bool = False) -> np.ndarray:
    """Integer shell index ``round(|k| * box)`` of every Fourier voxel of a ``box``^3 transform."""
    f = np.fft.fftfreq(box) * box
    fx = np.fft.rfftfreq(box) * box if rfft else f
    r = np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + fx[None, None, :] ** 2)
    return np.rint(r).astype(np.int64)


def shell_voxel_counts(box: int) -> np.ndarray:
    """Fourier voxels (full transform) per shell ``0 … box//2``."""
    idx = shell_index_grid(box)
    return np.bincount(idx.ravel(), minlength=box // 2 + 1)[: box // 2 + 1]


def _hermitian_weights(box: int) -> np.ndarray:
    """Weights of the rfft's last axis so that sums over the half transform equal full sums."""
    w = np.full(box // 2 + 1, 2.0)
    w[0] = 1.0
    if box % 2 == 0:
        w[-1] = 1.0
    return w


def fsc_values(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """FSC of two cubic maps, one value per shell ``0 … D//2`` (hard shells, see module docstring)."""
    box = _check_cube(a, b)
    fa = torch.fft.rfftn(_as_tensor(a)).numpy()
    fb = torch.fft.rfftn(_as_tensor(b)).numpy()
    idx = shell_index_grid(box, rfft=True).ravel()
    w = np.broadcast_to(_hermitian_weights(box)[None, None, :], fa.shape).ravel()
    keep = idx <= box // 2
    idx, w = idx[keep], w[keep]
    fa, fb = fa.ravel()[keep], fb.ravel()[keep]
    n = box // 2 + 1
    num = np.bincount(idx, weights=w * (fa * np.conj(fb)).real, minlength=n)
    pa = np.bincount(idx, weights=w * np.abs(fa) ** 2, minlength=n)
    pb = np.bincount(idx, weights=w * np.abs(fb) ** 2, minlength=n)
    den = np.sqrt(pa * pb)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def resolution_at(frequency: np.ndarray, fsc: np.ndarray, threshold: float) -> tuple[float, bool]:
    """Resolution in Å where ``fsc`` first falls below ``threshold`` (linear interpolation).

    ``frequency`` is in cycles/Å per shell with ``frequency[0] == 0``. Returns
    ``(resolution_A, crossed)``; when the curve never falls below, the Nyquist resolution and
    ``False``.
    """
    for k in range(1, len(fsc)):
        if fsc[k] < threshold:
            f0, f1, c0, c1 = frequency[k - 1], frequency[k], fsc[k - 1], fsc[k]
            frac = 0.0 if c0 == c1 else (c0 - threshold) / (c0 - c1)
            frac = float(np.clip(frac, 0.0, 1.0))
            f = f0 + frac * (f1 - f0)
            return (float("inf") if f <= 0 else float(1.0 / f)), True
    return float(1.0 / frequency[-1]), False


@dataclass
class FSCCurve:
    """An FSC curve with its sampling: ``frequency`` cycles/Å per shell, ``apix`` Å/voxel."""

    frequency: np.ndarray
    fsc: np.ndarray
    n_voxels: np.ndarray
    apix: float
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def resolution(self, threshold: float) -> float:
        """Resolution in Å at ``threshold`` (crossing rule in the module docstring)."""
        return resolution_at(self.frequency, self.fsc, threshold)[0]

    def crossed(self, threshold: float) -> bool:
        """Whether the curve falls below ``threshold`` before Nyquist."""
        return resolution_at(self.frequency, self.fsc, threshold)[1]

    def summary(self) -> dict:
        """Resolutions at 0.5 and 0.143 in Å (and whether each was crossed before Nyquist)."""
        out = {}
        for name, t in (("0.5", 0.5), ("0.143", 0.143)):
            res, crossed = resolution_at(self.frequency, self.fsc, t)
            out[f"resolution_fsc{name}_A"] = res
            out[f"crossed_fsc{name}"] = crossed
        out["nyquist_A"] = 2.0 * self.apix
        return out

    def to_rows(self) -> list[dict]:
        """One dict per shell: shell, frequency (1/Å), resolution (Å), fsc, n_voxels, extras."""
        rows = []
        for k in range(len(self.fsc)):
            f = float(self.frequency[k])
            row = {
                "shell": k,
                "frequency_per_A": f,
                "resolution_A": float("inf") if f == 0 else 1.0 / f,
                "fsc": float(self.fsc[k]),
                "n_voxels": int(self.n_voxels[k]),
            }
            for name, values in self.extra.items():
                row[name] = float(values[k])
            rows.append(row)
        return rows


def shell_frequencies(box: int, apix: float) -> np.ndarray:
    """Shell centre frequencies in cycles/Å for a ``box``^3 map at ``apix`` Å/voxel."""
    return np.arange(box // 2 + 1) / (box * apix)


def fsc(a: np.ndarray, b: np.ndarray, apix: float) -> FSCCurve:
    """FSC curve between two maps of the same cubic box at ``apix`` Å/voxel."""
    box = _check_cube(a, b)
    return FSCCurve(shell_frequencies(box, apix), fsc_values(a, b), shell_voxel_counts(box), float(apix))


def randomize_phases_beyond(volume: np.ndarray, shell: int, seed: int) -> np.ndarray:
    """``volume`` with Fourier phases replaced by random ones at shells ``> shell`` (amplitudes kept).

    Uses ``torch_fourier_filter.phase_randomize``; its ``cuton`` is a frequency in cycles/voxel.
    """
    from torch_fourier_filter.phase_randomize import phase_randomize

    box = _check_cube(volume)
    t = torch.as_tensor(np.ascontiguousarray(volume), dtype=torch.float32)
    dft = torch.fft.rfftn(t)  # complex64: the library builds its phase factors in float32
    cuton = (shell + 0.5) / box
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        rnd = phase_randomize(dft, (box, box, box), rfft=True, cuton=cuton)
    return torch.fft.irfftn(rnd, s=(box, box, box)).numpy().astype(np.float64)


def masked_fsc(
    a: np.ndarray,
    b: np.ndarray,
    mask: np.ndarray,
    apix: float,
    randomize_from_shell: int | None = None,
    seed: int = 0,
) -> FSCCurve:
    """Mask-corrected FSC (Chen et al. 2013): the returned ``fsc`` is FSC_true.

    ``extra`` holds ``fsc_unmasked``, ``fsc_masked`` and ``fsc_phase_randomized``.
    ``randomize_from_shell`` defaults to the first shell where the unmasked FSC falls below
    0.8 (at least shell 2). Phases are randomised independently in the two maps.
    """
    box = _check_cube(a, b)
    if mask.shape != a.shape:
        raise ValueError(f"mask shape {mask.shape} differs from map shape {a.shape}")
    unmasked = fsc_values(a, b)
    masked = fsc_values(a * mask, b * mask)
    if randomize_from_shell is None:
        below = np.nonzero(unmasked[1:] < 0.8)[0]
        randomize_from_shell = int(below[0] + 1) if len(below) else box // 2
        randomize_from_shell = max(2, randomize_from_shell)
    k0 = int(randomize_from_shell)
    ra = randomize_phases_beyond(a, k0, seed)
    rb = randomize_phases_beyond(b, k0, seed + 1)
    rand = fsc_values(ra * mask, rb * mask)
    true = masked.copy()
    beyond = np.arange(len(true)) > k0
    denom = np.where(np.abs(1.0 - rand) < 1e-6, 1e-6, 1.0 - rand)
    true[beyond] = (masked[beyond] - rand[beyond]) / denom[beyond]
    curve = FSCCurve(shell_frequencies(box, apix), true, shell_voxel_counts(box), float(apix))
    curve.extra = {"fsc_unmasked": unmasked, "fsc_masked": masked, "fsc_phase_randomized": rand}
    curve.randomize_from_shell = k0  # type: ignore[attr-defined]
    return curve
