"""The whole path from particles to a learned map, for models trained on a pair cache (``meta.source = "pairs"``).

``predict_particles(model, particles)``:

1. **Half maps.** Particles whose table holds poses (``rlnAngleRot/Tilt/Psi``) are reconstructed
   with them in two half sets (:func:`cryomap.reconstruct.backproject.reconstruct_source`,
   CTF-corrected when the table has CTF, the Wiener rule the model was trained with), or first
   refined (``cryomap refine``) when that command exists and ``refine`` is asked. Particles
   without poses go through ``cryomap abinitio`` then ``cryomap refine`` (refused with one line
   naming what is missing where those commands are not installed). After a refinement the half
   maps are backprojected again from the refined poses and half sets with the model's Wiener
   rule, so the condition is made exactly as in training.
2. **Model grid.** The half maps are zero-padded about their centre (to a multiple of the
   network's 2^depth) and, when the particles' pixel size lies outside the range the network
   works at (:func:`model_voxel`), Fourier-resampled into it (:func:`plan_grid`; within ~1 %),
   then normalised (``halfmaps`` condition).
3. **Network.** The U-Net's map, or the diffusion ensemble's mean and per-voxel standard deviation;
   then, for a calibrated model, the per-shell combination with the FSC-weighted half maps
   (:mod:`cryomap.train.combiner`).
4. **Particle grid.** Both are Fourier-resampled back and cropped to the particles' own box and
   pixel size (Å/px), origin 0 — the grid a reconstruction of the same particles has. Where the
   particle pixels are finer than the model grid, the shells beyond the model grid's Nyquist are
   filled from the FSC-weighted half maps (calibrated models; :func:`~cryomap.train.combiner.fill_beyond_model_nyquist`).

Stack-mode models trained on pairs (the report's condition, kept for comparison) draw D images
of the particles and map the output from D³ over the particle box onto the particle grid too.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cryomap.errors import BadInputError
from cryomap.io.mrc import MrcData


@dataclass
class GridPlan:
    """How a particle-grid map (box ``box`` at ``apix`` Å/px) maps onto the model grid (``n`` at ``model_apix``)."""

    box: int
    apix: float
    padded: int  # the particle grid zero-padded to this box first (even)
    n: int
    model_apix: float


def network_multiple(model) -> int:
    """The factor every side of the network's input must divide by."""
    net = model.net
    if hasattr(net, "depth"):  # UNet3D
        return 2 ** int(net.depth)
    if hasattr(net, "levels"):  # diffusion denoiser
        return 2 ** (int(net.levels) - 1)
    return 8


def plan_grid(box: int, apix: float, model_apix: float, multiple: int = 8) -> GridPlan:
    """The smallest model box ``n`` (a multiple of ``multiple``) whose ``n × model_apix`` Å holds the particle box.

    The particle grid is padded to an even ``padded`` ≥ ``box`` so that ``padded × apix / n`` is
    within half a particle pixel (over ``n``) of ``model_apix``.
    """
    size = box * apix
    n = multiple * int(np.ceil(size / (model_apix * multiple) - 1e-9))
    padded = max(box + box % 2, 2 * int(round(n * model_apix / apix / 2)))
    return GridPlan(int(box), float(apix), int(padded), int(n), float(padded * apix / n))


#: The network runs on the particles' own pixels down to this fraction of the finest training voxel size.
FINEST_FRACTION = 0.8


def model_voxel(meta: dict, apix: float) -> float:
    """Voxel size (Å) the network runs at for particles of ``apix`` Å/px.

    The particles' own pixel size when it lies between ``FINEST_FRACTION`` × the finest training
    voxel and the coarsest (3.6–4.4 Å for the shipped models: 2.9–4.4 Å), else the nearest end
    of that range. Running on the particle grid itself keeps the frequencies a coarser model grid
    would cut (measured on validation molecules at 3.2 Å/px: median FSC-0.5 10.1 Å on the
    particle grid against 11.6 Å resampled to 4 Å; docs/generalisation.md).
    """
    rng = meta.get("apix_range")
    if not rng:
        return float(meta["grid_apix"])
    return float(np.clip(apix, FINEST_FRACTION * float(min(rng)), float(max(rng))))


def _rescale(volume: np.ndarray, size: int) -> np.ndarray:
    from torch_fourier_rescale import fourier_rescale_3d

    v = np.ascontiguousarray(volume, np.float32)
    if v.shape[-1] == size:
        return v.copy()
    out, _ = fourier_rescale_3d(torch.from_numpy(v), target_shape=(size, size, size))
    return out.numpy().astype(np.float32)


