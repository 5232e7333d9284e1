"""Gold-standard local refinement: two independent half sets, local pose search, FSC-weighted references.

RELION's auto-refine, reduced to what the particles of this project need:

1. The particles split into two half sets (``rlnRandomSubset``, else a seeded split); each half is
   refined only against its own half map, so their FSC stays an honest resolution estimate.
2. The reference (resampled to the particles' grid when it is on another one,
   :func:`reference_on_grid`) is put on the particles' intensity scale by least squares and
   low-passed to ``initial_resolution_A``; both halves start from it.
3. Each iteration: every particle's pose is searched locally around its current one — a 3×3×3
   cube of rotations ``step`` degrees apart times shifts on a ``step``-scaled grid — against its
   half's reference, using the Fourier samples inside the current resolution (+ a margin), with
   the noise spectrum re-estimated from the residuals; the halves are reconstructed
   (:mod:`cryomap.reconstruct.backproject`); their FSC gives the resolution; the next references
   are the half maps weighted per shell by ``√(2·FSC/(1+FSC))`` (zero beyond the 0.143
   crossing) inside a soft solvent mask (RELION's recipe: low-pass 15 Å, threshold, grow, soft edge).
   The step halves when the resolution stops improving; refinement stops when it has reached
   ``min_step_deg`` and the resolution no longer improves, or after ``iterations``.
4. Output: the final half maps, the full map (both halves, weighted by the mask-corrected FSC),
   the FSC curves unmasked and masked (Chen et al. 2013 phase randomisation) and their 0.143
   resolution, and the refined poses.

Particles without poses first get a global search against the (low-passed) reference.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from cryomap.core.backprojector import SliceExtractor, shift_phases
from cryomap.core.euler import euler_to_matrix, matrix_to_euler
from cryomap.errors import BadInputError
from cryomap.reconstruct.maps import filter_by_shell, fsc_weights, lowpass
from cryomap.reconstruct.search import FourierParticles, load_particles, local_search, noise_spectrum

MIN_REFINE_PARTICLES = 20


@dataclass
class RefineSettings:
    """Parameters of :func:`refine` (units in the names)."""

    symmetry: str = "C1"
    iterations: int = 10
    initial_resolution_A: float = 20.0
    step_deg: float = 3.75
    min_step_deg: float = 0.5
    shift_step_A: float | None = None  # None → half a pixel
    mask_diameter_A: float | None = None
    seed: int = 0
    wiener_constant: float = 0.1

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class RefineIteration:
    """One line of ``log.csv``."""

    iteration: int
    step_deg: float
    search_limit_A: float
    fsc0143_A: float
    fsc05_A: float
    median_change_deg: float
    seconds: float


@dataclass
class RefineResult:
    """Half maps, the final map, poses and the FSC curves (``FSCCurve`` of cryomap.evaluate.fsc)."""

    half1: np.ndarray
    half2: np.ndarray
    full: np.ndarray
    mask: np.ndarray
    apix: float
    rot: np.ndarray
    tilt: np.ndarray
    psi: np.ndarray
    shifts_A: np.ndarray
    sets: np.ndarray
    fsc_unmasked: object
    fsc_masked: object
    log: list[RefineIteration] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def resolution(self) -> float:
        """Gold-standard resolution (Å) at FSC 0.143 of the masked (phase-randomisation corrected) curve."""
        return float(self.fsc_masked.resolution(0.143))


def reference_on_grid(reference: np.ndarray, ref_apix: float, box: int, apix: float) -> tuple[np.ndarray, str | None]:
    """The reference on the particles' grid (``box``³ at ``apix``): Fourier-resampled, then centre-cropped or padded.

    Returns the map and a one-line note when anything was changed (None otherwise).
    """
    from cryomap.labels.resample import resample_map

    ref = np.asarray(reference, np.float32)
    if ref.ndim != 3 or len(set(ref.shape)) != 1:
        raise BadInputError(f"the reference must be a cubic 3D map, got shape {ref.shape}")
    d = ref.shape[0]
    if abs(ref_apix - apix) <= 1e-3 * apix and d == box:
        return ref, None
    note = f"reference {d}³ at {ref_apix:.4g} Å/voxel resampled to the particles' grid, {box}³ at {apix:.4g} Å/voxel"
    if abs(ref_apix - apix) > 1e-3 * apix:
        ref = resample_map(ref, ref_apix, apix)
    n = ref.shape[0]
    out = np.zeros((box, box, box), np.float32)
    s0, d0 = max(0, n // 2 - box // 2), max(0, box // 2 - n // 2)
    m = min(n - s0, box - d0)
    out[d0:d0 + m, d0:d0 + m, d0:d0 + m] = ref[s0:s0 + m, s0:s0 + m, s0:s0 + m]
    return out, note


def _scale_to_particles(parts: FourierParticles, rows: np.ndarray, ref: np.ndarray, rotations: np.ndarray,
                        shifts_px: np.ndarray, r_px: float) -> float:
    """Least-squares factor a with X ≈ a·CTF·P over ``rows`` (samples within ``r_px``)."""
    sel = parts.subset_mask(r_px)
    ext = SliceExtractor(ref)
    from cryomap.reconstruct.search import _sub

    pts = _sub(parts.pts, sel)
    p = ext.slices(pts, torch.as_tensor(rotations, dtype=torch.float32)) * parts.ctf[rows][:, sel]
    x = parts.values[rows][:, sel] * shift_phases(pts, torch.as_tensor(shifts_px, dtype=torch.float32))
    num = float((x.real * p.real + x.imag * p.imag).sum())
    den = float((p.real ** 2 + p.imag ** 2).sum())
    return num / den if den > 0 else 1.0


def _solvent_mask(volume: np.ndarray, apix: float, diameter_A: float | None) -> np.ndarray:
    from cryomap.evaluate.mask import auto_mask
    from cryomap.reconstruct.maps import sphere_mask

    box = volume.shape[0]
    sphere = sphere_mask(box, (0.45 * box if diameter_A is None else diameter_A / apix / 2.0), 3.0)
    try:
        m = auto_mask(volume * sphere, apix)
    except Exception:  # a featureless map (Otsu fails): the sphere alone
        m = sphere
    return m if float(m.sum()) > 0.01 * box**3 else sphere


def _angle_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    tr = np.einsum("nij,nij->n", a, b)
    return np.degrees(np.arccos(np.clip((tr - 1.0) / 2.0, -1.0, 1.0)))


def refine(source, reference: np.ndarray, reference_apix: float, settings: RefineSettings | None = None, *,
           ctf: bool = True, progress: Callable[[str], None] | None = None) -> RefineResult:
    """Refine the poses of ``source`` against ``reference`` in two independent half sets (see the module docstring)."""
    from cryomap.evaluate.fsc import fsc as fsc_curve
    from cryomap.evaluate.fsc import masked_fsc
    from cryomap.particles.source import Poses
    from cryomap.reconstruct.abinitio import assign_poses
    from cryomap.reconstruct.backproject import half_set_split, reconstruct_source
    from cryomap.reconstruct.symmetry import canonical_name

    s = settings or RefineSettings()
    t_start = time.perf_counter()
    sym = canonical_name(s.symmetry)
    n = len(source)
    if n < MIN_REFINE_PARTICLES:
        raise BadInputError(f"{n} particle(s): refinement needs at least {MIN_REFINE_PARTICLES} "
                            "(two half sets of useful size)", source.path)
    if ctf:
        source.require_ctf("refinement with CTF correction (or pass --no-ctf)")
    box, apix = source.box, source.pixel_size
    ref, note = reference_on_grid(reference, reference_apix, box, apix)
    notes = [note] if note else []
    parts = load_particles(source, box, ctf=ctf)
    sets, _ = half_set_split(n, s.seed, source.table)
    rng = np.random.default_rng(s.seed)
    sub = np.sort(rng.choice(n, min(n, 500), replace=False))
    sigma2 = noise_spectrum(parts, sub)
    poses = source.poses()
    r0 = parts.r_px(s.initial_resolution_A)
    ref0 = lowpass(ref, r0)
    if poses is None:
        notes.append("the particles had no poses: a global search against the reference gave the starting ones")
        rot_m, shifts, _ = assign_poses(parts, ref0, sigma2, r0, coarse_step_deg=7.5, max_shift_px=3.0)
    else:
        rot_m = euler_to_matrix(poses.rot, poses.tilt, poses.psi)
        shifts = poses.shifts_A / apix
    a = _scale_to_particles(parts, sub, ref0, rot_m[sub], shifts[sub], r0)
    if not np.isfinite(a) or a == 0:
        a = 1.0
    refs = [ref0 * a, ref0 * a]
    step = float(s.step_deg)
    shift_step = 0.5 if s.shift_step_A is None else s.shift_step_A / apix
    res = s.initial_resolution_A
    best_res = np.inf
    log: list[RefineIteration] = []
    rec = None
    for it in range(1, s.iterations + 1):
        tic = time.perf_counter()
        r_px = min(box // 2, parts.r_px(res) * 1.2 + 2)  # the current resolution plus a margin
        new_r = rot_m.copy()
        new_s = shifts.copy()
        for h in (0, 1):
            rows = np.flatnonzero(sets == h)
            ext = SliceExtractor(refs[h])
            loc = local_search(parts, rows, ext, rot_m[rows], shifts[rows], r_px, sigma2, step_deg=step,
                               shift_step_px=shift_step * max(1.0, step / s.step_deg * 2), image_chunk=64)
            new_r[rows] = loc.rotations
            new_s[rows] = loc.shifts_px
        change = float(np.median(_angle_between(rot_m, new_r)))
        rot_m, shifts = new_r, new_s
        rot, tilt, psi = matrix_to_euler(rot_m)
        rec, _, _ = reconstruct_source(source, ctf=ctf, symmetry=sym, wiener_constant=s.wiener_constant,
                                       poses=Poses(rot, tilt, psi, shifts * apix), sets=sets)
        res143, res05 = rec.resolution(0.143), rec.resolution(0.5)
        log.append(RefineIteration(it, step, parts.radius_A(r_px), res143, res05, change, time.perf_counter() - tic))
        if progress is not None:
            progress(f"iteration {it}: step {step:g}°, half-set FSC 0.143 {res143:.1f} Å, median change {change:.2f}°")
        # next references: FSC-weighted half maps in the solvent mask
        mask = _solvent_mask(0.5 * (rec.half1 + rec.half2), apix, s.mask_diameter_A)
        w = fsc_weights(rec.fsc)
        cut = int(np.ceil(parts.r_px(res143))) + 1
        w[cut + 1:] = 0.0
        refs = [filter_by_shell(rec.half1, w) * mask, filter_by_shell(rec.half2, w) * mask]
        sub = np.sort(rng.choice(n, min(n, 500), replace=False))
        sigma2 = 0.5 * sigma2 + 0.5 * noise_spectrum(parts, sub, SliceExtractor(0.5 * (refs[0] + refs[1])),
                                                     rot_m[sub], shifts[sub])
        improved = res143 < best_res - 0.02 * best_res if np.isfinite(best_res) else True
        best_res = min(best_res, res143)
        res = res143
        if not improved or change < step / 4:
            if step <= s.min_step_deg * 1.001 and not improved:
                break
            step = max(s.min_step_deg, step / 2)
    # final maps and curves
    mask = _solvent_mask(0.5 * (rec.half1 + rec.half2), apix, s.mask_diameter_A)
    unmasked = fsc_curve(rec.half1, rec.half2, apix)
    masked = masked_fsc(rec.half1, rec.half2, mask, apix, seed=s.seed)
    full = filter_by_shell(rec.full, fsc_weights(masked.fsc))  # √(2F/(1+F)): the full map's weight from the half-set FSC
    rot, tilt, psi = matrix_to_euler(rot_m)
    return RefineResult(rec.half1, rec.half2, full, mask, apix, rot, tilt, psi, shifts * apix, sets, unmasked, masked,
                        log, notes, time.perf_counter() - t_start)
