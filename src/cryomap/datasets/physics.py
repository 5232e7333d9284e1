"""Physics conditions for training: simulated particles of a molecule → two half-map reconstructions.

What a learned map should be conditioned on is what the particles really determine in 3D: a
reconstruction. For a training pair this module simulates the particles of a molecule and
reconstructs them with the reconstruction engine (:mod:`cryomap.reconstruct.backproject`,
:mod:`cryomap.core.backprojector`), at the TRUE poses perturbed by realistic pose errors, in two
half sets with the FSC-based Wiener rule — the gold-standard half maps a refinement would give.

Particle model (per pair, :class:`ParticleSettings`): uniformly random orientations; a CTF per
particle (defocus in ``defocus_range`` Å, astigmatism up to ``astigmatism`` Å, 300 kV,
Cs 2.7 mm, 10 % amplitude contrast); a signal B-factor ``bfactor`` Å² the reconstruction does not
know about (the envelope real data have); white noise at ``snr`` = mean particle-signal variance
in the box ÷ noise variance (the definition of :mod:`cryomap.simulate.micrograph`). Pose errors:
each orientation is turned by a rotation of random axis whose rotation vector has an RMS angle of
``angle_error_deg`` °, and each centre is off by ``shift_error_px`` px (RMS per axis).

Two routes, tested to agree (tests/test_generalisation.py):

* :func:`fourier_halfmaps` — the fast route used to build training pairs: the particles'
  Fourier samples are the volume's central slices (:class:`~cryomap.core.backprojector.SliceExtractor`),
  multiplied by the CTF, plus complex white noise of the same variance real-space noise has,
  inserted directly into the engine's :class:`~cryomap.core.backprojector.Backprojector` (the
  same CTF weighting and shift phases as :func:`~cryomap.reconstruct.backproject.backproject_arrays`)
  and finished by :func:`~cryomap.reconstruct.backproject.finish`. No image is ever formed: about
  4× faster than projecting images and reconstructing them.
* :func:`simulate_particles` + :func:`reconstruct_particles` — real-space particle images
  (:class:`~cryomap.core.projector.Projector`, :func:`~cryomap.core.ctf.apply_ctf`, noise) and
  :func:`~cryomap.reconstruct.backproject.backproject_arrays`: what a user's data go through.
  The benchmark and the stack condition use it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from cryomap.core.ctf import CtfParams, normalise_defocus

#: The Wiener rule of every half-map condition (training pairs and prediction alike): the engine's
#: constant λ = 0.1 (summed-CTF² units; nearly unregularised half maps — the network does the
#: filtering). Recorded in each model, so a later change of the engine's default cannot make a
#: prediction's condition differ from the training ones.
HALFMAP_WIENER_CONSTANT = 0.1


@dataclass
class ParticleSettings:
    """One simulated particle set. Units: Å, Å/px, px, degrees, Å²."""

    n_particles: int = 1000
    snr: float = 0.05
    apix: float = 4.0
    box: int = 48
    angle_error_deg: float = 2.0
    shift_error_px: float = 0.5
    bfactor: float = 50.0
    defocus_range: tuple[float, float] = (10000.0, 25000.0)
    astigmatism: float = 400.0
    voltage: float = 300.0
    cs: float = 2.7
    amplitude_contrast: float = 0.1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["defocus_range"] = list(self.defocus_range)
        return d


@dataclass
class SettingRanges:
    """Ranges :func:`draw_settings` draws from (log-uniform for particles and SNR, else uniform)."""

    n_particles: tuple[int, int] = (200, 5000)
    snr: tuple[float, float] = (0.015, 0.12)
    apix: tuple[float, float] = (3.6, 4.4)
    angle_error_deg: tuple[float, float] = (0.5, 4.0)
    shift_error_px: tuple[float, float] = (0.1, 1.0)
    bfactor: tuple[float, float] = (0.0, 150.0)
    box: int = 48

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "SettingRanges":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def draw_settings(rng: np.random.Generator, ranges: SettingRanges = SettingRanges(),
                  min_apix: float | None = None) -> ParticleSettings:
    """Random :class:`ParticleSettings` from ``ranges``; ``min_apix`` raises the voxel size floor (big molecules)."""
    lo_a, hi_a = ranges.apix
    lo_a = max(lo_a, min_apix or 0.0)
    n = int(round(np.exp(rng.uniform(np.log(ranges.n_particles[0]), np.log(ranges.n_particles[1])))))
    return ParticleSettings(
        n_particles=n,
        snr=float(np.exp(rng.uniform(np.log(ranges.snr[0]), np.log(ranges.snr[1])))),
        apix=float(rng.uniform(lo_a, max(lo_a, hi_a))),
        box=int(ranges.box),
        angle_error_deg=float(rng.uniform(*ranges.angle_error_deg)),
        shift_error_px=float(rng.uniform(*ranges.shift_error_px)),
        bfactor=float(rng.uniform(*ranges.bfactor)),
    )


# --- the molecule ------------------------------------------------------------------------------

def structure_diameter(structure) -> float:
    """Twice the largest atom distance (Å) from the centre of mass of a ``gemmi.Structure``'s first model."""
    xyz, mass = _coordinates(structure[0])
    com = (xyz * mass[:, None]).sum(0) / mass.sum()
    return 2.0 * float(np.sqrt(((xyz - com) ** 2).sum(1)).max())