def to_model_grid(volume: np.ndarray, plan: GridPlan) -> np.ndarray:
    """A particle-grid map on the model grid (pad about the centre, then Fourier-resample)."""
    from cryomap.datasets.conditions import centre_fit

    return _rescale(centre_fit(volume, plan.padded), plan.n)


def to_particle_grid(volume: np.ndarray, plan: GridPlan) -> np.ndarray:
    """A model-grid map back on the particle grid (Fourier-resample, then crop about the centre)."""
    from cryomap.datasets.conditions import centre_fit

    return centre_fit(_rescale(volume, plan.padded), plan.box)


def _commands() -> set[str]:
    """Names of the ``cryomap`` sub-commands installed (ab initio and refinement are being written)."""
    from cryomap.cli import app

    return {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}


def _run_command(args: list[str]) -> None:
    from cryomap.cli import app

    app(args, standalone_mode=False)


def physics_available() -> dict[str, bool]:
    """Whether ``cryomap abinitio`` and ``cryomap refine`` are installed."""
    cmds = _commands()
    return {"abinitio": "abinitio" in cmds, "refine": "refine" in cmds}


def halfmaps_from_particles(particles: str | Path, *, wiener_constant: float | None, refine: bool = False,
                            symmetry: str = "C1", seed: int = 0) -> tuple[np.ndarray, np.ndarray, float, dict]:
    """Two half maps (particle grid) and the pixel size (Å/px) of the particles of a STAR/.mrcs/.cs file.

    Posed particles: reconstructed at their poses (or refined, ``refine`` and ``cryomap refine``
    installed). Unposed: ``cryomap abinitio`` + ``cryomap refine``; refused while those are not
    installed. Returns ``(half1, half2, apix, info)``.
    """
    from cryomap.particles.source import open_particles
    from cryomap.reconstruct.backproject import reconstruct_source

    source = open_particles(particles)
    have = physics_available()
    posed = source.poses() is not None
    info: dict = {"particles": str(particles), "n_particles": len(source), "posed": posed}
    if not posed and not (have["abinitio"] and have["refine"]):
        missing = [c for c in ("abinitio", "refine") if not have[c]]
        raise BadInputError(
            f"these particles have no poses (rlnAngleRot/Tilt/Psi) and this cryomap has no `cryomap {'` / `cryomap '.join(missing)}` "
            "yet to find them; give particles with poses (e.g. from RELION or cryoSPARC refinement)", particles)
    if posed and not (refine and have["refine"]):
        rec, _, _ = reconstruct_source(source, ctf=source.has_ctf, symmetry=symmetry, wiener_constant=wiener_constant,
                                       seed=seed)
        info.update({"halfmaps": "backprojected at the given poses", "ctf": bool(source.has_ctf),
                     "halfmap_fsc0.143_A": float(rec.resolution(0.143))})
        return rec.half1, rec.half2, float(source.pixel_size), info
    work = Path(tempfile.mkdtemp(prefix="cryomap_predict_"))
    try:
        star = Path(particles)
        if not posed:
            _run_command(["abinitio", str(star), "-o", str(work / "abinitio"), "--symmetry", symmetry, "--seed", str(seed)])
            star, reference = work / "abinitio" / "particles.star", work / "abinitio" / "map.mrc"
            info["halfmaps"] = "cryomap abinitio + cryomap refine"
        else:
            rec, _, _ = reconstruct_source(source, ctf=source.has_ctf, symmetry=symmetry, seed=seed)
            reference = work / "reference.mrc"
            from cryomap.io.mrc import write_mrc

            write_mrc(reference, rec.full, source.pixel_size)
            info["halfmaps"] = "cryomap refine from the given poses"
        _run_command(["refine", str(star), "--reference", str(reference), "-o", str(work / "refine"), "--symmetry", symmetry])
        # the half maps again from the refined poses and half sets, with the model's own Wiener rule, so the
        # condition is made exactly as the training conditions were (refine's maps may be filtered or masked)
        refined = open_particles(work / "refine" / "particles.star")
        rec, _, _ = reconstruct_source(refined, ctf=refined.has_ctf, symmetry=symmetry, wiener_constant=wiener_constant,
                                       seed=seed)
        info["halfmap_fsc0.143_A"] = float(rec.resolution(0.143))
        return rec.half1, rec.half2, float(refined.pixel_size), info
    finally:
        shutil.rmtree(work, ignore_errors=True)


