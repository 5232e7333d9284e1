"""Simulated particles of a few fixed views, for tests and benchmarks of 2D classification.

:func:`simulate_views` projects a built-in structure (or any model/map
:func:`cryomap.simulate.structure_map.structure_to_map` reads) at ``n_views`` distinct
orientations, ``per_view`` particles each, with a random in-plane rotation (uniform psi), a random
shift (uniform in a disc of ``max_shift_px``), each particle's own CTF (defocus drawn in
``defocus_range`` Å, RELION sign: bright molecule) and white Gaussian noise at ``snr`` (signal
variance in the box, averaged over the particles, ÷ noise variance). The result carries the truth
needed to score a classification: the view of every particle and the clean (CTF-free, unshifted,
psi = 0) projection of every view.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cryomap.core.ctf import CtfParams, apply_ctf
from cryomap.core.fourier import crop_centred
from cryomap.core.images import standardize_images
from cryomap.particles.source import ParticleSource


@dataclass
class SimulatedViews:
    """Simulated particles and their truth."""

    source: ParticleSource  # in-memory particles with CTF columns and true poses
    view: np.ndarray  # (N,) int, 0-based view of every particle
    clean: np.ndarray  # (n_views, box, box) clean projections at psi = 0, no shift
    angles: np.ndarray  # (n_views, 2) (rot, tilt) degrees of each view
    apix: float
    snr: float


def distinct_views(n: int, rng: np.random.Generator, min_separation_deg: float = 35.0) -> np.ndarray:
    """``n`` viewing directions (rot, tilt) in degrees, pairwise ≥ ``min_separation_deg`` apart.

    Directions that are antipodal (mirror projections) also count as close. Farthest-point
    choice among 2,000 random directions, started from a random one.
    """
    v = rng.standard_normal((2000, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    chosen = [0]
    for _ in range(n - 1):
        cos = np.abs(v @ v[chosen].T).max(axis=1)  # |cos|: antipodes are as close as twins
        chosen.append(int(np.argmin(cos)))
    d = v[chosen]
    cos = np.abs(d @ d.T)[~np.eye(n, dtype=bool)]
    if n > 1 and np.degrees(np.arccos(cos.max())) < min_separation_deg:
        raise ValueError(f"could not place {n} views {min_separation_deg}° apart")
    tilt = np.degrees(np.arccos(np.clip(d[:, 2], -1, 1)))
    rot = np.degrees(np.arctan2(d[:, 1], d[:, 0]))
    return np.column_stack([rot, tilt])


def simulate_views(
    structure: str = "7PBL",
    *,
    n_views: int = 6,
    per_view: int = 100,
    box: int = 48,
    apix: float = 4.0,
    snr: float = 1.0,
    max_shift_px: float = 3.0,
    defocus_range: tuple[float, float] = (10000.0, 25000.0),
    seed: int = 0,
    resolution: float | None = None,
) -> SimulatedViews:
    """Particles (box px at ``apix`` Å/px) of ``structure`` at ``n_views`` views; see the module docstring."""
    from cryomap.core.projector import Projector
    from cryomap.simulate.structure_map import structure_to_map

    rng = np.random.default_rng(seed)
    volume = structure_to_map(structure, apix, box, resolution=resolution).data
    projector = Projector(volume)
    angles = distinct_views(n_views, rng)
    n = n_views * per_view
    view = np.repeat(np.arange(n_views), per_view)
    rng.shuffle(view)
    psi = rng.uniform(-180.0, 180.0, n)
    r = max_shift_px * np.sqrt(rng.uniform(0, 1, n))
    phi = rng.uniform(0, 2 * np.pi, n)
    origins_A = np.column_stack([r * np.cos(phi), r * np.sin(phi)]) * apix
    clean = projector.project(angles[:, 0], angles[:, 1], np.zeros(n_views))
    projections = projector.project(angles[view, 0], angles[view, 1], psi, origins_A, apix)
    du = rng.uniform(*defocus_range, n)
    ctf = CtfParams(defocus_u=du + 100.0, defocus_v=du - 100.0, angle=rng.uniform(-90, 90, n))
    signal = crop_centred(_torch(apply_ctf(projections, ctf, apix, out_size=2 * box)), box).numpy()
    noise_sd = float(np.sqrt(signal.var(axis=(1, 2)).mean() / snr))
    images = standardize_images(signal + rng.normal(0.0, noise_sd, signal.shape).astype(np.float32))
    table = pd.DataFrame({
        "rlnDefocusU": ctf.defocus_u, "rlnDefocusV": ctf.defocus_v, "rlnDefocusAngle": ctf.angle,
        "rlnPhaseShift": 0.0, "rlnVoltage": ctf.voltage, "rlnSphericalAberration": ctf.cs,
        "rlnAmplitudeContrast": ctf.amplitude_contrast, "rlnOpticsGroup": 1,
        "rlnAngleRot": angles[view, 0], "rlnAngleTilt": angles[view, 1], "rlnAnglePsi": psi,
        "rlnOriginXAngst": origins_A[:, 0], "rlnOriginYAngst": origins_A[:, 1],
    })
    source = ParticleSource.from_arrays(images, apix, table)
    return SimulatedViews(source, view, clean.astype(np.float32), angles, float(apix), float(snr))


def _torch(a: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(a))
