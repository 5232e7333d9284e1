"""Ab initio reconstruction from unposed particles: stochastic projection matching with frequency marching.

What runs (and why this and not cryoSPARC's SGD with full marginalisation): on a two-core CPU the
affordable pose search is an exhaustive one on a coarse grid at a small box, done as matrix
products (:mod:`cryomap.reconstruct.search`); what makes projection matching converge from
nothing is the same recipe cryoSPARC's SGD uses around its gradient step — small random
mini-batches, a model that forgets its early batches, a resolution limit that marches from
coarse to fine, and a soft spherical mask.

1. Every particle is read once, Fourier-cropped to the working box (``box``, default the
   smallest of 32 px and the particle box: ~6.4 Å/px for 64-px particles at 3.2 Å/px) and kept
   as Fourier samples with its CTF.
2. Start: a reconstruction of a random subset at random poses (a centred blob) plus seeded,
   low-passed noise that breaks its spherical symmetry.
3. Each iteration takes a random mini-batch (``batch_size`` growing ×4 over the run), finds each
   particle's best pose by an exhaustive search on a ~15° SO(3) grid × in-plane shifts, refines
   it on a local grid at half that step, and backprojects the batch into running Fourier sums
   that decay by ``momentum`` per iteration (the SGD-like forgetting). The model is their Wiener
   ratio, low-passed to the current limit (``initial_resolution`` → ``final_resolution``,
   geometric over the first 70 % of the iterations) and masked (``mask_diameter``). The noise
   spectrum σ² is re-estimated from the residuals every few iterations.
4. ``restarts`` independent starts run the first third of the iterations; the one whose model
   explains a held-out batch best (highest mean log-likelihood) goes on.
5. Final passes: every particle gets a global search (best ``top_k`` orientations refined
   locally at 7.5°, then 3.75°) against the model, and the particles are reconstructed at their
   full box in two half sets (:func:`cryomap.reconstruct.backproject.reconstruct_source`), which
   gives the map and its half-set FSC.

The hand is not determined: a map and its mirror image explain the particles equally well, so
the result is one of the two at random (say so, and score with ``cryomap evaluate --align``,
which tries both). Poses come out in RELION's convention (``rlnAngleRot/Tilt/Psi``,
``rlnOriginX/YAngst``) for the map written beside them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from cryomap.core.backprojector import Backprojector, SliceExtractor, shift_phases
from cryomap.core.euler import matrix_to_euler, random_euler_angles, euler_to_matrix
from cryomap.errors import BadInputError
from cryomap.reconstruct.maps import lowpass, sphere_mask
from cryomap.reconstruct.search import (FourierParticles, global_search, grid_step, load_particles, local_search,
                                        noise_spectrum, shift_grid, so3_grid)

#: fewest particles ab initio accepts
MIN_ABINITIO_PARTICLES = 50
HAND_NOTE = ("the hand of an ab initio map is undetermined (a map and its mirror image fit the particles equally); "
             "compare with a reference using `cryomap evaluate --align`, which tries both hands")


@dataclass
class AbinitioSettings:
    """Parameters of :func:`abinitio` (units in the names; None: derived from the data)."""

    box: int | None = None  # working box, px (Fourier crop of the particles); None → min(32, particle box)
    iterations: int = 40
    batch_size: int = 200  # first mini-batch; grows ×4 linearly to the last
    initial_resolution_A: float = 35.0
    final_resolution_A: float | None = None  # None → 2.5 × the working pixel size (0.8 Nyquist)
    coarse_step_deg: float = 15.0
    max_shift_A: float | None = None  # None → 2 working pixels
    momentum: float = 0.7
    restarts: int = 2
    mask_diameter_A: float | None = None  # None → 0.8 × box × apix
    symmetry: str = "C1"
    seed: int = 0
    final_passes: int = 2
    top_k: int = 3
    wiener_constant: float = 0.1

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class IterationLog:
    """One line of the per-iteration log (``log.csv``)."""

    stage: str
    iteration: int
    resolution_limit_A: float
    particles: int
    mean_score: float
    seconds: float
    half_set_fsc0143_A: float | None = None


@dataclass
class AbinitioResult:
    """The map (full box, Å/voxel), the poses of every particle and the log."""

    reconstruction: object  # cryomap.reconstruct.backproject.Reconstruction
    rot: np.ndarray
    tilt: np.ndarray
    psi: np.ndarray
    shifts_A: np.ndarray
    sets: np.ndarray
    log: list[IterationLog] = field(default_factory=list)
    settings: AbinitioSettings | None = None
    seconds: float = 0.0


def _model(bp: Backprojector, parts: FourierParticles, r_px: float, mask: np.ndarray, ops: np.ndarray | None,
           lam: float) -> np.ndarray:
    """Working-box map from running sums: Wiener ratio, low-pass to ``r_px``, mask."""
    from cryomap.reconstruct.backproject import _shell_index, _to_map

    d, w = bp.half_grids(None, ops)
    L = bp.L
    shells = _shell_index(L, L / parts.box)
    inside = shells <= parts.box // 2
    lam_t = torch.full(inside.shape, float(lam) * max(float(w.mean()), 1e-6) * 1e-2)
    vol = _to_map(d, w, lam_t, parts.box, bp.interpolation, inside)
    return lowpass(vol, r_px) * mask


def _insert(bp: Backprojector, parts: FourierParticles, rows: np.ndarray, rotations: np.ndarray, shifts_px: np.ndarray,
            sets: np.ndarray) -> None:
    x = parts.values[rows] * shift_phases(parts.pts, torch.as_tensor(shifts_px, dtype=torch.float32))
    c = parts.ctf[rows]
    bp.insert(x * c, c * c, torch.as_tensor(rotations, dtype=torch.float32), sets[rows])


def _initial_model(parts: FourierParticles, rng: np.random.Generator, mask: np.ndarray, r_px: float,
                   ops) -> np.ndarray:
    """A blob (random-pose reconstruction of a random subset) with seeded low-passed noise to break its symmetry."""
    n = min(len(parts), 1000)
    rows = rng.choice(len(parts), n, replace=False)
    rot, tilt, psi = random_euler_angles(n, rng)
    bp = Backprojector(parts.pts, "trilinear", 1)
    _insert(bp, parts, rows, euler_to_matrix(rot, tilt, psi), np.zeros((n, 2)), np.zeros(len(parts), np.int64))
    blob = _model(bp, parts, r_px, mask, ops, 0.1)
    noise = lowpass(rng.normal(size=blob.shape).astype(np.float32), r_px) * mask
    return blob + 0.5 * float(blob.std()) / max(float(noise.std()), 1e-12) * noise


def _resolution_schedule(s: AbinitioSettings, t: int, final_A: float) -> float:
    frac = min(1.0, t / max(1.0, 0.7 * (s.iterations - 1)))
    return float(s.initial_resolution_A * (final_A / s.initial_resolution_A) ** frac)


def _sgd(parts: FourierParticles, s: AbinitioSettings, rng: np.random.Generator, start: np.ndarray, t0: int, t1: int,
         bp: Backprojector | None, sigma2: np.ndarray, model: np.ndarray, final_A: float, mask: np.ndarray, ops,
         log: list, sets: np.ndarray, tag: str, progress: Callable[[str], None] | None):
    n = len(parts)
    rotations = so3_grid(s.coarse_step_deg)
    step = grid_step(s.coarse_step_deg)
    max_shift_px = (2.0 if s.max_shift_A is None else s.max_shift_A / parts.apix)
    shifts = shift_grid(max_shift_px, 1.0)
    if bp is None:
        bp = Backprojector(parts.pts, "trilinear", 2)
    for t in range(t0, t1):
        tic = time.perf_counter()
        res = _resolution_schedule(s, t, final_A)
        r_px = parts.r_px(res)
        b = int(round(s.batch_size * (1 + 3 * t / max(1, s.iterations - 1))))
        rows = np.sort(rng.choice(n, min(n, b), replace=False))
        ext = SliceExtractor(model)
        g = global_search(parts, rows, ext, rotations, shifts, r_px, sigma2, top_k=1)
        loc = local_search(parts, rows, ext, g.rotations, g.shifts_px, r_px, sigma2, step_deg=step / 2,
                           shift_step_px=0.5)
        bp.scale_(s.momentum)
        _insert(bp, parts, rows, loc.rotations, loc.shifts_px, sets)
        model = _model(bp, parts, r_px, mask, ops, s.wiener_constant)
        if t % 5 == 4:
            sub = rows[: min(len(rows), 300)]
            sigma2 = 0.5 * sigma2 + 0.5 * noise_spectrum(parts, sub, SliceExtractor(model), loc.rotations[: len(sub)],
                                                         loc.shifts_px[: len(sub)])
        log.append(IterationLog(tag, t + 1, res, len(rows), float(np.mean(loc.scores)), time.perf_counter() - tic))
        if progress is not None:
            progress(f"{tag} iteration {t + 1}/{s.iterations}: {res:.1f} Å, {len(rows)} particles")
    return bp, sigma2, model


def _heldout_score(parts, rows, model, sigma2, s, final_A) -> float:
    r_px = parts.r_px(max(final_A, 20.0))
    g = global_search(parts, rows, SliceExtractor(model), so3_grid(s.coarse_step_deg),
                      shift_grid(2.0 if s.max_shift_A is None else s.max_shift_A / parts.apix, 1.0), r_px, sigma2)
    return float(np.mean(g.scores))


def assign_poses(parts: FourierParticles, model: np.ndarray, sigma2: np.ndarray, r_px: float, *,
                 coarse_step_deg: float = 15.0, max_shift_px: float = 2.0, top_k: int = 3, chunk: int = 500,
                 progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Global search for every particle (top-k of a coarse grid, each refined at ½ then ¼ of the step): (A, shifts px, scores)."""
    n = len(parts)
    ext = SliceExtractor(model)
    rotations = so3_grid(coarse_step_deg)
    step = grid_step(coarse_step_deg)
    shifts = shift_grid(max_shift_px, 1.0)
    out_r = np.zeros((n, 3, 3))
    out_s = np.zeros((n, 2))
    out_v = np.full(n, -np.inf)
    for i0 in range(0, n, chunk):
        rows = np.arange(i0, min(n, i0 + chunk))
        g = global_search(parts, rows, ext, rotations, shifts, r_px, sigma2, top_k=top_k)
        for k in range(g.candidates.shape[1]):
            rot_k = rotations[g.candidates[:, k]]
            sh_k = g.candidate_shifts[:, k]
            loc = local_search(parts, rows, ext, rot_k, sh_k, r_px, sigma2, step_deg=step / 2, shift_step_px=0.5)
            loc = local_search(parts, rows, ext, loc.rotations, loc.shifts_px, r_px, sigma2, step_deg=step / 4,
                               shift_step_px=0.25)
            better = loc.scores > out_v[rows]
            out_r[rows[better]] = loc.rotations[better]
            out_s[rows[better]] = loc.shifts_px[better]
            out_v[rows[better]] = loc.scores[better]
        if progress is not None:
            progress(len(rows))
    return out_r, out_s, out_v


