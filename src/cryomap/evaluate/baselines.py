"""Baselines every model is scored against.

* **Oracle reconstruction**: backprojection of the particles with their true poses
  (:func:`cryomap.reconstruct.backproject.reconstruct_source`, the reconstruction engine) — the
  upper bound of what the particles hold. Its two half sets give the gold-standard FSC too.
* **Mean training label**: the voxel-wise mean of the training labels — what a model that
  ignores its input would predict.
* **Truth low-passed** to 20 Å and 10 Å — so a reader sees what an FSC resolution looks like.
"""

from __future__ import annotations

import numpy as np

from cryomap.errors import BadInputError
from cryomap.evaluate.filters import low_pass
from cryomap.particles.source import ParticleSource

#: resolutions (Å) of the low-passed truth baselines
LOWPASS_BASELINES_A = (20.0, 10.0)

def random_subset(source: ParticleSource, max_particles: int | None, seed: int = 0) -> ParticleSource:
    """At most ``max_particles`` rows of ``source``, a seeded random subset kept in row order."""
    if max_particles is None or len(source) <= max_particles:
        return source
    return source.subset(np.sort(np.random.default_rng(seed).choice(len(source), max_particles, replace=False)))


def oracle_reconstruction(source: ParticleSource, half_sets: bool = False, seed: int = 0, ctf: bool = True,
                          **kwargs) -> dict[str, np.ndarray]:
    """Backprojection with the poses the table holds (the simulator's true poses), CTF-corrected when it has CTF.

    Returns ``{'full': map}`` and, with ``half_sets``, ``'half1'``/``'half2'`` (``rlnRandomSubset``
    or a seeded random half split). Maps are on the particles' grid (box, Å/px). Images are read
    from the source in chunks; other keywords go to ``reconstruct_source`` (``batch_size``,
    ``symmetry``, ``wiener_constant``...).
    """
    from cryomap.reconstruct.backproject import reconstruct_source

    if source.poses() is None:
        raise BadInputError("no rlnAngleRot/Tilt/Psi columns: the oracle reconstruction needs the true poses", source.path)
    rec, _, _ = reconstruct_source(source, ctf=ctf and source.has_ctf, seed=seed, **kwargs)
    out = {"full": rec.full}
    if half_sets:
        out["half1"], out["half2"] = rec.half1, rec.half2
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