def learned_map_from_halfmaps(model, half1: np.ndarray, half2: np.ndarray, apix: float, *, samples: int | None = None,
                              steps: int | None = None, sampler: str = "ddim", eta: float | None = None, seed: int = 0,
                              batch: int = 1, on_step=None, combine: bool = True, rotations: int | None = None):
    """A halfmaps model's map (and std) on the grid of the half maps (box, ``apix`` Å/px).

    With ``combine`` and a calibrated model (``config.combiner``), the network's map is combined
    shell by shell with the FSC-weighted half maps (:mod:`cryomap.train.combiner`).
    """
    from cryomap.datasets.conditions import normalise_halfmaps
    from cryomap.train.predict import Prediction, predict_from_condition

    meta = model.meta
    h1, h2 = np.asarray(half1, np.float32), np.asarray(half2, np.float32)
    if h1.shape != h2.shape or h1.ndim != 3 or len(set(h1.shape)) != 1:
        raise BadInputError(f"half maps must be cubes of one shape, got {h1.shape} and {h2.shape}")
    plan = plan_grid(h1.shape[0], apix, model_voxel(meta, apix), network_multiple(model))
    cond = normalise_halfmaps(to_model_grid(h1, plan), to_model_grid(h2, plan))
    out, std = predict_from_condition(model, cond, samples=samples, steps=steps, sampler=sampler, eta=eta, seed=seed,
                                      batch=batch, on_step=on_step, rotations=rotations)
    if combine and model.config.get("combiner"):
        from cryomap.train.combiner import apply_combiner

        out = apply_combiner(out, cond, model.config["combiner"], plan.model_apix)
    mean = to_particle_grid(out, plan)
    if combine and model.config.get("combiner"):
        from cryomap.train.combiner import fill_beyond_model_nyquist

        mean = fill_beyond_model_nyquist(mean, h1, h2, float(apix), plan.model_apix)
    sd = None if std is None else np.maximum(to_particle_grid(std, plan), 0.0)
    origin = (0.0, 0.0, 0.0)
    return Prediction(MrcData(mean, float(apix), origin), None if sd is None else MrcData(sd.astype(np.float32), float(apix), origin)), plan


def learned_map_from_stack(model, images: np.ndarray, apix: float, *, seed: int = 0):
    """A stack-mode pairs model's map on the particles' grid (box of ``images``, ``apix`` Å/px)."""
    from cryomap.datasets.conditions import build_condition
    from cryomap.train.predict import Prediction, predict_from_condition

    depth = int(model.meta["depth"])
    cond = build_condition(images, "stack", depth, np.random.default_rng(seed))
    out, _ = predict_from_condition(model, cond)
    out = _rescale(out, images.shape[-1])  # D³ over the particle box → the particle grid
    return Prediction(MrcData(out.astype(np.float32), float(apix), (0.0, 0.0, 0.0)))


def predict_particles(model, particles: str | Path, *, refine: bool = False, symmetry: str = "C1", samples: int | None = None,
                      steps: int | None = None, sampler: str = "ddim", eta: float | None = None, seed: int = 0,
                      batch: int = 1, on_step=None, rotations: int | None = None):
    """The learned map (and, for diffusion, the std map) of the particles of ``particles``, on their own grid.

    Returns ``(Prediction, info)``; ``info`` says how the half maps were made and the model grid.
    """
    meta = model.meta
    if meta.get("mode") == "stack":
        from cryomap.particles.source import open_particles

        src = open_particles(particles)
        rng = np.random.default_rng(seed)
        depth = int(meta["depth"])
        rows = np.sort(rng.choice(len(src), size=min(depth, len(src)), replace=False))
        pred = learned_map_from_stack(model, src.images(rows), float(src.pixel_size), seed=seed)
        return pred, {"condition": "stack", "n_images": len(rows)}
    from cryomap.datasets.physics import HALFMAP_WIENER_CONSTANT

    wc = meta.get("wiener_constant", HALFMAP_WIENER_CONSTANT)
    h1, h2, apix, info = halfmaps_from_particles(particles, wiener_constant=wc, refine=refine,
                                                 symmetry=symmetry, seed=seed)
    pred, plan = learned_map_from_halfmaps(model, h1, h2, apix, samples=samples, steps=steps, sampler=sampler, eta=eta,
                                           seed=seed, batch=batch, on_step=on_step, rotations=rotations)
    info.update({"condition": "halfmaps", "model_grid": f"{plan.n}³ at {plan.model_apix:.3f} Å/voxel",
                 "particle_grid": f"{plan.box}³ at {plan.apix:g} Å/px"})
    return pred, info