def _coordinates(model) -> tuple[np.ndarray, np.ndarray]:
    pos, mass = [], []
    for cra in model.all():
        p = cra.atom.pos
        pos.append((p.x, p.y, p.z))
        mass.append(cra.atom.element.weight * cra.atom.occ)
    return np.asarray(pos, np.float64), np.asarray(mass, np.float64)


def molecule_volume(structure, apix: float, box: int, rotation: np.ndarray | None = None) -> np.ndarray:
    """gemmi electron density (z, y, x) of a structure turned by ``rotation`` (3×3, about its centre of mass).

    The same computation as :func:`cryomap.simulate.structure_map.structure_to_map` (gemmi's
    ``DensityCalculatorE``, its anti-aliasing blur, centre of mass at voxel ``box // 2``), on an
    in-memory structure and with the atoms rotated first — an exact random orientation, with
    no interpolation of a map. The structure is not modified.
    """
    import gemmi

    st = structure.clone()
    model = st[0]
    xyz, mass = _coordinates(model)
    com = (xyz * mass[:, None]).sum(0) / mass.sum()
    R = np.eye(3) if rotation is None else np.asarray(rotation, np.float64)
    centre = np.full(3, (box // 2) * apix)
    t = centre - R @ com
    model.transform_pos_and_adp(gemmi.Transform(gemmi.Mat33(R.tolist()), gemmi.Vec3(*t)))
    st.cell = gemmi.UnitCell(box * apix, box * apix, box * apix, 90, 90, 90)
    st.spacegroup_hm = "P 1"
    dc = gemmi.DensityCalculatorE()
    dc.d_min = 2.0 * apix
    dc.rate = 1.0
    dc.set_refmac_compatible_blur(model)
    dc.set_grid_cell_and_spacegroup(st)
    dc.d_min = 0.0
    dc.grid.set_size(box, box, box)
    dc.put_model_density_on_grid(model)
    arr = np.array(dc.grid, copy=True)  # [x, y, z]
    return np.ascontiguousarray(arr.transpose(2, 1, 0)).astype(np.float32)


# --- particles ---------------------------------------------------------------------------------

def draw_ctf(n: int, s: ParticleSettings, rng: np.random.Generator, bfactor: float = 0.0) -> CtfParams:
    """Per-particle CTF parameters (RELION conventions) drawn as :mod:`cryomap.simulate.dataset` does."""
    mean = rng.uniform(s.defocus_range[0], s.defocus_range[1], n)
    astig = rng.uniform(0.0, s.astigmatism, n)
    u, v, a = normalise_defocus(mean + astig / 2, mean - astig / 2, rng.uniform(-180.0, 180.0, n))
    return CtfParams(u, v, a, s.voltage, s.cs, s.amplitude_contrast, float(bfactor))


def rotation_vectors_to_matrices(w: np.ndarray) -> np.ndarray:
    """Rotation matrices (n, 3, 3) of rotation vectors (n, 3) in radians (Rodrigues)."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(np.asarray(w, np.float64)).as_matrix()


def perturb_matrices(A: np.ndarray, angle_error_deg: float, rng: np.random.Generator) -> np.ndarray:
    """RELION matrices turned by random small rotations of RMS angle ``angle_error_deg`` (degrees)."""
    sigma = np.deg2rad(angle_error_deg) / np.sqrt(3.0)
    E = rotation_vectors_to_matrices(rng.normal(0.0, sigma, (len(A), 3)))
    return np.einsum("nij,njk->nik", E, A)


def _true_poses(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from cryomap.core.euler import euler_to_matrix, random_euler_angles

    rot, tilt, psi = random_euler_angles(n, rng)
    return rot, tilt, psi, euler_to_matrix(rot, tilt, psi)


def fourier_halfmaps(volume: np.ndarray, s: ParticleSettings, rng: np.random.Generator, *, pad: float = 2.0,
                     wiener_constant: float | None = None, batch_size: int = 512):
    """Half-map reconstruction (a :class:`~cryomap.reconstruct.backproject.Reconstruction`) of ``s.n_particles``
    simulated particles of ``volume`` (``s.apix`` Å/voxel), at perturbed poses — the fast route (module docstring).

    ``wiener_constant``: the engine's Wiener rule (None → :data:`HALFMAP_WIENER_CONSTANT`).
    """
    from cryomap.core.backprojector import Backprojector, SliceExtractor, shift_phases, slice_points
    from cryomap.core.ctf import ctf_at, subset
    from cryomap.reconstruct.backproject import finish, half_set_split

    vol = np.asarray(volume, np.float32)
    box = vol.shape[-1]
    n = int(s.n_particles)
    _, _, _, A = _true_poses(n, rng)
    A_est = perturb_matrices(A, s.angle_error_deg, rng).astype(np.float32)
    shifts = rng.normal(0.0, s.shift_error_px, (n, 2))
    ctf_true = draw_ctf(n, s, rng, bfactor=s.bfactor)
    ctf_used = CtfParams(ctf_true.defocus_u, ctf_true.defocus_v, ctf_true.angle, s.voltage, s.cs,
                         s.amplitude_contrast, 0.0)
    sets = half_set_split(n, int(rng.integers(2**31)))[0]
    pts = slice_points(box, pad)
    fx, fy = pts.frequencies(s.apix)
    extractor = SliceExtractor(vol, pad=pad)
    A_t = torch.as_tensor(A, dtype=torch.float32)
    # pass 1: the CTF-modulated signal of every particle, and its variance in the box (Parseval:
    # Σ_x (x − x̄)² = Σ_{k≠0} |X(k)|² / box², the half plane counted twice)
    not_dc = (pts.radius > 0).to(torch.float32)
    signals, power = [], 0.0
    with torch.no_grad():
        for b0 in range(0, n, batch_size):
            rows = np.arange(b0, min(n, b0 + batch_size))
            sig = extractor.slices(pts, A_t[rows]) * ctf_at(subset(ctf_true, rows), fx, fy)
            power += float((2.0 * (sig.abs() ** 2) * not_dc).sum() / box**4)
            signals.append(sig)
    noise_var = (power / n) / float(s.snr)  # per pixel
    # each DFT coefficient of white noise of variance σ² per pixel has E|N|² = box² σ²
    coef_sd = float(np.sqrt(noise_var * box * box / 2.0))
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    bp = Backprojector(pts, "trilinear", n_sets=2)
    with torch.no_grad():
        for k, b0 in enumerate(range(0, n, batch_size)):
            rows = np.arange(b0, min(n, b0 + batch_size))
            sig = signals[k]
            noise = torch.complex(torch.randn(sig.shape, generator=gen), torch.randn(sig.shape, generator=gen)) * coef_sd
            values = (sig + noise) * shift_phases(pts, torch.as_tensor(shifts[rows]))
            c = ctf_at(subset(ctf_used, rows), fx, fy)
            bp.insert(values * c, c * c, torch.as_tensor(A_est[rows]), torch.as_tensor(sets[rows]))
    wc = HALFMAP_WIENER_CONSTANT if wiener_constant is None else float(wiener_constant)
    rec = finish(bp, box, s.apix, wiener_constant=wc)
    rec.info = {"route": "fourier", "noise_var_per_px": noise_var, "pad": pad, "wiener_constant": wc}
    return rec


@dataclass
class SimulatedParticles:
    """Real-space particle images (n, box, box) with their true and estimated (perturbed) poses."""

    images: np.ndarray
    apix: float
    ctf: CtfParams  # as a user would have it (no signal B-factor)
    rot: np.ndarray
    tilt: np.ndarray
    psi: np.ndarray
    est_rot: np.ndarray
    est_tilt: np.ndarray
    est_psi: np.ndarray
    est_shifts_A: np.ndarray  # (n, 2) rlnOriginX/YAngst the estimate carries (true centre is 0)
    noise_var: float

    def table(self):
        """A RELION particle table of the estimated poses and the CTF (for a ParticleSource)."""
        import pandas as pd

        return pd.DataFrame({
            "rlnAngleRot": self.est_rot, "rlnAngleTilt": self.est_tilt, "rlnAnglePsi": self.est_psi,
            "rlnOriginXAngst": self.est_shifts_A[:, 0], "rlnOriginYAngst": self.est_shifts_A[:, 1],
            "rlnDefocusU": self.ctf.defocus_u, "rlnDefocusV": self.ctf.defocus_v, "rlnDefocusAngle": self.ctf.angle,
            "rlnVoltage": self.ctf.voltage, "rlnSphericalAberration": self.ctf.cs,
            "rlnAmplitudeContrast": self.ctf.amplitude_contrast,
        })


def simulate_particles(volume: np.ndarray, s: ParticleSettings, rng: np.random.Generator,
                       batch_size: int = 256) -> SimulatedParticles:
    """Real-space particles of ``volume``: projection, CTF (with the signal B-factor), white noise at ``s.snr``."""
    from cryomap.core.ctf import apply_ctf, subset
    from cryomap.core.euler import matrix_to_euler
    from cryomap.core.projector import Projector

    vol = np.asarray(volume, np.float32)
    n = int(s.n_particles)
    rot, tilt, psi, A = _true_poses(n, rng)
    A_est = perturb_matrices(A, s.angle_error_deg, rng)
    er, et, ep = matrix_to_euler(A_est)
    shifts = rng.normal(0.0, s.shift_error_px, (n, 2)) * s.apix
    ctf_true = draw_ctf(n, s, rng, bfactor=s.bfactor)
    projector = Projector(vol)
    images = np.empty((n, vol.shape[0], vol.shape[0]), np.float32)
    power = 0.0
    for b0 in range(0, n, batch_size):
        rows = np.arange(b0, min(n, b0 + batch_size))
        clean = projector.project(rot[rows], tilt[rows], psi[rows], None, s.apix, batch_size=batch_size)
        images[rows] = apply_ctf(clean, subset(ctf_true, rows), s.apix)
        power += float(images[rows].var(axis=(1, 2)).sum())
    noise_var = power / n / float(s.snr)
    images += rng.normal(0.0, np.sqrt(noise_var), images.shape).astype(np.float32)
    ctf_used = CtfParams(ctf_true.defocus_u, ctf_true.defocus_v, ctf_true.angle, s.voltage, s.cs,
                         s.amplitude_contrast, 0.0)
    # the estimate's origin: the particle's centre is believed to sit at box//2 − origin/apix
    return SimulatedParticles(images, s.apix, ctf_used, rot, tilt, psi, np.asarray(er), np.asarray(et),
                              np.asarray(ep), shifts, noise_var)


def reconstruct_particles(p: SimulatedParticles, seed: int = 0, wiener_constant: float | None = None, **kwargs):
    """Half maps of simulated particles at their estimated poses, by the engine (:func:`backproject_arrays`).

    ``wiener_constant`` None → :data:`HALFMAP_WIENER_CONSTANT` (pass ``"fsc"`` for the FSC rule).
    """
    from cryomap.reconstruct.backproject import backproject_arrays

    wc = HALFMAP_WIENER_CONSTANT if wiener_constant is None else (None if wiener_constant == "fsc" else float(wiener_constant))
    return backproject_arrays(p.images, p.est_rot, p.est_tilt, p.est_psi, p.est_shifts_A, p.apix, p.ctf,
                              seed=seed, wiener_constant=wc, **kwargs)