def abinitio(source, settings: AbinitioSettings | None = None, *, ctf: bool = True,
             progress: Callable[[str], None] | None = None) -> AbinitioResult:
    """Reconstruct a map and poses from the unposed particles of a :class:`~cryomap.particles.source.ParticleSource`."""
    from cryomap.reconstruct.backproject import half_set_split, reconstruct_source
    from cryomap.reconstruct.symmetry import canonical_name, symmetry_operators
    from cryomap.particles.source import Poses

    s = settings or AbinitioSettings()
    t_start = time.perf_counter()
    sym = canonical_name(s.symmetry)
    ops = symmetry_operators(sym)
    ops = ops if len(ops) > 1 else None
    n = len(source)
    if n < MIN_ABINITIO_PARTICLES:
        raise BadInputError(f"{n} particle(s): ab initio needs at least {MIN_ABINITIO_PARTICLES} "
                            "(a few thousand for a useful map)", source.path)
    if source.shape[1] != source.shape[2]:
        raise BadInputError(f"particles are {source.shape[1]}×{source.shape[2]} px; ab initio needs square images",
                            source.path)
    if ctf:
        source.require_ctf("ab initio with CTF correction (or pass --no-ctf)")
    box0 = source.box
    work = int(min(32, box0) if s.box is None else s.box)
    work += work % 2
    if not 16 <= work <= box0:
        raise BadInputError(f"working box {work} px must lie between 16 and the particle box ({box0} px)", source.path)
    rng = np.random.default_rng(s.seed)
    parts = load_particles(source, work, ctf=ctf)
    final_A = s.final_resolution_A or 2.5 * parts.apix
    diameter_px = (0.8 * work if s.mask_diameter_A is None else s.mask_diameter_A / parts.apix)
    mask = sphere_mask(work, diameter_px / 2.0, 2.0)
    sets, _ = half_set_split(n, s.seed, source.table)
    sigma2 = noise_spectrum(parts, rng.choice(n, min(n, 1000), replace=False))
    log: list[IterationLog] = []
    r0 = parts.r_px(s.initial_resolution_A)
    # restarts: the first third of the iterations from independent starts; keep the best on a held-out batch
    t_split = max(1, s.iterations // 3) if s.restarts > 1 else 0
    heldout = np.sort(rng.choice(n, min(n, 300), replace=False))
    best = None
    for k in range(max(1, s.restarts) if t_split else 1):
        krng = np.random.default_rng([s.seed, k])
        start = _initial_model(parts, krng, mask, r0, ops)
        if not t_split:
            best = (None, sigma2, start, krng)
            break
        bp, sg, model = _sgd(parts, s, krng, start, 0, t_split, None, sigma2, start, final_A, mask, ops, log, sets,
                             f"start {k + 1}", progress)
        score = _heldout_score(parts, heldout, model, sg, s, _resolution_schedule(s, t_split, final_A))
        log[-1].mean_score = score
        if best is None or score > best[-1]:
            best = (bp, sg, model, krng, score)
    bp, sigma2, model, krng = best[0], best[1], best[2], best[3]
    bp, sigma2, model = _sgd(parts, s, krng, model, t_split, s.iterations, bp, sigma2, model, final_A, mask, ops, log,
                             sets, "sgd", progress)
    # final passes: every particle at the final limit, then a full-size reconstruction
    rec = None
    rot_m = shifts = None
    res_limit = final_A
    for p in range(max(1, s.final_passes)):
        tic = time.perf_counter()
        r_px = parts.r_px(res_limit)
        if progress is not None:
            progress(f"final pass {p + 1}/{s.final_passes}: every particle at {res_limit:.1f} Å")
        rot_m, shifts, scores = assign_poses(parts, model, sigma2, r_px, coarse_step_deg=s.coarse_step_deg,
                                             max_shift_px=2.0 if s.max_shift_A is None else s.max_shift_A / parts.apix,
                                             top_k=s.top_k)
        rot, tilt, psi = matrix_to_euler(rot_m)
        shifts_A = shifts * parts.apix
        rec, _, _ = reconstruct_source(source, ctf=ctf, symmetry=sym, wiener_constant=s.wiener_constant,
                                       poses=Poses(rot, tilt, psi, shifts_A), sets=sets)
        res143 = rec.resolution(0.143)
        log.append(IterationLog("final", p + 1, res_limit, n, float(np.mean(scores)), time.perf_counter() - tic,
                                res143))
        # next pass: the full map binned to the working box, limited where the half sets still agree
        from cryomap.reconstruct.maps import resize_map

        res_limit = max(2.0 * parts.apix / 0.8, res143)
        # × box/work: a map binned with its mean kept projects to images box/work times fainter than
        # the binned particles (a line integral over fewer voxels)
        model = lowpass(resize_map(rec.full, work) * (box0 / work), parts.r_px(res_limit)) * mask
        sub = np.sort(rng.choice(n, min(n, 500), replace=False))
        sigma2 = noise_spectrum(parts, sub, SliceExtractor(model), rot_m[sub], shifts[sub])
    rot, tilt, psi = matrix_to_euler(rot_m)
    return AbinitioResult(rec, rot, tilt, psi, shifts * parts.apix, sets, log, s, time.perf_counter() - t_start)
