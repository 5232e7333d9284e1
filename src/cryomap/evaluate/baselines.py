"""Baselines every model is scored against.

* **Oracle reconstruction**: backprojection of the particles with their true poses
  (``cryomap.evaluate.reconstruct``, the physics baseline of the simulation issue) — the upper
  bound of what the particles hold. Random half sets give the gold-standard FSC too.
* **Mean training label**: the voxel-wise mean of the training labels — what a model that
  ignores its input would predict.
* **Truth low-passed** to 20 Å and 10 Å — so a reader sees what an FSC resolution looks like.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryomap.errors import BadInputError
from cryomap.evaluate.filters import low_pass

#: resolutions (Å) of the low-passed truth baselines
LOWPASS_BASELINES_A = (20.0, 10.0)

@dataclass
class ParticleSet:
    """Particle images (n, y, x) with true poses (RELION ZYZ degrees), shifts (Å) and the table."""

    images: np.ndarray
    rot: np.ndarray
    tilt: np.ndarray
    psi: np.ndarray
    shifts_A: np.ndarray  # (n, 2): rlnOriginXAngst, rlnOriginYAngst
    apix: float
    table: object  # pandas DataFrame (flat, optics merged)


def load_particles(star_path: str | Path, max_particles: int | None = None, seed: int = 0) -> ParticleSet:
    """Read a particle STAR (with true poses) and its images; optionally a random subset."""
    from cryomap.io.mrc import read_stack
    from cryomap.io.star import image_locations, read_star

    star_path = Path(star_path)
    table = read_star(star_path)
    df = table.particles
    for col in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"):
        if col not in df:
            raise BadInputError(f"no {col} column: the oracle reconstruction needs the true poses", star_path)
    rows = np.arange(len(df))
    if max_particles is not None and len(df) > max_particles:
        rows = np.sort(np.random.default_rng(seed).choice(len(df), max_particles, replace=False))
    df = df.iloc[rows].reset_index(drop=True)
    indices, paths = image_locations(table)
    indices = indices[rows]
    paths = [paths[i] for i in rows]
    stacks: dict[Path, np.ndarray] = {}
    apix = None
    images = []
    for i, p in zip(indices, paths):
        if p not in stacks:
            st = read_stack(p)
            stacks[p] = st.data
            apix = apix or st.apix
        images.append(np.asarray(stacks[p][i], np.float32))
    if "rlnImagePixelSize" in df:
        apix = float(df["rlnImagePixelSize"].iloc[0])
    shifts = np.zeros((len(df), 2))
    for j, col in enumerate(("rlnOriginXAngst", "rlnOriginYAngst")):
        if col in df:
            shifts[:, j] = df[col].to_numpy(float)
    return ParticleSet(
        np.stack(images),
        df["rlnAngleRot"].to_numpy(float),
        df["rlnAngleTilt"].to_numpy(float),
        df["rlnAnglePsi"].to_numpy(float),
        shifts,
        float(apix),
        df,
    )


def ctf_from_table(df) -> object | None:
    """Per-particle :class:`cryomap.simulate.ctf.CtfParams` from RELION columns, or None without defocus."""
    from cryomap.simulate.ctf import CtfParams

    if "rlnDefocusU" not in df:
        return None

    def col(name: str, default: float) -> np.ndarray:
        return df[name].to_numpy(float) if name in df else np.full(len(df), default)

    first = lambda name, default: float(df[name].iloc[0]) if name in df else default  # noqa: E731
    return CtfParams(
        defocus_u=col("rlnDefocusU", 0.0),
        defocus_v=col("rlnDefocusV", float("nan")) if "rlnDefocusV" in df else col("rlnDefocusU", 0.0),
        angle=col("rlnDefocusAngle", 0.0),
        voltage=first("rlnVoltage", 300.0),
        cs=first("rlnSphericalAberration", 2.7),
        amplitude_contrast=first("rlnAmplitudeContrast", 0.1),
        bfactor=first("rlnCtfBfactor", 0.0),
    )


def oracle_reconstruction(ps: ParticleSet, half_sets: bool = False, seed: int = 0, ctf: bool = True, **kwargs) -> dict[str, np.ndarray]:
    """Backprojection with the true poses (``cryomap.evaluate.reconstruct``), CTF-corrected when the table has CTF.

    Returns ``{'full': map}`` and, with ``half_sets``, ``'half1'``/``'half2'`` from a seeded random
    half split (``half_set_reconstructions``). Maps are on the particles' grid (box, Å/px).
    """
    from cryomap.evaluate.reconstruct import half_set_reconstructions, reconstruct

    params = ctf_from_table(ps.table) if ctf else None
    out = {"full": reconstruct(ps.images, ps.rot, ps.tilt, ps.psi, ps.shifts_A, ps.apix, params, **kwargs)}
    if half_sets:
        out["half1"], out["half2"] = half_set_reconstructions(
            ps.images, ps.rot, ps.tilt, ps.psi, ps.shifts_A, ps.apix, params, seed=seed, **kwargs
        )
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


def mean_label(labels: list[np.ndarray] | np.ndarray) -> np.ndarray:
    """Voxel-wise mean of the training labels (the input-blind baseline)."""
    arr = np.asarray(labels, dtype=np.float64)
    if arr.ndim == 3:
        return arr.astype(np.float32)
    return arr.mean(axis=0).astype(np.float32)


def truth_low_passed(truth: np.ndarray, apix: float, resolutions_A=LOWPASS_BASELINES_A) -> dict[str, np.ndarray]:
    """``{'truth 20 Å': map, 'truth 10 Å': map}``: the truth low-passed (cosine edge one shell wide)."""
    return {f"truth {r:g} Å": low_pass(truth, apix, r) for r in resolutions_A}


def scale_to(reference: np.ndarray, volume: np.ndarray) -> np.ndarray:
    """``volume`` linearly rescaled (least squares ``a·v + b``) to ``reference``'s units.

    Reconstructions come in arbitrary units; this puts them on the label scale so that MSE and
    a fixed Dice contour mean something. FSC and CC are unaffected.
    """
    v = np.asarray(volume, np.float64).ravel()
    r = np.asarray(reference, np.float64).ravel()
    A = np.stack([v, np.ones_like(v)], 1)
    (a, b), *_ = np.linalg.lstsq(A, r, rcond=None)
    return (a * np.asarray(volume, np.float64) + b).astype(np.float32)
